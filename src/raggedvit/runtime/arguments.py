"""argparse helpers shared by the commands: the model/device options of ``demo`` and ``eval``, and lists."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .device import DTYPES
from .loading import WEIGHT_CHOICES


def add_common_arguments(parser, *, default_model: str = "deit_small_patch16_224") -> None:
    """Add ``--model --checkpoint --weights --device --dtype --attention --dense`` to an argparse parser."""
    parser.add_argument("--model", default=default_model, help=f"timm DeiT/ViT model name (default {default_model})")
    parser.add_argument("--checkpoint", metavar="PATH", help="load weights from this file (timm key names) "
                        "instead of timm's pretrained weights")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="without --checkpoint: 'pretrained' needs timm's weights (cache or hub), 'random' "
                             "skips them, 'auto' (default) uses them when reachable, else random with a notice")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="auto = float16 on cuda, float32 on cpu")
    parser.add_argument("--attention", default="auto",
                        help="attention backend of the packed layout: auto (triton on cuda, reference on cpu) "
                             "or a name from raggedvit.ops.backends")
    parser.add_argument("--dense", default="compiled", choices=("compiled", "graph"),
                        help="how the dense reference runs on CUDA: compiled (default: torch.compile "
                             "reduce-overhead, the faster memory format) or graph (timm's forward in a CUDA graph)")


def comma_list(kind: Callable[[str], object] = str) -> Callable[[str], list]:
    """argparse ``type=`` for ``A,B,C``: items stripped, blanks dropped, each converted by ``kind``.

    An empty list is an error. ``kind`` may raise ``argparse.ArgumentTypeError`` with its own message; a
    ``ValueError`` (``int("x")``) becomes "expected a comma-separated list of <kind>".
    """
    def parse(text: str) -> list:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        try:
            return [kind(s) for s in items]
        except ValueError:
            name = getattr(kind, "__name__", "values")
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {name}, got {text!r}") from None
    return parse


def split_names(values: list[str] | None) -> list[str] | None:
    """Values of an ``nargs="+"`` option with commas split too: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return None if values is None else [v.strip() for s in values for v in s.split(",") if v.strip()]
