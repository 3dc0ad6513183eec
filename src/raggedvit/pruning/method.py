"""What a pruning method is: a frozen dataclass of its options that plans its stages and selects tokens.

A method module (``pruning/<name>.py``) defines one subclass and the registry (:mod:`.registry`) lists it;
nothing else in the library names a method. The contract, used by :mod:`raggedvit.models.forward`:

* ``site``: :data:`~.stage.PRE` (prune a block's input) or :data:`~.stage.MID` (between its attention and
  its MLP; the stage then sees the block's q, k, v);
* :meth:`Method.bind` checks the options against a model (depth, token counts) and returns the resolved
  method with its host-side stage plan (:class:`~.stage.StagePlan`: the static buffer widths);
* :meth:`Method.select` turns a :class:`~.stage.StageInput` into a :class:`~.ragged.Selection`, choosing the
  Triton path (``inp.kernels``) or the torch path itself;
* :meth:`Method.scores` returns the ``(B, L)`` scores it ranks by (calibration, inspection);
* :meth:`Method.modules` returns the modules it owns (DynamicViT's predictors), registered on the model;
* :attr:`Method.proportional_attention`: merging methods (ToMe) return merged values and token sizes in the
  :class:`~.ragged.Selection`, and with this flag the attention weighs every key by its size.

Options are validated in ``__post_init__`` (ValueError naming the option, the value and the valid range).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .ragged import Selection
from .stage import PRE, StageInput, StagePlan

__all__ = ["Method", "NoPruning", "Pruner", "BoundedPruner", "VARIANTS", "check_rate", "check_int", "keep_counts"]

VARIANTS = ("fixed", "adaptive")


def keep_counts(num_patches: int, keep_rate: float, num_stages: int = 3) -> tuple[int, ...]:
    """Patch tokens kept after each stage, ``int(num_patches * keep_rate ** (s + 1))`` in Python float64
    (DynamicViT's schedule).

    >>> keep_counts(196, 0.7)
    (137, 96, 67)
    """
    return tuple(int(num_patches * keep_rate ** (s + 1)) for s in range(num_stages))


class Method:
    """Interface of every method (see the module docstring). Subclasses are frozen, keyword-only dataclasses."""

    name: ClassVar[str]
    site: ClassVar[str] = PRE
    module_name: ClassVar[str | None] = None  # attribute the model registers :meth:`modules` under

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options this method takes (its dataclass fields), in signature order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def bind(self, *, depth: int, num_prefix: int, num_patches: int) -> tuple[Method, tuple[StagePlan, ...]]:
        """``(resolved method, stage plan)`` for a model of ``depth`` blocks and ``num_prefix + num_patches``
        tokens per image; ValueError if the options do not fit that model."""
        raise NotImplementedError

    @property
    def proportional_attention(self) -> bool:
        """Whether attention adds ``log(token size)`` to every key's logit once a stage merged tokens (ToMe's
        proportional attention; the forward then passes a per-key bias to the attention backend)."""
        return False

    def modules(self, model: nn.Module) -> nn.Module | None:
        """Modules the method owns for ``model`` (indexed by stage), or None."""
        return None

    def select(self, inp: StageInput) -> Selection:
        """Which tokens of each image survive the stage ``inp.plan``."""
        raise NotImplementedError

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` fp32 scores the method ranks by at this stage (positions past a length: any value)."""
        raise NotImplementedError


def _fail(method: str, msg: str) -> None:
    raise ValueError(f"{method}: {msg}")


