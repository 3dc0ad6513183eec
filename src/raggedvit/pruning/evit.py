"""EViT (Liang et al., ICLR 2022): keep the most attended tokens inside blocks 3, 6, 9 (MID), fuse the rest.

Score: head-mean CLS attention ``a_j`` of the same block (softmax over all current keys, prefix columns
dropped, not renormalised). Keep rules on a dense ``(B, L)`` view:

* fixed (published): top ``k = ceil(rho * n)`` (``n`` = non-prefix tokens, an earlier fused token
  included), descending-score order (:func:`num_keep`, :func:`select_topk`);
* adaptive ("EViT-mass", a proposal of the spec, section 2.5): the shortest descending prefix whose
  attention mass reaches ``mass * sum_j a_j``, at least ``k_min``, at most ``k_max`` (:func:`select_mass`).

With fusion the dropped tokens are folded into one token ``sum_{dropped} a_j * y_j`` appended last (only
when something was dropped). Distilled models: the DIST token is a prefix token, never a candidate.
``valid=None`` means every position is live (uniform batch; no masking ops). The fused token is computed
from the sorted dropped tail (a gather and one batched matmul), never multiplying a garbage row by 0.
:class:`EViT` is the method object (``prune(model, EViT(...))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..ops.select import best_first_select
from .method import BoundedPruner, check_rate
from .ragged import Selection, arange, cached, const, dense_view
from .selection import candidate_scores, clamp_count, fixed_count, num_candidates, prefixed
from .stage import MID, StageInput

__all__ = ["EViT", "num_keep", "fused_token", "select_topk", "select_mass"]


def num_keep(num_tokens: int, keep_rate: float) -> int:
    """Kept non-prefix tokens ``math.ceil(keep_rate * num_tokens)`` (Python float64, as the official code)."""
    return math.ceil(keep_rate * num_tokens)


@dataclass(frozen=True, kw_only=True)
class EViT(BoundedPruner):
    """EViT inside blocks ``stages`` (between attention and MLP).

    Defaults lose at most 1 point of top-1 against the dense model on the trained ViT-Tiny and the 500
    labelled sample photos (``benchmarks/defaults_sweep.py``): the published keep rate 0.7 loses 3.6 there.

    Args:
        variant: ``"fixed"`` (default: ``ceil(keep_rate * n)`` per stage) or ``"adaptive"`` (attention mass).
        stages, k_min, k_max: see :class:`~.method.BoundedPruner`.
        keep_rate: fixed variant: keep fraction per stage (default 0.78).
        fuse: fold the dropped tokens into one appended token.
        mass: adaptive: the attention-mass fraction to keep (default 0.92; None: ``keep_rate``).
    """

    name: ClassVar[str] = "evit"
    site: ClassVar[str] = MID
    keep_rate: float = 0.78
    fuse: bool = True
    mass: float | None = 0.92

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.fuse, bool):
            raise ValueError(f"{self.name}: fuse must be a bool, got {self.fuse!r}")
        if self.mass is not None:
            object.__setattr__(self, "mass", check_rate(self.name, "mass", self.mass))

    @property
    def target_mass(self) -> float:
        """The adaptive variant's attention-mass fraction."""
        return self.keep_rate if self.mass is None else self.mass

    def fixed_keep(self, stage: int, n: int, num_patches: int) -> int:
        return num_keep(n, self.keep_rate)

    def appended(self) -> int:
        return int(self.fuse)

    def adaptive_bound(self, stage: int, n: int) -> int:
        cap = super().adaptive_bound(stage, n)
        return min(n, cap + 1) if self.fuse else cap

    def select(self, inp: StageInput) -> Selection:
        plan, y, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
        score = inp.cls_mean()
        k_max = self.stage_k_max(plan.index)
        if inp.kernels:
            rule = dict(k=plan.keep) if self.fixed else dict(mass=self.target_mass, k_min=self.k_min, k_max=k_max)
            index, count, extra = best_first_select(score, y, meta.dense_rows, meta.lengths, P, plan.width_out,
                                                    fuse=self.fuse, **rule)
            if self.fixed:
                count = fixed_count(meta.batch, plan.width_out, y.device)
            return Selection(index, count, plan.width_out, self.fixed, extra)
        y_dense = dense_view(y, meta) if self.fuse else None
        if self.fixed:
            return select_topk(score, inp.valid, P, plan.keep, fuse=self.fuse, y_dense=y_dense)
        return select_mass(score, inp.valid, P, mass=self.target_mass, fuse=self.fuse, y_dense=y_dense,
                           k_min=self.k_min, k_max=k_max)

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` head-mean CLS attention of the block."""
        return inp.cls_mean()


def fused_token(score: torch.Tensor, dropped: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` attention-weighted sum of the dropped tokens: ``sum_j score_j * y_j`` over ``dropped``.

    ``score``: ``(B, L)``, ``dropped``: ``(B, L)`` bool, ``y``: ``(B, L, C)`` dense view of the block's
    post-attention residual stream. Accumulates in fp32, returns ``y.dtype``. Rows outside ``dropped`` are
    masked with ``where`` (they may hold garbage: ``0 * NaN`` would poison the sum).
    """
    with torch.autocast(y.device.type, enabled=False):
        w = torch.where(dropped, score.float(), torch.zeros((), device=score.device))
        yz = torch.where(dropped[:, :, None], y.float(), torch.zeros((), device=y.device))
        return torch.einsum("bl,blc->bc", w, yz).to(y.dtype)


def _fuse_sorted(w: torch.Tensor, order: torch.Tensor, y_dense: torch.Tensor, num_prefix: int,
                 live: torch.Tensor | None) -> torch.Tensor:
    """``sum_t w[b, t] * y_dense[b, P + order[b, t]]`` in fp32 -> ``(B, C)`` in ``y``'s dtype; ``live``
    (``(B, T)`` bool or None) masks entries whose row may be garbage (their ``w`` must be 0 already)."""
    C = y_dense.shape[-1]
    yd = y_dense[:, num_prefix:].gather(1, order[:, :, None].expand(-1, -1, C))
    if live is not None:
        yd = torch.where(live[:, :, None], yd, const(0, yd.dtype, yd.device))
    with torch.autocast(y_dense.device.type, enabled=False):
        return torch.bmm(w.float()[:, None, :], yd.float())[:, 0].to(y_dense.dtype)


def _marker(batch: int, value: int, device: torch.device) -> torch.Tensor:
    return cached(("marker", batch, value, device), lambda: torch.full((batch, 1), value, device=device))


def select_topk(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, k: int, *, fuse: bool,
                y_dense: torch.Tensor | None = None) -> Selection:
    """Fixed count: prefix, the ``k`` most attended tokens (best first), then the fused token if ``fuse``.

    Args:
        score: ``(B, L)`` head-mean CLS attention.
        valid: ``(B, L)`` live positions (None: all); every image must hold more than ``k`` candidates
            when fusing (at least ``k`` without).
        k: kept candidates per image (host int).
        y_dense: ``(B, L, C)`` post-attention residual stream (needed when ``fuse``).
    """
    batch, L = score.shape
    key = candidate_scores(score, valid, num_prefix, float("-inf"))
    vals, order = torch.sort(key, dim=1, descending=True, stable=True)
    index = prefixed(order[:, :k], num_prefix)
    if not fuse:
        return Selection(index, fixed_count(batch, num_prefix + k, score.device), num_prefix + k, True)
    index = torch.cat([index, _marker(batch, L, score.device)], dim=1)
    w, live = vals[:, k:], None
    if valid is not None:  # invalid positions sort last with -inf
        live = w > float("-inf")
        w = torch.where(live, w, const(0.0, torch.float32, w.device))
    extra = _fuse_sorted(w, order[:, k:], y_dense, num_prefix, live)
    return Selection(index, fixed_count(batch, num_prefix + k + 1, score.device), num_prefix + k + 1, True, extra)


def select_mass(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, *, mass: float, fuse: bool,
                y_dense: torch.Tensor | None = None, k_min: int = 1, k_max: int | None = None) -> Selection:
    """Adaptive count: the shortest best-first prefix with ``sum a >= mass * (sum of all candidates' a)``.

    Scores must be ``>= 0`` (attention probabilities). Output width: the host bound
    ``num_prefix + min(n, k_max) (+1 fused)`` capped at ``L``; an image that keeps every candidate appends
    no fused token.
    """
    batch, L = score.shape
    width = L - num_prefix
    device = score.device
    # invalid positions -> 0: they sort after every candidate (ties keep position order), add no mass
    a_sorted, order = torch.sort(candidate_scores(score, valid, num_prefix, 0.0), dim=1, descending=True,
                                 stable=True)
    csum = torch.cumsum(a_sorted, dim=1)
    # k = number of sorted tokens whose exclusive prefix sum is still below the target.
    kept = ((csum - a_sorted) < mass * csum[:, -1:]).sum(1)
    available = num_candidates(valid, num_prefix)
    kept = clamp_count(kept, k_min, k_max, available, width)
    bound = width if k_max is None else min(width, k_max)
    if not fuse:
        return Selection(prefixed(order[:, :bound], num_prefix), kept + num_prefix, num_prefix + bound, False)
    cols = min(bound + 1, width)  # the fused token takes the slot after the last kept one
    pk = kept + num_prefix
    slot = arange(num_prefix + cols, device)[None, :] == pk[:, None]
    index = torch.where(slot, const(L, order.dtype, device), prefixed(order[:, :cols], num_prefix))
    rank = arange(width, device)[None, :]
    if available is None:
        has_extra, live = kept < width, None
    else:
        has_extra, live = kept < available, rank < available[:, None]
    w = a_sorted.masked_fill(rank < kept[:, None], 0.0)  # the dropped tail (0 past the candidates)
    extra = _fuse_sorted(w, order, y_dense, num_prefix, live)
    return Selection(index, pk + has_extra, num_prefix + cols, False, extra)
