"""``compact_packed``: one-launch stable compaction of a packed ragged batch (rows + new metadata).

The pure-torch compaction of :func:`raggedvit.pruning.ragged.compact` plus the metadata of the new buffer
costs about 15 small ops per adaptive pruning stage (gathers, a permutation scatter, a cumsum, masks),
each a few microseconds of GPU time even inside a CUDA graph. This op does all of it in one Triton launch.
See :mod:`raggedvit.kernels.compact` for the layout it writes. Registered as
``torch.ops.raggedvit.compact_packed`` for ``torch.compile`` (see :mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

import torch

from ..kernels.compact import compact_packed_fwd
from .checks import check_ragged
from .launch import DirectLauncher
from .library import check_compilable, is_compiling

launcher = DirectLauncher(compact_packed_fwd, "compact_packed")
_BLOCK_W = 32


def compact_packed(x: torch.Tensor, extra: torch.Tensor | None, dense_rows: torch.Tensor, index: torch.Tensor,
                   count: torch.Tensor, tok: torch.Tensor, width: int, *, check_lengths: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compact the kept rows of a packed buffer into a new ``(B * width, C)`` buffer.

    Args:
        x: ``(rows, C)`` current buffer, last stride 1.
        extra: ``(B, C)`` appended token per sequence (selected by ``index == L``), or None.
        dense_rows: ``(B, L)`` int64 row of every position of the current buffer, last stride 1.
        index: ``(B, >= width)`` int64 kept positions in output order (``L`` = ``extra``), last stride 1.
        count: ``(B,)`` int64 new lengths (``<= width``), contiguous.
        tok: ``(B, L)`` int32 original token id of every current position, last stride 1.
        width: host bound on ``count`` (the new ``max_seqlen``).
        check_lengths: validate ``dense_rows``, ``index[:, :width]`` and ``count`` on the device first and
            raise ``ValueError`` naming the first value out of range; one host sync (debugging only).

    Returns:
        ``(out, cu_seqlens, dense_rows, dense_valid, tok)`` of the new buffer: ``out (B * width, C)`` (rows
        past the live total zero), int32 ``(B + 1,)``, int64 ``(B, width)``, bool ``(B, width)``, int32
        ``(B, width)`` (``-1`` for the appended token). No host sync; CUDA tensors, or CPU tensors under the
        Triton interpreter. Malformed ``count``, ``index`` or ``dense_rows`` are clamped (to ``[0, width]``,
        ``[0, L]`` and ``[0, rows - 1]``; see :mod:`raggedvit.ops.attention`): the output is still a
        well-formed buffer of clamped counts.
    """
    if x.dim() != 2 or dense_rows.dim() != 2 or index.dim() != 2 or tok.dim() != 2:
        raise ValueError("compact_packed: x, dense_rows, index and tok must be 2-D")
    batch, L = dense_rows.shape
    rows, C = x.shape
    dev = x.get_device()
    if dev < 0 and not launcher.interpreted:
        raise ValueError("compact_packed: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); "
                         "use raggedvit.pruning.ragged.compact")
    if x.stride(1) != 1 or dense_rows.stride(1) != 1 or index.stride(1) != 1 or tok.stride(1) != 1:
        raise ValueError("compact_packed: x, dense_rows, index and tok need last stride 1")
    if not (index.dtype == dense_rows.dtype == count.dtype == torch.int64 and tok.dtype == torch.int32):
        raise TypeError("compact_packed: index, dense_rows, count must be int64 and tok int32")
    if type(width) is not int or width < 0:
        raise TypeError(f"compact_packed: width must be a Python int >= 0, got {width!r}")
    if (index.shape[0] != batch or index.shape[1] < width or tuple(count.shape) != (batch,)
            or not count.is_contiguous() or tuple(tok.shape) != (batch, L)):
        raise ValueError(f"compact_packed: need index (B, >= width), contiguous count (B,) and tok (B, L) for "
                         f"dense_rows (B, L) = {tuple(dense_rows.shape)} and width {width}, got index "
                         f"{tuple(index.shape)}, count {tuple(count.shape)}, tok {tuple(tok.shape)}")
    if extra is not None and (tuple(extra.shape) != (batch, C) or extra.dtype != x.dtype or extra.stride(1) != 1):
        raise ValueError(f"compact_packed: extra must be ({batch}, {C}) {x.dtype} with last stride 1, got "
                         f"{tuple(extra.shape)} {extra.dtype}")
    if batch and (L == 0 or rows == 0):
        raise ValueError(f"compact_packed: {batch} sequences over {L} positions and {rows} rows of x: nothing to "
                         f"index (need L >= 1 and rows >= 1)")
    if is_compiling():
        check_compilable("compact_packed", None, check_lengths)
        out, cu, rows_out, valid, new_tok = torch.ops.raggedvit.compact_packed(x, extra, dense_rows, index, count,
                                                                               tok, width)
        return out, cu, rows_out, valid != 0, new_tok  # not a dtype view: Inductor 2.11 cannot lower one to bool
    if check_lengths:
        hi = L if extra is not None else L - 1
        check_ragged("compact_packed", rows, bounded=(("dense_rows", dense_rows, 0, rows - 1),
                                                      ("index", index[:, :width], 0, hi), ("count", count, 0, width)))
    out = torch.empty(batch * width, C, dtype=x.dtype, device=x.device)
    cu = torch.empty(batch + 1, dtype=torch.int32, device=x.device)
    rows_out = torch.empty(batch, width, dtype=torch.int64, device=x.device)
    valid = torch.empty(batch, width, dtype=torch.uint8, device=x.device)
    new_tok = torch.empty(batch, width, dtype=torch.int32, device=x.device)
    if batch == 0 or width == 0:  # nothing to launch (a grid dimension would be 0)
        return out, cu.zero_(), rows_out, valid.zero_().view(torch.bool), new_tok
    has_extra = extra is not None
    e = extra if has_extra else x
    block_b = max(16, 1 << (batch - 1).bit_length())
    block_c = min(256, max(16, 1 << (C - 1).bit_length()))
    grid = (batch, -(-width // _BLOCK_W), 1)
    ptrs = (x.data_ptr(), e.data_ptr(), dense_rows.data_ptr(), index.data_ptr(), count.data_ptr(), tok.data_ptr(),
            out.data_ptr(), cu.data_ptr(), rows_out.data_ptr(), valid.data_ptr(), new_tok.data_ptr())
    ints = (batch, L, width, C, rows, x.stride(0), e.stride(0), dense_rows.stride(0), index.stride(0), tok.stride(0),
            out.stride(0))
    aligned = not any(p & 15 for p in ptrs)
    key = (x.dtype, dev, has_extra, block_b, block_c, C, x.stride(0), e.stride(0)) if aligned else None
    launcher.launch(key, dev, grid, ptrs, ints, lambda: (x, e, dense_rows, index, count, tok, out, cu, rows_out,
                                                         valid, new_tok, *ints, has_extra, block_b, _BLOCK_W,
                                                         block_c), num_warps=4)
    return out, cu, rows_out, valid.view(torch.bool), new_tok


Tensor = torch.Tensor


@torch.library.custom_op("raggedvit::compact_packed", mutates_args=())
def _compact_packed_op(x: Tensor, extra: Tensor | None, dense_rows: Tensor, index: Tensor, count: Tensor, tok: Tensor,
                       width: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    out, cu, rows, valid, new_tok = compact_packed(x, extra, dense_rows, index, count, tok, width)
    return out, cu, rows, valid.view(torch.uint8), new_tok  # the wrapper views it as bool again


@_compact_packed_op.register_fake
def _(x, extra, dense_rows, index, count, tok, width):
    batch = dense_rows.shape[0]
    return (x.new_empty((batch * width, x.shape[1])), x.new_empty((batch + 1,), dtype=torch.int32),
            x.new_empty((batch, width), dtype=torch.int64), x.new_empty((batch, width), dtype=torch.uint8),
            x.new_empty((batch, width), dtype=torch.int32))
