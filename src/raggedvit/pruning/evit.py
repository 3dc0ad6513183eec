"""EViT (Liang et al., ICLR 2022): keep the most attended tokens inside blocks 3, 6, 9 (MID), fuse the rest.

Score: head-mean CLS attention ``a_j`` of the same block (softmax over all current keys, prefix columns
dropped, not renormalised). Keep rules on a dense ``(B, L)`` view:

* fixed (published): top ``k = ceil(rho * n)`` (``n`` = non-prefix tokens, an earlier fused token
  included), descending-score order (:func:`num_keep`, :func:`select_topk`);
* adaptive ("EViT-mass", a proposal of the spec, section 2.5): the shortest descending prefix whose
  attention mass reaches ``mass * sum_j a_j``, at least ``k_min``, at most ``k_max`` (:func:`select_mass`).

With fusion the dropped tokens are folded into one token ``sum_{dropped} a_j * y_j`` appended last (only
when something was dropped). Distilled models: the DIST token is a prefix token, never a candidate.
"""

from __future__ import annotations

import math

import torch

from .ragged import Selection
from .selection import assemble, candidates, keep_mask_from_order, sort_desc

__all__ = ["num_keep", "cls_scores", "fused_token", "select_topk", "select_mass"]


def num_keep(num_tokens: int, keep_rate: float) -> int:
    """Kept non-prefix tokens ``math.ceil(keep_rate * num_tokens)`` (Python float64, as the official code)."""
    return math.ceil(keep_rate * num_tokens)


def cls_scores(cls_probs: torch.Tensor) -> torch.Tensor:
    """Head-mean CLS attention ``(B, L)`` from ``cls_probs: (B, L, H)``."""
    return cls_probs.mean(dim=2)


def fused_token(score: torch.Tensor, dropped: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` attention-weighted sum of the dropped tokens: ``sum_j score_j * y_j`` over ``dropped``.

    ``score``: ``(B, L)``, ``dropped``: ``(B, L)`` bool, ``y``: ``(B, L, C)`` dense view of the block's
    post-attention residual stream. Accumulates in fp32, returns ``y.dtype``.
    """
    with torch.autocast(y.device.type, enabled=False):
        w = torch.where(dropped, score.float(), torch.zeros((), device=score.device))
        return torch.einsum("bl,blc->bc", w, y.float()).to(y.dtype)


def _finish(score, cand, order, kept, num_prefix, max_keep, exact, fuse, y_dense):
    if not fuse:
        return assemble(order, kept, num_prefix, max_keep, exact=exact)
    dropped = cand & ~keep_mask_from_order(order, kept)
    extra = fused_token(score, dropped, y_dense)
    has_extra = kept < cand.sum(1)
    return assemble(order, kept, num_prefix, max_keep, exact=exact, extra=extra, has_extra=has_extra)


def select_topk(score: torch.Tensor, valid: torch.Tensor, num_prefix: int, k: int, *, fuse: bool,
                y_dense: torch.Tensor | None = None) -> Selection:
    """Fixed count: prefix, the ``k`` most attended tokens (best first), then the fused token if ``fuse``.

    Args:
        score: ``(B, L)`` head-mean CLS attention.
        valid: ``(B, L)`` live positions; every image must hold more than ``k`` candidates when fusing.
        k: kept candidates per image (host int).
        y_dense: ``(B, L, C)`` post-attention residual stream (needed when ``fuse``).
    """
    cand = candidates(valid, num_prefix)
    order = sort_desc(score, cand)
    kept = torch.full((score.shape[0],), k, dtype=torch.long, device=score.device)
    return _finish(score, cand, order, kept, num_prefix, k, True, fuse, y_dense)


def select_mass(score: torch.Tensor, valid: torch.Tensor, num_prefix: int, *, mass: float, fuse: bool,
                y_dense: torch.Tensor | None = None, k_min: int = 1, k_max: int | None = None) -> Selection:
    """Adaptive count: the shortest best-first prefix with ``sum a >= mass * (sum of all candidates' a)``.

    Output width: the host bound ``L`` (``num_prefix + min(n, k_max) (+1 fused)`` capped at ``L``).
    """
    cand = candidates(valid, num_prefix)
    order = sort_desc(score, cand)
    a_sorted = torch.gather(score.float().masked_fill(~cand, 0.0), 1, order)
    csum = torch.cumsum(a_sorted, dim=1)
    target = mass * csum[:, -1:]
    # k = number of sorted tokens whose exclusive prefix sum is still below the target.
    kept = ((csum - a_sorted) < target).sum(1)
    available = cand.sum(1)
    kept = torch.minimum(torch.maximum(kept, torch.full_like(kept, k_min)), available)
    L = score.shape[1]
    bound = L - num_prefix
    if k_max is not None:
        kept = kept.clamp(max=k_max)
        bound = min(bound, k_max)
    if fuse and bound == L - num_prefix:
        bound -= 1  # at most L - P - 1 kept when the fused token is appended; all kept -> no fused token
        sel = _finish(score, cand, order, kept, num_prefix, bound, False, fuse, y_dense)
        return _trim_all_kept(sel, order, kept, available, num_prefix, L)
    return _finish(score, cand, order, kept, num_prefix, bound, False, fuse, y_dense)


def _trim_all_kept(sel: Selection, order, kept, available, num_prefix: int, L: int) -> Selection:
    """Width ``L`` selection where an image that keeps every candidate has no fused token: the slot the
    fused token would take holds the last kept candidate instead."""
    all_kept = (kept >= available) & (kept > 0)
    last = torch.gather(order, 1, (kept - 1).clamp(min=0)[:, None])  # (B, 1)
    col = torch.arange(sel.width, device=order.device)[None, :]
    index = torch.where(all_kept[:, None] & (col == (num_prefix + kept - 1)[:, None]), last, sel.index)
    return Selection(index, sel.count, sel.width, False, sel.extra)
