"""Ragged batch metadata, dense ``(B, L)`` views and stable compaction, all with static shapes.

One frozen :class:`RaggedMeta` describes a buffer of ``capacity`` token rows holding ``batch`` sequences,
either *packed* (sequence ``b`` owns rows ``cu_seqlens[b]:cu_seqlens[b + 1]``, FlashAttention varlen
convention) or *padded* (sequence ``b`` owns rows ``b * L : b * L + lengths[b]`` of a ``(B, L)`` grid).
Every tensor shape here depends only on host integers (batch, capacity, the bound ``max_seqlen``), never on
device values: no ``.item()``, no boolean-mask indexing, so a packed forward can be captured in a CUDA
graph. Rows past the live total (packed) or past a sequence's length (padded) are *unused*: compaction
writes zeros there and attention ignores them.

Segment operations (top-k, sort, cumsum, mean) run on dense ``(B, L)`` views built with index arithmetic
(:attr:`RaggedMeta.dense_rows`); invalid positions are masked by :attr:`RaggedMeta.dense_valid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RaggedMeta", "Selection", "packed_meta", "padded_meta", "uniform_meta", "dense_view", "compact"]


@dataclass(frozen=True, eq=False)
class RaggedMeta:
    """Layout of a ragged batch of token rows (one object per pruning stage, passed to every block).

    Attributes:
        batch: number of sequences ``B`` (host int).
        max_seqlen: host-side upper bound ``L`` on every length; the width of dense views.
        capacity: rows of the buffer (host int); ``B * L`` for every buffer this library builds.
        lengths: ``(B,)`` int64 device tensor, tokens per sequence.
        cu_seqlens: ``(B + 1,)`` int32 offsets for the packed layout; ``None`` for the padded layout.
        seg_ids: ``(capacity,)`` int64, the sequence owning each row; ``batch`` for unused rows.
        positions: ``(capacity,)`` int64, each row's position in its sequence (0 for unused rows).
        row_valid: ``(capacity,)`` bool, row holds a live token.
        dense_rows: ``(B, L)`` int64, the row of position ``l`` of sequence ``b`` (clamped to the buffer
            where ``l >= lengths[b]``; mask with ``dense_valid``).
        dense_valid: ``(B, L)`` bool, ``l < lengths[b]``.
        uniform: host flag, every length equals ``max_seqlen`` (no unused rows at all).
    """

    batch: int
    max_seqlen: int
    capacity: int
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor | None
    seg_ids: torch.Tensor
    positions: torch.Tensor
    row_valid: torch.Tensor
    dense_rows: torch.Tensor
    dense_valid: torch.Tensor
    uniform: bool

    @property
    def padded(self) -> bool:
        """True for the padded ``(B, L)`` grid layout, False for packed ``cu_seqlens`` rows."""
        return self.cu_seqlens is None


def packed_meta(cu_seqlens: torch.Tensor, max_seqlen: int, capacity: int, *, uniform: bool = False) -> RaggedMeta:
    """Metadata of a packed buffer with ``capacity`` rows and offsets ``cu_seqlens`` (int32 ``(B + 1,)``).

    ``max_seqlen`` must be a true host-side bound on every length; ``cu_seqlens[-1] <= capacity``.
    No device value is read back.
    """
    device = cu_seqlens.device
    batch = cu_seqlens.shape[0] - 1
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    rows = torch.arange(capacity, device=device)
    seg = torch.searchsorted(cu[1:].contiguous(), rows, right=True)  # B for rows past cu[-1]
    starts = torch.cat([cu[:-1], cu[-1:]])
    row_valid = seg < batch
    positions = torch.where(row_valid, rows - starts[seg], torch.zeros_like(rows))
    pos = torch.arange(max_seqlen, device=device)
    dense_valid = pos[None, :] < lengths[:, None]
    dense_rows = (cu[:-1, None] + pos[None, :]).clamp(max=max(capacity - 1, 0))
    return RaggedMeta(batch, max_seqlen, capacity, lengths, cu_seqlens, seg, positions, row_valid, dense_rows,
                      dense_valid, uniform)


def padded_meta(lengths: torch.Tensor, width: int, *, uniform: bool = False) -> RaggedMeta:
    """Metadata of a padded ``(B, width)`` grid flattened to ``B * width`` rows; ``lengths`` is ``(B,)``."""
    device = lengths.device
    batch = lengths.shape[0]
    lengths = lengths.long()
    rows = torch.arange(batch * width, device=device)
    seg = torch.div(rows, width, rounding_mode="floor")
    positions = rows - seg * width
    pos = torch.arange(width, device=device)
    dense_valid = pos[None, :] < lengths[:, None]
    row_valid = dense_valid.reshape(-1)
    seg = torch.where(row_valid, seg, torch.full_like(seg, batch))
    positions = torch.where(row_valid, positions, torch.zeros_like(positions))
    dense_rows = rows.view(batch, width)
    return RaggedMeta(batch, width, batch * width, lengths, None, seg, positions, row_valid, dense_rows,
                      dense_valid, uniform)


def uniform_meta(batch: int, seqlen: int, device: torch.device | str, *, packed: bool = True) -> RaggedMeta:
    """Metadata of ``batch`` sequences of exactly ``seqlen`` tokens (``batch * seqlen`` rows, no padding)."""
    if packed:
        cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
        return packed_meta(cu, seqlen, batch * seqlen, uniform=True)
    return padded_meta(torch.full((batch,), seqlen, dtype=torch.long, device=device), seqlen, uniform=True)


def dense_view(x: torch.Tensor, meta: RaggedMeta, fill: float | None = None) -> torch.Tensor:
    """``(B, L, *x.shape[1:])`` view-copy of the rows ``x: (capacity, ...)``; invalid positions get ``fill``
    (left as whatever row the clamped index points at when ``fill`` is None)."""
    out = x[meta.dense_rows]
    if fill is None:
        return out
    mask = meta.dense_valid.view(meta.batch, meta.max_seqlen, *([1] * (x.dim() - 1)))
    return out.masked_fill(~mask, fill)


@dataclass(frozen=True, eq=False)
class Selection:
    """Which tokens of each sequence survive a pruning stage, in their new order.

    Attributes:
        index: ``(B, width)`` int64 positions into the current dense view (``0..L-1``); the value ``L``
            stands for ``extra`` (an appended token such as EViT's fused token). Entries at and past
            ``count[b]`` are ignored (any value in ``[0, L]``).
        count: ``(B,)`` int64 new lengths, prefix tokens (and the appended token) included.
        width: host bound on ``count`` (the next stage's ``max_seqlen``).
        exact: host flag, every ``count`` equals ``width`` (fixed-count methods).
        extra: ``(B, C)`` token appended at position ``L``, or None.
    """

    index: torch.Tensor
    count: torch.Tensor
    width: int
    exact: bool
    extra: torch.Tensor | None = None


def compact(meta: RaggedMeta, sel: Selection, sources: list[tuple[torch.Tensor, torch.Tensor | None]],
            *, padded_width: int | None = None) -> tuple[RaggedMeta, list[torch.Tensor]]:
    """Stable compaction of the rows ``sel`` keeps into a new buffer of the same layout.

    Args:
        meta: layout of the current buffer.
        sel: the selection (positions into ``meta``'s dense view).
        sources: ``[(rows, extra)]``: ``rows`` is ``(meta.capacity, ...)``; ``extra`` ``(B, ...)`` is the value of
            the appended token (position ``L``) for that source, or None when ``sel`` appends nothing.
        padded_width: padded layout only: the grid width of the new buffer (``>= count.max()``, e.g. the
            batch maximum read by the caller); default ``sel.width``. Ignored for the packed layout.

    Returns:
        ``(new_meta, new_rows)``. Packed: ``capacity = B * sel.width``, new ``cu_seqlens`` from ``count``;
        padded: a ``(B, width)`` grid. Unused rows are zero. Gather-only (deterministic, no atomics).
    """
    batch = meta.batch
    if meta.padded:
        width = sel.width if padded_width is None else padded_width
        new = padded_meta(sel.count, width, uniform=sel.exact and width == sel.width)
    else:
        cu = torch.zeros(batch + 1, dtype=torch.int32, device=sel.count.device)
        cu[1:] = torch.cumsum(sel.count, 0)
        new = packed_meta(cu, sel.width, batch * sel.width, uniform=sel.exact)
    b = new.seg_ids.clamp(max=batch - 1)
    i = new.positions.clamp(max=sel.index.shape[1] - 1)
    p = sel.index[b, i]  # position in the old dense view, L = appended token
    appended = meta.capacity + torch.arange(batch, device=meta.dense_rows.device)
    rows_ext = torch.cat([meta.dense_rows, appended[:, None]], dim=1)  # (B, L + 1)
    src = rows_ext[b, p]
    out = []
    for rows, extra in sources:
        if sel.extra is not None:
            if extra is None:
                raise ValueError("compact: the selection appends a token; every source needs its extra value")
            rows = torch.cat([rows, extra.to(rows.dtype)], dim=0)
        g = rows[src]
        keep = new.row_valid.view(-1, *([1] * (g.dim() - 1)))
        out.append(torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device)))
    return new, out
