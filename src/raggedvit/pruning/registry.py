"""The method registry: the one list of pruning methods, and the lookup behind ``prune(model, "name", ...)``.

Adding a method is one module defining a :class:`~.method.Method` subclass plus one entry here.
"""

from __future__ import annotations

import dataclasses

from .ats import ATS
from .dynamicvit import DynamicViT
from .evit import EViT
from .method import Method, NoPruning
from .threshold_l2 import ThresholdL2
from .tome import ToMe

__all__ = ["METHODS", "make_method", "pruning_methods"]

METHODS: dict[str, type[Method]] = {m.name: m for m in (NoPruning, ThresholdL2, DynamicViT, EViT, ATS, ToMe)}


def pruning_methods() -> tuple[str, ...]:
    """Names of the registered methods that prune (all but ``"none"``), read at call time."""
    return tuple(name for name, cls in METHODS.items() if cls is not NoPruning)


def make_method(method: str | Method, **options) -> Method:
    """A method object from a registered name and its options, or ``method`` itself (with ``options``
    replacing its fields). Raises ValueError naming the valid methods or options."""
    if isinstance(method, Method):
        cls = type(method)
    elif isinstance(method, str) and method in METHODS:
        cls = METHODS[method]
    else:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    unknown = sorted(set(options) - set(cls.option_names()))
    if unknown:
        valid = ", ".join(cls.option_names()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {cls.name!r}; valid: {valid}")
    if isinstance(method, Method):
        return dataclasses.replace(method, **options) if options else method
    return cls(**options)
