"""The ``raggedvit`` command line: ``bench attention|e2e|frontier|exactness``, ``demo``, ``eval``, ``export``,
``report``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
this file only wires them up, importing a module when its command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command path, module, one-line help)
COMMANDS = [
    (("bench", "attention"), "raggedvit.bench.attention", "time one attention call for every backend"),
    (("bench", "e2e"), "raggedvit.bench.e2e", "images/s of whole pruned DeiT forwards for every pipeline"),
    (("bench", "frontier"), "raggedvit.bench.frontier",
     "top-1 against images/s of every method over a sweep of its budget, trained model, real photos"),
    (("bench", "exactness"), "raggedvit.bench.exactness", "packed vs padded logits and keep decisions on real photos"),
    (("demo",), "raggedvit.apps.demo", "run DeiT + every pruning method on bundled real photos"),
    (("eval",), "raggedvit.apps.evaluate", "top-1, agreement, kept tokens and speed over an image folder"),
    (("export",), "raggedvit.apps.export", "a pruned model as an AOTInductor package at a fixed batch size"),
    (("report",), "raggedvit.bench.report", "plots and a markdown table from a benchmark JSON"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raggedvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, module, help_ in COMMANDS:
        if len(path) == 2:
            if path[0] not in groups:
                grp = sub.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = grp.add_subparsers(dest="subcommand", required=True)
            p = groups[path[0]].add_parser(path[1], help=help_, description=help_)
        else:
            p = sub.add_parser(path[0], help=help_, description=help_)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:  # a command whose module is not in this checkout
            if e.name != module:
                raise
            p.set_defaults(_missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raggedvit`` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", False):
        print(f"raggedvit: this command's module {args._module} is not installed", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
