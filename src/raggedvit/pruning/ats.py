"""ATS, Adaptive Token Sampling (Fayyaz et al., ECCV 2022): inside blocks 3..11 (MID), per-image counts.

Significance ``S_j = (sum_h P_h[0, j]) * ||V_j||_2`` normalised over the image's candidates (``V`` = all
heads' value vector, qkv bias included). Deterministic inverse-transform sampling as the official code:
sort ``S`` ascending, min-max normalised CDF ``F``, ``M`` sample points from ``y0 = min{F > 0}`` to 1
(``M = num_patches`` = 196 at 224 px, the same at every block), each sample picks the nearest CDF value
(first index on ties), duplicates are dropped; output order: prefix, kept tokens by *ascending*
significance. The nearest-value lookup is ``O(M log N)`` (``searchsorted`` plus a two-neighbour compare)
instead of the official ``O(M * N)`` distance matrix; equal-distance ties between non-neighbouring CDF
values (a floating-point corner case) are not reproduced.

Defined pad-free: each image's result depends only on its own tokens (the official padded batching lets
pads change an image's lowest kept token; spec section 3.3). Fixed-count ablation: :func:`select_topk`.
"""

from __future__ import annotations

import torch

from .ragged import Selection
from .selection import assemble, candidates

__all__ = ["significance", "sample_points", "select_sampling", "select_topk", "max_kept"]


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
    m = num_samples
    lin = torch.linspace(0.0, 1.0, m, device=y0.device)
    steps = torch.arange(m, device=y0.device, dtype=torch.float32)
    if m == 1:
        return torch.ones_like(y0)[:, None]
    y0 = y0[:, None]
    return y0 + ((lin[None, :] * (m - 1)) - y0 * steps[None, :]) / (m - 1)


def select_sampling(sig: torch.Tensor, valid: torch.Tensor, num_prefix: int, *, num_samples: int) -> Selection:
    """Inverse-transform sampling of ``sig: (B, L)`` (from :func:`significance`), per image.

    Output width: the host bound ``num_prefix + min(L - num_prefix, num_samples)``.
    """
    batch, L = sig.shape
    device = sig.device
    cand = candidates(valid, num_prefix)
    n = cand.sum(1)  # (B,)
    key = sig.float().masked_fill(~cand, float("inf"))
    s_sorted, perm = torch.sort(key, dim=1, stable=True)  # ascending, non-candidates last
    rank = torch.arange(L, device=device)[None, :]
    live = rank < n[:, None]
    cdf = torch.cumsum(torch.where(live, s_sorted, torch.zeros((), device=device)), dim=1)
    last = torch.gather(cdf, 1, (n - 1).clamp(min=0)[:, None])
    first = cdf[:, :1]
    den = last - first
    norm = (cdf - first) / torch.where(den > 0, den, torch.ones_like(den))
    norm = torch.where(live, norm, torch.full_like(norm, float("inf"))).contiguous()  # sorted ascending
    y0 = torch.where(live & (norm > 0), norm, torch.full_like(norm, float("inf"))).amin(dim=1)
    y0 = torch.where(torch.isfinite(y0), y0, torch.ones_like(y0))  # no positive CDF value: one token survives
    ys = sample_points(y0, num_samples).contiguous()  # (B, M)
    hi = torch.searchsorted(norm, ys)  # first rank with F >= y
    top = (n - 1).clamp(min=0)[:, None]
    lo = (hi - 1).clamp(min=0).minimum(top)
    hi = hi.minimum(top)
    d_lo = (ys - torch.gather(norm, 1, lo)).abs()
    d_hi = (ys - torch.gather(norm, 1, hi)).abs()
    pick = torch.where(d_hi < d_lo, hi, lo)
    # argmin's "first index" among equal CDF values (zero-significance tokens): the first rank of that value.
    pick = torch.searchsorted(norm, torch.gather(norm, 1, pick).contiguous())
    hit = torch.zeros(batch, L, dtype=torch.bool, device=device)
    hit.scatter_(1, pick.clamp(max=L - 1), torch.ones_like(pick, dtype=torch.bool))
    hit &= live
    kept = hit.sum(1)
    ranks = torch.sort(torch.where(hit, rank, rank + L), dim=1).indices  # kept ranks ascending, then the rest
    order = torch.gather(perm, 1, ranks)
    return assemble(order, kept, num_prefix, max_kept(L - num_prefix, num_samples), exact=False)


def select_topk(sig: torch.Tensor, valid: torch.Tensor, num_prefix: int, k: int) -> Selection:
    """Fixed-count ablation: the ``k`` most significant candidates, in ascending significance (ATS order)."""
    cand = candidates(valid, num_prefix)
    key = sig.float().masked_fill(~cand, float("-inf"))
    best = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    order = best.flip(1)
    num = torch.full((sig.shape[0],), k, dtype=torch.long, device=sig.device)
    return assemble(order, num, num_prefix, k, exact=True)
