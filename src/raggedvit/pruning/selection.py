"""Segment selection helpers shared by the methods: candidate masks, stable segment sort, assembly.

All functions work on dense ``(B, L)`` views of one pruning stage (see :mod:`.ragged`). Tie rule
everywhere: a stable sort, so among equal scores the lower position comes first (PyTorch's ``topk`` and
unstable ``argsort`` leave ties implementation-defined; the official repositories use those).

The methods' selection functions accept ``valid=None`` for "every position is live" (a uniform batch, as
after every fixed-count stage): they then skip all masking. They score only the candidate columns
``[:, P:]`` (a view) so the prefix never enters a sort, and build the :class:`~.ragged.Selection` with
:func:`prefixed` (cached prefix columns) and :func:`fixed_count` (a cached count).
"""

from __future__ import annotations

import torch

from .ragged import Selection, arange, cached, const

__all__ = ["candidates", "masked_scores", "sort_desc", "rank_of", "assemble", "keep_mask_from_order",
           "candidate_scores", "num_candidates", "clamp_count", "prefixed", "fixed_count"]


def candidates(valid: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(B, L)`` bool: prunable tokens = valid positions past the ``num_prefix`` prefix tokens (CLS, DIST)."""
    return valid & (arange(valid.shape[1], valid.device) >= num_prefix)[None, :]


def masked_scores(scores: torch.Tensor, cand: torch.Tensor, fill: float = float("-inf")) -> torch.Tensor:
    """``scores`` in fp32 with non-candidates set to ``fill``."""
    return scores.float().masked_fill(~cand, fill)


def sort_desc(scores: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` positions by descending score, non-candidates last (stable: ties keep position order)."""
    return torch.sort(masked_scores(scores, cand), dim=1, descending=True, stable=True).indices


def rank_of(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``rank[b, order[b, r]] = r``."""
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, arange(order.shape[1], order.device).expand_as(order))


def keep_mask_from_order(order: torch.Tensor, num_keep: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool mask of the positions ``order[b, :num_keep[b]]``."""
    taken = arange(order.shape[1], order.device)[None, :] < num_keep[:, None]
    return torch.zeros_like(taken).scatter_(1, order, taken)


def candidate_scores(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int,
                     fill: float) -> torch.Tensor:
    """``(B, L - P)`` fp32 scores of the candidate columns, ``fill`` at invalid positions (one op at most)."""
    s = score[:, num_prefix:].float()
    if valid is None:
        return s
    return torch.where(valid[:, num_prefix:], s, const(fill, torch.float32, s.device))


def num_candidates(valid: torch.Tensor | None, num_prefix: int) -> torch.Tensor | None:
    """``(B,)`` int64 live candidates per sequence; None when ``valid`` is None (all ``L - P`` live)."""
    if valid is None:
        return None
    return valid[:, num_prefix:].sum(1)


def clamp_count(n: torch.Tensor, k_min: int, k_max: int | None, available: torch.Tensor | None,
                width: int) -> torch.Tensor:
    """``min(max(n, k_min), k_max, available)`` (``available`` None: all ``width`` candidates are live)."""
    if available is None:
        return n.clamp(min=k_min, max=width if k_max is None else min(k_max, width))
    return torch.minimum(n.clamp(min=k_min, max=k_max), available)


def prefixed(order: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(B, P + K)`` positions: the prefix ``0..P-1``, then candidate-column positions ``order + P``."""
    batch = order.shape[0]
    device = order.device
    prefix = cached(("prefix", batch, num_prefix, device),
                    lambda: torch.arange(num_prefix, device=device).expand(batch, num_prefix).contiguous())
    return torch.cat([prefix, order + num_prefix], dim=1)


def fixed_count(batch: int, value: int, device: torch.device) -> torch.Tensor:
    """Cached ``(B,)`` int64 tensor of ``value`` (the counts of a fixed-count selection; read-only)."""
    return cached(("count", batch, value, device),
                  lambda: torch.full((batch,), value, dtype=torch.long, device=device))


def assemble(order: torch.Tensor, num_keep: torch.Tensor, num_prefix: int, max_keep: int, *, exact: bool,
             extra: torch.Tensor | None = None, has_extra: torch.Tensor | None = None) -> Selection:
    """Build a :class:`Selection`: prefix tokens, then ``order[b, :num_keep[b]]``, then the appended token.

    Args:
        order: ``(B, L)`` candidate positions in output order.
        num_keep: ``(B,)`` int64 kept candidates per sequence (``<= max_keep``).
        num_prefix: prefix tokens kept in front (positions ``0..P-1``).
        max_keep: host bound on ``num_keep``.
        exact: host flag, every sequence keeps exactly ``max_keep`` (and appends iff ``extra`` is given).
        extra: ``(B, C)`` token appended after the kept ones (EViT's fused token), or None.
        has_extra: ``(B,)`` bool, which sequences append ``extra`` (default: all).
    """
    batch, L = order.shape
    device = order.device
    prefix = arange(num_prefix, device).expand(batch, num_prefix)
    parts = [prefix, order[:, :max_keep]]
    width = num_prefix + max_keep
    count = num_keep.long() + num_prefix
    if extra is not None:
        parts.append(torch.full((batch, 1), L, dtype=order.dtype, device=device))
        width += 1
        if has_extra is None:
            has_extra = torch.ones(batch, dtype=torch.bool, device=device)
        col = arange(width, device)[None, :]
        index = torch.cat(parts, dim=1)
        index = torch.where(col == count[:, None], torch.full_like(index, L), index)
        count = count + has_extra.long()
    else:
        index = torch.cat(parts, dim=1)
    return Selection(index, count, width, exact, extra)
