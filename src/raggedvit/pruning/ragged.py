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

Constants that depend only on host integers (aranges, the whole metadata of a uniform batch) are built once
per ``(device, shape)`` and reused (:func:`cached`): a fixed-count stage costs no metadata op at all. They are
built on first (eager) use; a miss while a CUDA graph is being captured builds the value without caching
it, so a warm-up forward before the capture fills the cache. Treat cached tensors as read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _disable_current_modes

__all__ = ["RaggedMeta", "Selection", "packed_meta", "padded_meta", "ragged_meta", "uniform_meta", "meta_from_counts",
           "dense_view", "compact", "identity_rows", "rows_from_dense", "cached", "arange", "const", "clear_cache"]

_CACHE: dict = {}
_CACHE_MAX = 1024


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def cached(key: tuple, build: Callable[[], object]):
    """``build()`` once per ``key`` (include the device in it); not stored while a CUDA graph is captured.

    The build runs outside any ``TorchDispatchMode`` (op recorders see the steady state on every call). Under
    ``torch.compile`` / ``torch.export`` nothing is cached: ``build()`` is traced into the graph."""
    if torch.compiler.is_compiling():
        return build()
    value = _CACHE.get(key)
    if value is None:
        with _disable_current_modes():
            value = build()
        if not _capturing():
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key] = value
    return value


def clear_cache() -> None:
    """Drop every cached constant tensor and metadata object."""
    _CACHE.clear()


