"""``l2_select``: Threshold-L2 selection of one pruning stage (norms, count, ranks, slots) in one launch.

The torch path (:mod:`raggedvit.pruning.threshold_l2`) spends about a dozen small ops per stage (norm,
dense gather, masks, two sorts, sums, clamps); this op does the same selection in one Triton launch
reading the token rows directly. See :mod:`raggedvit.kernels.select`.
"""

from __future__ import annotations

import torch

from ..kernels.select import l2_select_fwd
from .launch import DirectLauncher, raw_stream

launcher = DirectLauncher(l2_select_fwd, "l2_select")
_BIG = 1 << 30


def l2_select(x: torch.Tensor, dense_rows: torch.Tensor, lengths: torch.Tensor, num_prefix: int, width: int, *,
              k: int | None = None, threshold: float | None = None, alpha: float | None = None, k_min: int = 1,
              k_max: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold-L2 keep decisions of a ragged batch.

    Args:
        x: ``(rows, C)`` token buffer, last stride 1 (the block input, pre-LayerNorm).
        dense_rows: ``(B, L)`` int64 row of every position (last stride 1); ``lengths``: ``(B,)`` int64.
        num_prefix: prefix tokens ``P`` (always kept, never scored).
        width: host bound on the output count (``P + k`` for the fixed rule).
        k: fixed rule: keep the ``k`` best candidates. Otherwise exactly one of ``threshold`` (absolute) and
            ``alpha`` (times the image's mean candidate norm), with ``k_min`` / ``k_max`` clamps.

    Returns:
        ``(index, count)``: int64 ``(B, width)`` kept positions in original order (prefix first, filler 0
        past ``count``) and int64 ``(B,)`` ``P + kept``. Same decisions as
        :func:`raggedvit.pruning.threshold_l2.select_topk` / ``select_threshold`` up to fp32 rounding of
        the norms. No host sync; CUDA tensors, or CPU tensors under the Triton interpreter.
    """
    fixed = k is not None
    if not fixed and (threshold is None) == (alpha is None):
        raise ValueError("l2_select: give k=, or exactly one of threshold= and alpha=")
    dev = x.get_device()
    if dev < 0 and not launcher.interpreted:
        raise ValueError("l2_select: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "raggedvit.pruning.threshold_l2")
    if x.stride(1) != 1 or dense_rows.stride(1) != 1 or dense_rows.dtype != torch.int64 \
            or lengths.dtype != torch.int64 or not lengths.is_contiguous():
        raise ValueError("l2_select: x and dense_rows need last stride 1; dense_rows, lengths int64")
    batch, L = dense_rows.shape
    C = x.shape[1]
    index = torch.empty(batch, width, dtype=torch.int64, device=x.device)
    count = torch.empty(batch, dtype=torch.int64, device=x.device)
    block_l = max(16, 1 << (L - 1).bit_length())
    block_c = max(8, min(64, 8192 // block_l))
    block_j = max(8, min(64, 8192 // block_l))
    scratch = torch.empty(batch, block_l, dtype=torch.float32, device=x.device)
    ptrs = (x.data_ptr(), dense_rows.data_ptr(), lengths.data_ptr(), index.data_ptr(), count.data_ptr(),
            scratch.data_ptr())
    ints = (batch, L, width, C, num_prefix, x.stride(0), dense_rows.stride(0), k or 0, k_min,
            _BIG if k_max is None else k_max, float(threshold or 0.0), float(alpha or 0.0))
    flags = (fixed, alpha is not None, block_l, block_c, block_j)
    key = (x.dtype, dev, flags) if not any(p & 15 for p in ptrs) else None
    entry = launcher.cache.get(key) if key is not None else None
    if entry is not None and launcher.usable(dev):
        call, prefix, constant = entry
        call(batch, 1, 1, raw_stream(dev), *prefix, *ptrs, *ints, *constant)
        launcher.direct_launches += 1
    else:
        launcher.launch_jit(key, dev, (batch, 1, 1), (x, dense_rows, lengths, index, count, scratch, *ints, *flags),
                            n_per_call=len(ptrs) + len(ints), num_warps=4)
    return index, count
