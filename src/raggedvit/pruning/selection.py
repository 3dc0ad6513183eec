"""Segment selection helpers shared by the methods: candidate masks and scores, counts, prefixed positions.

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

from .ragged import arange, cached, const

__all__ = ["candidates", "candidate_scores", "num_candidates", "clamp_count", "prefixed", "fixed_count"]


def candidates(valid: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """``(B, L)`` bool: prunable tokens = valid positions past the ``num_prefix`` prefix tokens (CLS, DIST)."""
    return valid & (arange(valid.shape[1], valid.device) >= num_prefix)[None, :]


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

