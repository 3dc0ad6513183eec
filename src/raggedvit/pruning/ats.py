"""ATS, Adaptive Token Sampling (Fayyaz et al., ECCV 2022): inside blocks 3..11 (MID), per-image counts.

Significance ``S_j = (sum_h P_h[0, j]) * ||V_j||_2`` normalised over the image's candidates (``V`` = all
heads' value vector, qkv bias included). Deterministic inverse-transform sampling as the official code:
sort ``S`` ascending, min-max normalised CDF ``F``, ``M`` sample points from ``y0 = min{F > 0}`` to 1
(``M = num_samples``, the same at every block: by default twice the patch count, 392 at 224 px; the official
code uses the patch count, with which the trained ViT-Tiny loses 3.6 points of top-1 on the 500 labelled
sample photos, against none at 392: ``benchmarks/defaults_sweep.py``), each sample picks the nearest CDF value
(first index on ties), duplicates are dropped; output order: prefix, kept tokens by *ascending*
significance. The nearest-value lookup is ``O(M log N)`` (``searchsorted`` plus a two-neighbour compare)
instead of the official ``O(M * N)`` distance matrix; equal-distance ties between non-neighbouring CDF
values (a floating-point corner case) are not reproduced. The official fp32 CDF and sample points are
computed exactly instead (integer significances, :func:`fixed_point`): decisions then depend on the
significances alone, not on a summation order, so both layouts and the Triton kernel agree bit for bit.

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
from .ragged import Selection, arange, cached, const, dense_view
from .selection import candidate_scores, fixed_count, num_candidates, prefixed
from .stage import MID, StageInput
from .threshold_l2 import l2_scores

__all__ = ["ATS", "significance", "fixed_point", "cdf_bits", "select_sampling", "select_topk", "max_kept",
           "SAMPLES_PER_PATCH"]

# Default sample points per patch token (``ATS(num_samples=None)``). The official code samples once per patch;
# twice as many keep more tokens and lose no top-1 on the trained ViT-Tiny (benchmarks/defaults_sweep.py: 196
# loses 3.6 points, 256 1.2, 294 1.6, 320 0.6, 392 none; a round factor, not the 1.63 of 320 at 224 px).
SAMPLES_PER_PATCH = 2


@dataclass(frozen=True, kw_only=True)
class ATS(Pruner):
    """ATS inside blocks ``stages`` (between attention and MLP).

    Args:
        variant: ``"adaptive"`` (default: inverse-transform sampling, per-image counts) or ``"fixed"`` (the
            ``ceil(keep_rate * n)`` most significant tokens per stage, an ablation).
        stages: block indices (default 3..11).
        keep_rate: fixed variant: keep fraction per stage (default 0.92: at most 1 point of top-1 lost on the
            trained ViT-Tiny; 0.9 loses 1.4).
        num_samples: adaptive: sample points per stage (None: :data:`SAMPLES_PER_PATCH` times the model's patch
            count, 392 at 224 px).
    """

    name: ClassVar[str] = "ats"
    site: ClassVar[str] = MID
    variant: str = "adaptive"
    stages: tuple[int, ...] = tuple(range(3, 12))
    keep_rate: float = 0.92
    num_samples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.name, "num_samples", self.num_samples, 2, allow_none=True)

    def resolve(self, num_patches: int) -> ATS:
        if self.num_samples is not None:
            return self
        return replace(self, num_samples=check_int(self.name, "num_samples", SAMPLES_PER_PATCH * num_patches, 2))

    def fixed_keep(self, stage: int, n: int, num_patches: int) -> int:
        return num_keep(n, self.keep_rate)

    def adaptive_bound(self, stage: int, n: int) -> int:
        return max_kept(n, self.num_samples)

    def select(self, inp: StageInput) -> Selection:
        plan, y, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
        # significance up to a positive per-image factor (the head mean; normalisation cancels in the CDF): one
        # op in both layouts, so both compute the same bits from the same rows
        sig = inp.cls_mean(values=True)
        if inp.kernels:
            if self.fixed:
                index, _, _ = best_first_select(sig, y, meta.dense_rows, meta.lengths, P, plan.width_out,
                                                k=plan.keep, ascending=True)
                return Selection(index, fixed_count(meta.batch, plan.width_out, y.device), plan.width_out, True)
            index, count = ats_select(sig, None, meta.dense_rows, meta.lengths, P, plan.width_out, self.num_samples)
            return Selection(index, count, plan.width_out, False)
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


MAX_TOKENS = 8192  # tokens per image the integer CDF allows for (L <= MAX_TOKENS)
_BIG = 1 << 62  # int64 sentinel above every scaled CDF value and sample point


def cdf_bits(num_samples: int) -> int:
    """Fraction bits ``Q`` of :func:`fixed_point`: at most 40, and few enough that twice ``(M - 1)`` times a
    sum of ``MAX_TOKENS`` values below ``2 ** Q`` stays below ``2 ** 62`` (int64, no overflow)."""
    return min(40, 61 - (MAX_TOKENS - 1).bit_length() - max(num_samples - 1, 1).bit_length())


def check_sampling(L: int, num_samples: int) -> None:
    """ValueError unless the integer CDF covers ``L`` positions and ``num_samples`` sample points."""
    if L > MAX_TOKENS or num_samples < 1 or cdf_bits(num_samples) < 16:
        raise ValueError(f"ATS sampling: needs L <= {MAX_TOKENS} and 1 <= num_samples <= 2**32, got L={L}, "
                         f"num_samples={num_samples}")


def fixed_point(s: torch.Tensor, s_max: torch.Tensor, bits: int) -> torch.Tensor:
    """int64 ``floor(s * 2 ** (bits - E))`` with ``2 ** (E - 1) <= s_max < 2 ** E``: non-negative fp32
    significances as integers below ``2 ** bits`` (values under ``2 ** -bits`` of the maximum become 0).

    Every step is exact (the exponent from the bits of ``s_max`` as fp64, a power-of-two scale built from its
    bits, a product that only shifts the exponent, truncation), so the Triton kernel computes the same
    integers (:func:`raggedvit.kernels.select.ats_rank_fwd`). ``s_max``: ``(B, 1)`` fp32, the row maximum."""
    biased = (s_max.double().view(torch.int64) >> 52).clamp(min=1023 - 150)  # E + 1022 (s_max = 0: any scale)
    scale = ((bits + 2045 - biased) << 52).view(torch.float64)  # 2 ** (bits - E)
    return (s.double() * scale).long()


def select_sampling(sig: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, *,
                    num_samples: int) -> Selection:
    """Inverse-transform sampling of ``sig: (B, L)`` (:func:`significance`, or any positive multiple), per image.

    Exact integer arithmetic after one rounding (:func:`fixed_point`): the CDF is an int64 prefix sum and the
    nearest-value search compares ``(M - 1) x CDF`` with integer sample points, no division, so any
    implementation (the Triton kernel of :func:`raggedvit.ops.select.ats_select`, any summation order) makes
    the same decisions on the same significances. ``valid=None``: every position is live. Output width: the
    host bound ``num_prefix + min(L - num_prefix, num_samples)``.
    """
    batch, L = sig.shape
    width = L - num_prefix
    device = sig.device
    m = num_samples
    check_sampling(L, m)
    # Non-candidates sort last with a huge finite key, then count as 0 (their ranks come after the live ones).
    key = candidate_scores(sig, valid, num_prefix, torch.finfo(torch.float32).max)
    s_sorted, perm = torch.sort(key, dim=1, stable=True)  # ascending
    n = num_candidates(valid, num_prefix)
    big = const(_BIG, torch.int64, device)
    if n is None:
        top = cached(("ats_top", batch, width, device), lambda: torch.full((batch, 1), width - 1, device=device))
        q = fixed_point(s_sorted, s_sorted[:, -1:], cdf_bits(m))
        live = None
    else:
        top = (n[:, None] - 1).clamp(min=0)
        live = arange(width, device)[None, :] < n[:, None]
        s_live = torch.where(live, s_sorted, const(0.0, torch.float32, device))
        q = fixed_point(s_live, s_live.amax(1, keepdim=True), cdf_bits(m))
    cdf = torch.cumsum(q, dim=1)  # exact
    c = cdf - cdf[:, :1]  # min-max numerator: 0 at rank 0, D at the top rank
    dp = c.gather(1, top).clamp(min=1)  # D (1 when every live rank after the first is 0)
    g = max(m - 1, 1)
    v = c * g if live is None else torch.where(live, c * g, big)  # (M - 1) F D: non-decreasing, non-live last
    pos = c > 0 if live is None else (c > 0) & live
    c0 = torch.minimum(torch.where(pos, c, big).amin(dim=1, keepdim=True), dp)  # y0 D (y0 = 1 if no F > 0)
    if m > 1:  # (M - 1) D y_k = (M - 1) y0 D + k (1 - y0) D
        steps = cached(("ats_steps", m, device), lambda: torch.arange(m, device=device)[None, :])
        t = c0 * g + steps * (dp - c0)
    else:
        t = dp
    hi = torch.searchsorted(v, t).clamp(max=top)  # first rank with F >= y, at most the last live one
    off = cached(("ats_off", device), lambda: torch.tensor([1, 0], device=device)[None, :, None])
    lohi = (hi[:, None, :] - off).clamp(min=0)  # (B, 2, M): the two neighbours
    near = v.gather(1, lohi.view(batch, 2 * m)).view(batch, 2, m)
    d = (near - t[:, None, :]).abs()
    value = torch.where(d[:, 1] < d[:, 0], near[:, 1], near[:, 0])  # nearest CDF value, lower one on ties
    # argmin's "first index" among equal CDF values (zero-significance tokens): the first rank of that value.
    pick = torch.searchsorted(v, value)
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