def arange(n: int, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Cached ``torch.arange(n)`` (read-only)."""
    device = torch.device(device)
    return cached(("arange", n, device, dtype), lambda: torch.arange(n, device=device, dtype=dtype))


def const(value: float | int | bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Cached 0-dim tensor ``value`` (``torch.where(c, x, const(...))`` is one op, a Python scalar adds one)."""
    device = torch.device(device)
    return cached(("const", value, dtype, device), lambda: torch.tensor(value, dtype=dtype, device=device))


@dataclass(frozen=True, eq=False, kw_only=True)
class RaggedMeta:
    """Layout of a ragged batch of token rows (one object per pruning stage, passed to every block).

    Attributes:
        batch: number of sequences ``B`` (host int).
        max_seqlen: host-side upper bound ``L`` on every length; the width of dense views.
        capacity: rows of the buffer (host int); ``B * L`` for every buffer this library builds.
        lengths: ``(B,)`` int64 device tensor, tokens per sequence.
        cu_seqlens: ``(B + 1,)`` int32 offsets for the packed layout; ``None`` for the padded layout.
        dense_rows: ``(B, L)`` int64, the row of position ``l`` of sequence ``b`` (past ``lengths[b]`` it
            points at a later row or is clamped to the buffer; mask with ``dense_valid``).
        dense_valid: ``(B, L)`` bool, ``l < lengths[b]``.
        uniform: host flag, every length equals ``max_seqlen`` (no unused rows at all).
        seg_ids: ``(capacity,)`` int64, the sequence owning each row; ``batch`` for unused rows (computed
            on first access).
        positions: ``(capacity,)`` int64, each row's position in its sequence (0 for unused rows; lazy).
        row_valid: ``(capacity,)`` bool, row holds a live token (lazy).
    """

    batch: int
    max_seqlen: int
    capacity: int
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor | None
    dense_rows: torch.Tensor
    dense_valid: torch.Tensor
    uniform: bool

    @property
    def padded(self) -> bool:
        """True for the padded ``(B, L)`` grid layout, False for packed ``cu_seqlens`` rows."""
        return self.cu_seqlens is None

    @property
    def dense_identity(self) -> bool:
        """Host flag: row ``b * L + l`` is position ``l`` of sequence ``b`` (dense views are reshapes)."""
        return self.uniform or (self.padded and self.capacity == self.batch * self.max_seqlen)

    @property
    def _rows_info(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # computed once per object; not a functools.cached_property, whose lock (Python < 3.12) dynamo cannot
        # trace: under torch.compile it is recomputed in the graph instead
        if torch.compiler.is_compiling():
            return self._build_rows_info()
        info = self.__dict__.get("_rows_cache")
        if info is None:
            info = self._build_rows_info()
            object.__setattr__(self, "_rows_cache", info)
        return info

    def _build_rows_info(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.dense_rows.device
        rows = arange(self.capacity, device)
        if self.padded:
            width = self.max_seqlen
            seg = torch.div(rows, width, rounding_mode="floor")
            row_valid = self.dense_valid.reshape(-1)
            positions = torch.where(row_valid, rows - seg * width, 0)
            return torch.where(row_valid, seg, self.batch), positions, row_valid
        cu = self.cu_seqlens
        # B for rows past cu[-1]; the whole of cu (cu[0] = 0 <= every row), not the slice cu[1:]: Inductor 2.11
        # cannot take a sliced view as searchsorted's sequence ("NotImplementedError: SliceView")
        seg = torch.searchsorted(cu, rows, right=True) - 1
        row_valid = seg < self.batch
        positions = torch.where(row_valid, rows - cu[seg], 0)
        return seg, positions, row_valid

    @property
    def seg_ids(self) -> torch.Tensor:
        return self._rows_info[0]

    @property
    def positions(self) -> torch.Tensor:
        return self._rows_info[1]

    @property
    def row_valid(self) -> torch.Tensor:
        return self._rows_info[2]


def packed_meta(cu_seqlens: torch.Tensor, max_seqlen: int, capacity: int, *, uniform: bool = False,
                lengths: torch.Tensor | None = None) -> RaggedMeta:
    """Metadata of a packed buffer with ``capacity`` rows and offsets ``cu_seqlens`` (int32 ``(B + 1,)``).

    ``max_seqlen`` must be a true host-side bound on every length; ``cu_seqlens[-1] <= capacity``.
    ``lengths`` (int64 ``(B,)``, the differences of ``cu_seqlens``) saves two ops when the caller has it.
    No device value is read back.
    """
    device = cu_seqlens.device
    batch = cu_seqlens.shape[0] - 1
    if lengths is None:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    pos = arange(max_seqlen, device)
    dense_valid = pos < lengths[:, None]
    dense_rows = cu_seqlens[:-1, None] + pos
    if capacity < batch * max_seqlen:  # else cu[b] + l <= (B - 1) L + L - 1 stays inside the buffer
        dense_rows = dense_rows.clamp(max=max(capacity - 1, 0))
    return RaggedMeta(batch=batch, max_seqlen=max_seqlen, capacity=capacity, lengths=lengths, cu_seqlens=cu_seqlens,
                      dense_rows=dense_rows, dense_valid=dense_valid, uniform=uniform)


def ragged_meta(*, lengths: torch.Tensor, cu_seqlens: torch.Tensor, dense_rows: torch.Tensor,
                dense_valid: torch.Tensor, max_seqlen: int) -> RaggedMeta:
    """Packed metadata from fields already on the device (e.g. a compaction kernel's outputs), in
    ``B * max_seqlen`` rows: ``lengths`` ``(B,)`` int64, ``cu_seqlens`` ``(B + 1,)`` int32, ``dense_rows`` /
    ``dense_valid`` ``(B, max_seqlen)``. Not uniform (use :func:`uniform_meta` for equal lengths)."""
    batch = lengths.shape[0]
    return RaggedMeta(batch=batch, max_seqlen=max_seqlen, capacity=batch * max_seqlen, lengths=lengths,
                      cu_seqlens=cu_seqlens, dense_rows=dense_rows, dense_valid=dense_valid, uniform=False)


def meta_from_counts(count: torch.Tensor, width: int) -> RaggedMeta:
    """Packed metadata of ``count: (B,)`` int64 sequences (each ``<= width``) in ``B * width`` rows."""
    batch = count.shape[0]
    zero = cached(("zero_i32", count.device), lambda: torch.zeros(1, dtype=torch.int32, device=count.device))
    cu = torch.cat([zero, torch.cumsum(count, 0, dtype=torch.int32)])
    return packed_meta(cu, width, batch * width, lengths=count)


def padded_meta(lengths: torch.Tensor, width: int, *, uniform: bool = False) -> RaggedMeta:
    """Metadata of a padded ``(B, width)`` grid flattened to ``B * width`` rows; ``lengths`` is ``(B,)``."""
    device = lengths.device
    batch = lengths.shape[0]
    lengths = lengths.long()
    dense_valid = arange(width, device) < lengths[:, None]
    dense_rows = arange(batch * width, device).view(batch, width)
    return RaggedMeta(batch=batch, max_seqlen=width, capacity=batch * width, lengths=lengths, cu_seqlens=None,
                      dense_rows=dense_rows, dense_valid=dense_valid, uniform=uniform)


def uniform_meta(batch: int, seqlen: int, device: torch.device | str, *, packed: bool = True) -> RaggedMeta:
    """Metadata of ``batch`` sequences of exactly ``seqlen`` tokens (``batch * seqlen`` rows, no padding).

    Cached per ``(batch, seqlen, device, layout)``: the same object (read-only tensors) every call."""
    device = torch.device(device)

    def build() -> RaggedMeta:
        lengths = torch.full((batch,), seqlen, dtype=torch.long, device=device)
        if packed:
            cu = torch.arange(0, (batch + 1) * seqlen, seqlen, dtype=torch.int32, device=device)
            meta = packed_meta(cu, seqlen, batch * seqlen, uniform=True, lengths=lengths)
        else:
            meta = padded_meta(lengths, seqlen, uniform=True)
        meta._rows_info  # noqa: B018 -- build the lazy row fields now, with the rest of the constants
        return meta

    return cached(("uniform_meta", batch, seqlen, device, packed), build)


def dense_view(x: torch.Tensor, meta: RaggedMeta, fill: float | None = None) -> torch.Tensor:
    """``(B, L, *x.shape[1:])`` view-copy of the rows ``x: (capacity, ...)``; invalid positions get ``fill``
    (left as whatever row the index points at when ``fill`` is None). A reshape (no copy) when rows are
    laid out ``b * L + l`` (uniform batches, padded grids) and ``fill`` is None."""
    if meta.dense_identity:
        out = x.view(meta.batch, meta.max_seqlen, *x.shape[1:])
    else:
        out = x[meta.dense_rows]
    if fill is None or meta.uniform:
        return out
    mask = meta.dense_valid.view(meta.batch, meta.max_seqlen, *([1] * (x.dim() - 1)))
    return out.masked_fill(~mask, fill)


@dataclass(frozen=True, eq=False)
class Selection:
    """Which tokens of each sequence survive a pruning stage, in their new order.

    Attributes:
        index: ``(B, width)`` int64 positions into the current dense view (``0..L-1``); the value ``L``
            stands for ``extra`` (an appended token such as EViT's fused token; only when ``extra`` is
            given). Entries at and past ``count[b]`` are ignored (any value in ``[0, L - 1]``, or ``L`` with
            ``extra``).
        count: ``(B,)`` int64 new lengths, prefix tokens (and the appended token) included.
        width: host bound on ``count`` (the next stage's ``max_seqlen``).
        exact: host flag, every ``count`` equals ``width`` (fixed-count methods; with ``extra`` every
            sequence then ends with the appended token).
        extra: ``(B, C)`` token appended at position ``L``, or None.
        values: ``(B, L, C)`` new values of the current positions (a merge: ToMe's weighted averages), read
            instead of the stage's rows: position ``(b, l)`` of the output comes from ``values[b, l]``; None:
            the rows themselves. Not with ``extra``.
        size: ``(B, L)`` fp32 token sizes (how many original patches each token stands for) of the current
            positions after the stage, for methods that merge; None: sizes unchanged (compacted with the rows
            when the forward tracks them).
    """

    index: torch.Tensor
    count: torch.Tensor
    width: int
    exact: bool
    extra: torch.Tensor | None = None
    values: torch.Tensor | None = None
    size: torch.Tensor | None = None


def identity_rows(batch: int, width: int, device: torch.device) -> torch.Tensor:
    """Cached ``(B, L)`` int64 ``b * L + l``: the dense rows of a ``(B, L, ...)`` tensor flattened to rows."""
    return arange(batch * width, device).view(batch, width)


def _packed_dest(new: RaggedMeta) -> torch.Tensor:
    """``(B * W,)`` int64 bijection from the dense ``(B, W)`` entries of a packed buffer to its rows: entry
    ``(b, l) < count[b]`` goes to row ``cu[b] + l``; the unused entries, in order, fill rows ``[total, B * W)``."""
    batch, width = new.batch, new.max_seqlen
    cu = new.cu_seqlens.long()
    flat = arange(batch * width, new.lengths.device).view(batch, width)
    return torch.where(new.dense_valid, new.dense_rows, flat + (cu[-1] - cu[1:, None])).reshape(-1)


def rows_from_dense(meta: RaggedMeta, dense: torch.Tensor) -> torch.Tensor:
    """The rows ``(capacity, ...)`` of a buffer of ``meta`` (built by this library: ``capacity = B * L``) from
    its dense view ``(B, L, ...)``: a reshape when rows are laid out ``b * L + l``, else one scatter (every
    row written once, the unused rows from the entries past each length)."""
    flat = dense.reshape(meta.batch * meta.max_seqlen, *dense.shape[2:])
    if meta.dense_identity:
        return flat
    return torch.empty_like(flat).index_copy_(0, _packed_dest(meta), flat)


def compact(meta: RaggedMeta, sel: Selection, sources: list[tuple[torch.Tensor, torch.Tensor | None]],
            *, padded_width: int | None = None, dense_rows: torch.Tensor | None = None
            ) -> tuple[RaggedMeta, list[torch.Tensor]]:
    """Stable compaction of the rows ``sel`` keeps into a new buffer of the same layout.

    Args:
        meta: layout of the current buffer.
        sel: the selection (positions into ``meta``'s dense view).
        sources: ``[(rows, extra)]``: ``rows`` is ``(meta.capacity, ...)``; ``extra`` ``(B, ...)`` is the value of
            the appended token (position ``L``) for that source, or None when ``sel`` appends nothing.
        padded_width: padded layout only: the grid width of the new buffer (``>= count.max()``, e.g. the
            batch maximum read by the caller); default ``sel.width``. Ignored for the packed layout.
        dense_rows: ``(B, L)`` rows of the sources' positions instead of ``meta.dense_rows`` (sources given as a
            flattened dense view: :func:`identity_rows`).

    Returns:
        ``(new_meta, new_rows)``. Packed: ``capacity = B * sel.width``, new ``cu_seqlens`` from ``count``;
        padded: a ``(B, width)`` grid. Unused rows are zero. Exact selections reuse the cached uniform
        metadata and gather straight into the new buffer; others gather the kept rows and scatter them to
        their packed places with a permutation (the zeroed unused entries fill the rows past the live
        total), deterministic.
    """
    batch, L = meta.batch, meta.max_seqlen
    device = sel.count.device
    has_extra = sel.extra is not None
    if has_extra and any(extra is None for _, extra in sources):
        raise ValueError("compact: the selection appends a token; every source needs its extra value")
    width = sel.width if (padded_width is None or not meta.padded) else padded_width
    exact = sel.exact and width == sel.width
    if exact:
        new = uniform_meta(batch, width, device, packed=not meta.padded)
    else:
        new = padded_meta(sel.count, width) if meta.padded else meta_from_counts(sel.count, width)
    index = sel.index[:, :width]
    rows_of = meta.dense_rows if dense_rows is None else dense_rows
    out = []
    if exact:  # every row is live; with extra, the appended token is the last one of every sequence
        n = width - 1 if has_extra else width
        src = rows_of.gather(1, index[:, :n]).reshape(-1)
        for rows, extra in sources:
            tail = rows.shape[1:]
            g = rows[src]
            if has_extra:
                g = torch.cat([g.view(batch, n, *tail), extra.to(rows.dtype)[:, None]], dim=1)
            out.append(g.reshape(batch * width, *tail))
        return new, out
    if has_extra:
        is_extra = index == L
        index = index.clamp(max=L - 1)
    src = rows_of.gather(1, index).reshape(-1)
    dest = None
    if not meta.padded:
        # A bijection onto the new buffer: every row is written once: no dump row, no write contention.
        dest = _packed_dest(new)
    for rows, extra in sources:
        tail = rows.shape[1:]
        shape = (batch, width) + (1,) * len(tail)
        g = rows[src].view(batch, width, *tail)
        if has_extra:
            g = torch.where(is_extra.view(shape), extra.to(rows.dtype).view(batch, 1, *tail), g)
        g = torch.where(new.dense_valid.view(shape), g, const(0, g.dtype, g.device)).view(batch * width, *tail)
        if meta.padded:
            out.append(g)
        else:
            out.append(torch.empty_like(g).index_copy_(0, dest, g))
    return new, out
