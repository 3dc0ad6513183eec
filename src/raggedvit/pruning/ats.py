"""ATS, Adaptive Token Sampling (Fayyaz et al., ECCV 2022): inside blocks 3..11 (MID), per-image counts.

Significance ``S_j = (sum_h P_h[0, j]) * ||V_j||_2`` normalised over the image's candidates (``V`` = all
heads' value vector, qkv bias included). Deterministic inverse-transform sampling as the official code:
sort ``S`` ascending, min-max normalised CDF ``F``, ``M`` sample points from ``y0 = min{F > 0}`` to 1
(``M = num_patches`` = 196 at 224 px, the same at every block), each sample picks the nearest CDF value
(first index on ties), duplicates are dropped; output order: prefix, kept tokens by *ascending*
significance. The nearest-value lookup is ``O(M log N)`` (``searchsorted`` plus a two-neighbour compare)
instead of the official ``O(M * N)`` distance matrix; equal-distance ties between non-neighbouring CDF
values (a floating-point corner case) are not reproduced.

Only the min-max normalised CDF matters, so any positive scaling of the significance (the head mean
instead of the head sum, no division by the image total) selects the same tokens up to rounding.

Defined pad-free: each image's result depends only on its own tokens (the official padded batching lets
pads change an image's lowest kept token; spec section 3.3). Fixed-count ablation: :func:`select_topk`.
:class:`ATS` is the method object (``prune(model, ATS(...))``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..ops.select import ats_select, best_first_select
from .evit import num_keep
from .method import Pruner, check_int
from .ragged import Selection, cached, const, dense_view
from .selection import candidate_scores, fixed_count, num_candidates, prefixed
from .stage import MID, StageInput
from .threshold_l2 import l2_scores

__all__ = ["ATS", "significance", "sample_points", "select_sampling", "select_topk", "max_kept"]


@dataclass(frozen=True, kw_only=True)
class ATS(Pruner):
    """ATS inside blocks ``stages`` (between attention and MLP).

    Args:
        variant: ``"adaptive"`` (default: inverse-transform sampling, per-image counts) or ``"fixed"`` (the
            ``ceil(keep_rate * n)`` most significant tokens per stage, an ablation).
        stages: block indices (default 3..11).
        keep_rate: fixed variant: keep fraction per stage.
        num_samples: adaptive: sample points per stage (None: the model's patch count, 196 at 224 px).
    """

    name: ClassVar[str] = "ats"
    site: ClassVar[str] = MID
    variant: str = "adaptive"
    stages: tuple[int, ...] = tuple(range(3, 12))
    keep_rate: float = 0.9
    num_samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.name, "num_samples", self.num_samples, 2, allow_none=True)

    def resolve(self, num_patches: int) -> ATS:
        if self.num_samples is not None:
            return self
        return replace(self, num_samples=check_int(self.name, "num_samples", num_patches, 2))

    def fixed_keep(self, stage: int, n: int, num_patches: int) -> int:
        return num_keep(n, self.keep_rate)

    def adaptive_bound(self, stage: int, n: int) -> int:
        return max_kept(n, self.num_samples)

    def select(self, inp: StageInput) -> Selection:
        plan, y, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
        # significance up to a positive per-image factor (the head mean; normalisation cancels in the CDF)
        score = inp.cls_mean()
        v = inp.qkv[2]
        v_norm = l2_scores(v.reshape(v.shape[0], -1))
        if inp.kernels:
            if self.fixed:
                index, _, _ = best_first_select(score, y, meta.dense_rows, meta.lengths, P, plan.width_out,
                                                k=plan.keep, row_weight=v_norm, ascending=True)
                return Selection(index, fixed_count(meta.batch, plan.width_out, y.device), plan.width_out, True)
            index, count = ats_select(score, v_norm, meta.dense_rows, meta.lengths, P, plan.width_out,
                                      self.num_samples)
            return Selection(index, count, plan.width_out, False)
        sig = score * dense_view(v_norm, meta)
        if self.fixed:
            return select_topk(sig, inp.valid, P, plan.keep)
        return select_sampling(sig, inp.valid, P, num_samples=self.num_samples)

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` :func:`significance` (normalised over each image's candidates, 0 elsewhere)."""
        v = inp.qkv[2]
        v_norm = dense_view(l2_scores(v.reshape(v.shape[0], -1)), inp.meta)
        return significance(inp.cls_mean()[:, :, None], v_norm, inp.candidates())


def significance(cls_probs: torch.Tensor, v_norm: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` normalised significance; 0 at non-candidates.

    Args:
        cls_probs: ``(B, L, H)`` CLS attention probabilities (see :mod:`.cls_attention`).
        v_norm: ``(B, L)`` L2 norm of each token's concatenated value vector.
        cand: ``(B, L)`` bool candidates (non-prefix live tokens).
    """
    s = cls_probs.float().sum(dim=2) * v_norm.float()
    s = s.masked_fill(~cand, 0.0)
    return s / s.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)


def max_kept(num_candidates: int, num_samples: int) -> int:
    """Host bound on kept candidates: at most one per sample point and per candidate."""
    return min(num_candidates, num_samples)


def sample_points(y0: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(B, M)`` points ``y0 + k (1 - y0) / (M - 1)``, written as the official ``create_ys`` computes it."""
    if num_samples == 1:
        return torch.ones_like(y0)[:, None]
    return _sample_points(y0[:, None], num_samples)


def _sample_points(y0: torch.Tensor, m: int) -> torch.Tensor:
    """:func:`sample_points` of ``y0: (B, 1)`` (``m >= 2``) with cached ``linspace * (m - 1)`` and steps."""
    device = y0.device
    lin, steps = cached(("ats_points", m, device), lambda: (
        torch.linspace(0.0, 1.0, m, device=device)[None, :] * (m - 1),
        torch.arange(m, device=device, dtype=torch.float32)[None, :]))
    return y0 + (lin - y0 * steps) / (m - 1)


def select_sampling(sig: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, *,
                    num_samples: int) -> Selection:
    """Inverse-transform sampling of ``sig: (B, L)`` (:func:`significance`, or any positive multiple), per image.

    ``valid=None``: every position is live. Output width: the host bound
    ``num_prefix + min(L - num_prefix, num_samples)``.
    """
    batch, L = sig.shape
    width = L - num_prefix
    device = sig.device
    m = num_samples
    # Non-candidates sort last with a huge finite key: the CDF past the live ones is > 1 or inf, never NaN.
    key = candidate_scores(sig, valid, num_prefix, torch.finfo(torch.float32).max)
    s_sorted, perm = torch.sort(key, dim=1, stable=True)  # ascending
    n = num_candidates(valid, num_prefix)
    if n is None:
        top = cached(("ats_top", batch, width, device), lambda: torch.full((batch, 1), width - 1, device=device))
    else:
        top = (n[:, None] - 1).clamp(min=0)
    cdf = torch.cumsum(s_sorted, dim=1)
    first = cdf[:, :1]
    den = cdf.gather(1, top) - first
    one = const(1.0, torch.float32, device)
    norm = (cdf - first) / torch.where(den > 0, den, one)  # min-max normalised, ascending
    inf = const(float("inf"), torch.float32, device)
    y0 = torch.where(norm > 0, norm, inf).amin(dim=1, keepdim=True).clamp(max=1.0)  # no positive value: 1
    ys = _sample_points(y0, m) if m > 1 else torch.ones_like(y0)  # (B, M)
    hi = torch.searchsorted(norm, ys).clamp(max=top)  # first rank with F >= y, at most the last live one
    off = cached(("ats_off", device), lambda: torch.tensor([1, 0], device=device)[None, :, None])
    lohi = (hi[:, None, :] - off).clamp(min=0)  # (B, 2, M): the two neighbours
    near = norm.gather(1, lohi.view(batch, 2 * m)).view(batch, 2, m)
    d = (near - ys[:, None, :]).abs()
    value = torch.where(d[:, 1] < d[:, 0], near[:, 1], near[:, 0])  # nearest CDF value, lower one on ties
    # argmin's "first index" among equal CDF values (zero-significance tokens): the first rank of that value.
    pick = torch.searchsorted(norm, value)
    hit = torch.zeros(batch, width + 1, dtype=torch.uint8, device=device)
    hit.scatter_(1, pick, 1)
    hit = hit[:, :width]
    kept = hit.sum(1)
    if n is not None:
        kept = torch.minimum(kept, n)  # no candidate at all: nothing kept
    ranks = torch.sort(hit, dim=1, descending=True, stable=True).indices  # kept ranks ascending, then the rest
    bound = max_kept(width, m)
    order = perm.gather(1, ranks[:, :bound])
    return Selection(prefixed(order, num_prefix), kept + num_prefix, num_prefix + bound, False)


def select_topk(sig: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, k: int) -> Selection:
    """Fixed-count ablation: the ``k`` most significant candidates, in ascending significance (ATS order)."""
    key = candidate_scores(sig, valid, num_prefix, float("-inf"))
    best = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    index = prefixed(best.flip(1), num_prefix)
    return Selection(index, fixed_count(sig.shape[0], num_prefix + k, sig.device), num_prefix + k, True)