def check_rate(method: str, name: str, v) -> float:
    """``v`` as a float in (0, 1]; ValueError otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not (0.0 < v <= 1.0):
        _fail(method, f"{name} must be a number in (0, 1], got {v!r}")
    return float(v)


def check_int(method: str, name: str, v, lo: int, allow_none: bool = False) -> int | None:
    """``v`` as an int ``>= lo`` (or None when allowed); ValueError otherwise."""
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        _fail(method, f"{name} must be an int >= {lo}{' or None' if allow_none else ''}, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class NoPruning(Method):
    """The unpruned model on the same forward (the layouts' reference). Takes no options."""

    name: ClassVar[str] = "none"

    def bind(self, *, depth: int, num_prefix: int, num_patches: int) -> tuple[Method, tuple[StagePlan, ...]]:
        return self, ()


@dataclass(frozen=True, kw_only=True)
class Pruner(Method):
    """A method that prunes at the blocks ``stages``, keeping a ``keep_rate`` share per stage (``variant``
    ``"fixed"``: the same count for every image) or a per-image count (``"adaptive"``)."""

    variant: str = "fixed"
    stages: tuple[int, ...] = (3, 6, 9)
    keep_rate: float = 0.7

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            _fail(self.name, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        stages = self.stages
        if isinstance(stages, int) or not all(isinstance(b, int) and not isinstance(b, bool) for b in stages):
            _fail(self.name, f"stages must be a sequence of block indices, got {stages!r}")
        object.__setattr__(self, "stages", tuple(stages))
        object.__setattr__(self, "keep_rate", check_rate(self.name, "keep_rate", self.keep_rate))

    @property
    def fixed(self) -> bool:
        return self.variant == "fixed"

    def resolve(self, num_patches: int) -> Pruner:
        """This method with model-dependent defaults filled in (e.g. ATS's sample count)."""
        return self

    def fixed_keep(self, stage: int, n: int, num_patches: int) -> int:
        """Fixed variants: non-prefix tokens kept at ``stage`` out of ``n``. Default: DynamicViT's schedule
        (:func:`keep_counts`), relative to the original patch count."""
        return min(keep_counts(num_patches, self.keep_rate, len(self.stages))[stage], n)

    def appended(self) -> int:
        """Tokens a fixed stage appends after the kept ones (EViT's fused token)."""
        return 0

    def adaptive_bound(self, stage: int, n: int) -> int:
        """Adaptive variants: host bound on non-prefix tokens after ``stage`` out of ``n`` (the buffer width)."""
        return n

    def bind(self, *, depth: int, num_prefix: int, num_patches: int) -> tuple[Method, tuple[StagePlan, ...]]:
        s = self.stages
        if not s or list(s) != sorted(set(s)) or s[0] < 1 or s[-1] >= depth:
            _fail(self.name, f"stages must be strictly increasing block indices in [1, {depth - 1}], got {s!r}")
        method = self.resolve(num_patches)
        plans = []
        width = num_prefix + num_patches
        for i, block in enumerate(s):
            n = width - num_prefix
            if method.fixed:
                keep = max(method.fixed_keep(i, n, num_patches), 1)
                noop = keep >= n
                out = width if noop else num_prefix + keep + method.appended()
            else:
                keep, noop = None, False
                out = num_prefix + method.adaptive_bound(i, n)
            plans.append(StagePlan(i, block, method.site, width, out, method.fixed, keep, noop))
            width = out
        return method, tuple(plans)


@dataclass(frozen=True, kw_only=True)
class BoundedPruner(Pruner):
    """A :class:`Pruner` whose adaptive variant keeps at least ``k_min`` and at most ``k_max`` non-prefix
    tokens per image (``k_max``: one int for every stage, or one int or None per stage; it also caps the
    stage's buffer width, :attr:`~.stage.StagePlan.width_out`)."""

    k_min: int = 1
    k_max: int | tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        k_min = check_int(self.name, "k_min", self.k_min, 1)
        k_max = self.k_max
        if isinstance(k_max, (tuple, list)):
            if len(k_max) != len(self.stages):
                _fail(self.name, f"k_max must be an int, None or {len(self.stages)} values (one per stage), "
                                 f"got {k_max!r}")
            k_max = tuple(check_int(self.name, "k_max", v, 1, allow_none=True) for v in k_max)
            caps = k_max
        else:
            k_max = check_int(self.name, "k_max", k_max, 1, allow_none=True)
            caps = (k_max,)
        for cap in caps:
            if cap is not None and cap < k_min:
                _fail(self.name, f"k_max ({cap}) must be >= k_min ({k_min})")
        object.__setattr__(self, "k_max", k_max)

    def stage_k_max(self, stage: int) -> int | None:
        """``k_max`` of stage ``stage``."""
        return self.k_max[stage] if isinstance(self.k_max, tuple) else self.k_max

    def adaptive_bound(self, stage: int, n: int) -> int:
        k_max = self.stage_k_max(stage)
        return n if k_max is None else min(n, k_max)
