"""Pruning options: validation at ``prune`` time and the host-side stage schedule (static shapes).

:func:`make_config` checks a method's options (errors list the valid ones); :func:`plan_stages` turns a
config into one :class:`StagePlan` per pruning stage with the host-known bounds every buffer is sized by:
exact counts for fixed-count variants, per-image upper bounds for adaptive ones. Nothing here touches a
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..pruning import ats, dynamicvit, evit

METHODS = ("none", "threshold_l2", "dynamicvit", "evit", "ats")
LAYOUTS = ("packed", "padded")
VARIANTS = ("fixed", "adaptive")

_COMMON = ("variant", "stages", "k_min", "k_max")
OPTIONS: dict[str, dict[str, object]] = {
    "none": {},
    "dynamicvit": {"variant": "fixed", "stages": (3, 6, 9), "keep_rate": 0.7, "keep_threshold": 0.5,
                   "k_min": 1, "k_max": None, "predictors": None},
    "evit": {"variant": "fixed", "stages": (3, 6, 9), "keep_rate": 0.7, "fuse": True, "mass": None,
             "k_min": 1, "k_max": None},
    "ats": {"variant": "adaptive", "stages": tuple(range(3, 12)), "num_samples": None, "keep_rate": 0.9},
    "threshold_l2": {"variant": "adaptive", "stages": (3, 6, 9), "keep_rate": 0.7, "thresholds": None,
                     "alpha": 1.0, "k_min": 1, "k_max": None},
}
MID_METHODS = ("evit", "ats")


@dataclass(frozen=True)
class PruningConfig:
    """Validated options of one pruned model (see :func:`raggedvit.prune` for their meaning)."""

    method: str
    variant: str
    stages: tuple[int, ...]
    keep_rate: float
    k_min: int = 1
    k_max: int | tuple[int | None, ...] | None = None
    keep_threshold: float = 0.5
    fuse: bool = True
    mass: float | None = None
    num_samples: int | None = None
    thresholds: tuple[float, ...] | None = None
    alpha: float | None = None

    def stage_k_max(self, stage: int) -> int | None:
        """``k_max`` of stage ``stage`` (``k_max`` is one int for every stage, or one entry per stage)."""
        return self.k_max[stage] if isinstance(self.k_max, tuple) else self.k_max

    @property
    def mid(self) -> bool:
        """Prune inside the block (after attention), else before it."""
        return self.method in MID_METHODS


@dataclass(frozen=True)
class StagePlan:
    """One pruning stage, all host ints.

    Attributes:
        index: stage number ``s`` (0-based).
        block: block index; PRE stages prune before it, MID stages inside it.
        mid: MID (after the block's attention) rather than PRE.
        width_in: bound on tokens per image entering the stage (prefix included).
        width_out: bound after it (exact for fixed variants).
        exact: every image holds exactly ``width_out`` tokens afterwards.
        keep: fixed variants: non-prefix tokens kept (fused token excluded); None when adaptive.
        noop: fixed variants that keep everything (e.g. keep rate 1.0): the stage changes nothing.
    """

    index: int
    block: int
    mid: bool
    width_in: int
    width_out: int
    exact: bool
    keep: int | None
    noop: bool


def _fail(msg: str) -> None:
    raise ValueError(f"prune: {msg}")


def _check_rate(name: str, v, lo_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v <= 1.0) or math.isnan(v):
        _fail(f"{name} must be a number in (0, 1], got {v!r}")
    return float(v)


def _check_int(name: str, v, lo: int, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(f"{name} must be an int >= {lo}{' or None' if allow_none else ''}, got {v!r}")
    return v


def make_config(method: str, *, depth: int, num_patches: int, **options) -> tuple[PruningConfig, object]:
    """Validate ``options`` for ``method``; returns ``(config, predictors_or_None)``. Raises ValueError."""
    if method not in METHODS:
        _fail(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    allowed = OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        _fail(f"unknown option(s) {', '.join(unknown)} for method {method!r}; valid: {valid}")
    o = {**allowed, **options}
    if method == "none":
        return PruningConfig("none", "fixed", (), 1.0), None
    variant = o["variant"]
    if variant not in VARIANTS:
        _fail(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    stages = o["stages"]
    if isinstance(stages, int) or not all(isinstance(b, int) and not isinstance(b, bool) for b in stages):
        _fail(f"stages must be a sequence of block indices, got {stages!r}")
    stages = tuple(stages)
    if not stages or list(stages) != sorted(set(stages)) or stages[0] < 1 or stages[-1] >= depth:
        _fail(f"stages must be strictly increasing block indices in [1, {depth - 1}], got {stages!r}")
    keep_rate = _check_rate("keep_rate", o["keep_rate"])
    k_min = _check_int("k_min", o.get("k_min", 1), 1)
    k_max = o.get("k_max")
    if isinstance(k_max, (tuple, list)):
        if len(k_max) != len(stages):
            _fail(f"k_max must be an int, None or {len(stages)} values (one per stage), got {k_max!r}")
        k_max = tuple(_check_int("k_max", v, 1, allow_none=True) for v in k_max)
        caps = k_max
    else:
        k_max = _check_int("k_max", k_max, 1, allow_none=True)
        caps = (k_max,)
    for cap in caps:
        if cap is not None and cap < k_min:
            _fail(f"k_max ({cap}) must be >= k_min ({k_min})")
    cfg = dict(method=method, variant=variant, stages=stages, keep_rate=keep_rate, k_min=k_min, k_max=k_max)
    if method == "dynamicvit":
        cfg["keep_threshold"] = _check_rate("keep_threshold", o["keep_threshold"])
        if o["keep_threshold"] >= 1.0:
            _fail("keep_threshold must be < 1 (p_keep > threshold)")
    elif method == "evit":
        if not isinstance(o["fuse"], bool):
            _fail(f"fuse must be a bool, got {o['fuse']!r}")
        cfg["fuse"] = o["fuse"]
        cfg["mass"] = keep_rate if o["mass"] is None else _check_rate("mass", o["mass"])
    elif method == "ats":
        cfg["num_samples"] = _check_int("num_samples", num_patches if o["num_samples"] is None
                                        else o["num_samples"], 2)
    elif method == "threshold_l2":
        t = o["thresholds"]
        if t is not None:
            if isinstance(t, (int, float)):
                t = (t,) * len(stages)
            t = tuple(t)
            if len(t) != len(stages) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in t):
                _fail(f"thresholds must be {len(stages)} finite numbers (one per stage), got {o['thresholds']!r}")
            cfg["thresholds"] = tuple(float(v) for v in t)
        else:
            a = o["alpha"]
            if isinstance(a, bool) or not isinstance(a, (int, float)) or not a >= 0 or not math.isfinite(a):
                _fail(f"alpha must be a finite number >= 0, got {a!r}")
            cfg["alpha"] = float(a)
    return PruningConfig(**cfg), o.get("predictors")


def plan_stages(cfg: PruningConfig, num_prefix: int, num_patches: int) -> tuple[StagePlan, ...]:
    """Host-side schedule: token bounds before and after every stage (see :class:`StagePlan`)."""
    plans = []
    width = num_prefix + num_patches
    exact = True
    fixed = cfg.variant == "fixed"
    schedule = dynamicvit.keep_counts(num_patches, cfg.keep_rate, len(cfg.stages))
    for s, block in enumerate(cfg.stages):
        n = width - num_prefix
        keep = None
        if fixed:
            if cfg.method in ("dynamicvit", "threshold_l2"):
                keep = min(schedule[s], n)
            else:  # evit, ats: per-stage rate relative to the current count
                keep = evit.num_keep(n, cfg.keep_rate)
            keep = max(keep, 1)
            noop = keep >= n
            out = width if noop else num_prefix + keep + (1 if cfg.method == "evit" and cfg.fuse else 0)
        else:
            noop = False
            k_max = cfg.stage_k_max(s)
            cap = n if k_max is None else min(n, k_max)
            if cfg.method == "ats":
                cap = ats.max_kept(n, cfg.num_samples)
            elif cfg.method == "evit" and cfg.fuse:
                cap = min(n, cap + 1)
            out = num_prefix + cap
            exact = False
        plans.append(StagePlan(s, block, cfg.mid, width, out, exact, keep, noop))
        width = out
    return tuple(plans)
