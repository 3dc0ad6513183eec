"""Layering: ``raggedvit.bench`` never imports ``raggedvit.apps``; ``raggedvit.runtime`` imports neither of them."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import raggedvit.bench
import raggedvit.runtime

# package -> the packages none of its modules may import (at import time or inside a function); lower layer first
FORBIDDEN = {raggedvit.runtime: ("raggedvit.apps", "raggedvit.bench"), raggedvit.bench: ("raggedvit.apps",)}
MODULES = [(f"{pkg.__name__}.{m.name}", banned) for pkg, banned in FORBIDDEN.items()
           for m in pkgutil.iter_modules(pkg.__path__)]


def _imported_names(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports anywhere, relative imports resolved within ``package``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from .. import apps`
    return names


@pytest.mark.parametrize("module, banned", MODULES, ids=[m for m, _ in MODULES])
def test_source_never_imports_upper_layers(module, banned):
    path = Path(sys.modules[module.rsplit(".", 1)[0]].__path__[0]) / f"{module.rsplit('.', 1)[1]}.py"
    bad = sorted(n for n in _imported_names(path, module.rsplit(".", 1)[0]) if n.startswith(banned))
    assert not bad, f"{module} imports {bad}"


def test_importing_bench_and_runtime_loads_no_upper_layer():
    """Every module imported in a fresh interpreter, one after the other (runtime before bench): the first one
    that pulls in a forbidden package (directly or through another module) is named."""
    code = "\n".join([
        "import importlib, sys",
        f"for name, banned in {MODULES!r}:",
        "    importlib.import_module(name)",
        "    bad = sorted(m for m in sys.modules if m.startswith(tuple(banned)))",
        "    if bad:",
        "        sys.exit(f'{name} loads {bad}')",
    ])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr or res.stdout
