"""One-launch selections: ``l2_select`` (Threshold-L2) and ``evit_select`` (EViT, fused token included).

The torch paths (:mod:`raggedvit.pruning.threshold_l2`, :mod:`raggedvit.pruning.evit`) spend a dozen small
ops per stage (norms, dense gathers, masks, sorts, cumsums, clamps, a batched matmul for the fused token);
each op here does the same selection in one Triton launch, ranking by pairwise comparisons (stable tie
rule) instead of sorting. See :mod:`raggedvit.kernels.select`.
"""

from __future__ import annotations

import torch

from ..kernels.select import evit_select_fwd, l2_select_fwd
from .launch import DirectLauncher, raw_stream

launcher = DirectLauncher(l2_select_fwd, "l2_select")
evit_launcher = DirectLauncher(evit_select_fwd, "evit_select")
_BIG = 1 << 30


def _launch(lau: DirectLauncher, dev: int, batch: int, tensors: tuple, ints: tuple, flags: tuple,
            dtype: torch.dtype) -> None:
    """One program per image; the direct path once the key (dtype, device, constexprs, alignment) is cached."""
    ptrs = tuple(t.data_ptr() for t in tensors)
    key = (dtype, dev, flags) if not any(p & 15 for p in ptrs) else None
    entry = lau.cache.get(key) if key is not None else None
    if entry is not None and lau.usable(dev):
        call, prefix, constant = entry
        call(batch, 1, 1, raw_stream(dev), *prefix, *ptrs, *ints, *constant)
        lau.direct_launches += 1
    else:
        lau.launch_jit(key, dev, (batch, 1, 1), (*tensors, *ints, *flags), n_per_call=len(ptrs) + len(ints),
                       num_warps=4)


def _blocks(L: int) -> tuple[int, int]:
    block_l = max(16, 1 << (L - 1).bit_length())
    return block_l, max(8, min(64, 8192 // block_l))


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
    block_l, block_c = _blocks(L)
    scratch = torch.empty(batch, block_l, dtype=torch.float32, device=x.device)
    ints = (batch, L, width, C, num_prefix, x.stride(0), dense_rows.stride(0), k or 0, k_min,
            _BIG if k_max is None else k_max, float(threshold or 0.0), float(alpha or 0.0))
    _launch(launcher, dev, batch, (x, dense_rows, lengths, index, count, scratch), ints,
            (fixed, alpha is not None, block_l, block_c, block_c), x.dtype)
    return index, count


def evit_select(score: torch.Tensor, y: torch.Tensor, dense_rows: torch.Tensor, lengths: torch.Tensor,
                num_prefix: int, width: int, *, k: int | None = None, mass: float | None = None, fuse: bool = True,
                k_min: int = 1, k_max: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """EViT keep decisions (and fused token) of a ragged batch.

    Args:
        score: ``(B, L)`` fp32 head-mean CLS attention (last stride 1).
        y: ``(rows, C)`` post-attention token buffer (the fused token's values), last stride 1.
        dense_rows: ``(B, L)`` int64 row of every position (last stride 1); ``lengths``: ``(B,)`` int64.
        num_prefix: prefix tokens ``P`` (always kept first).
        width: host bound on the output count (see :func:`raggedvit.pruning.evit.select_topk` / ``select_mass``).
        k: fixed rule, ``k`` kept candidates; else ``mass`` in (0, 1] with ``k_min`` / ``k_max`` clamps.
        fuse: append the fused token (index ``L``) when something was dropped.

    Returns:
        ``(index, count, extra)``: int64 ``(B, width)`` (prefix, kept best first, the fused token, filler 0),
        int64 ``(B,)`` and ``(B, C)`` fused tokens in ``y.dtype`` (None without ``fuse``). Same decisions as
        the torch functions up to fp32 rounding of the attention-mass sums. No host sync.
    """
    fixed = k is not None
    if fixed == (mass is not None):
        raise ValueError("evit_select: give exactly one of k= and mass=")
    dev = y.get_device()
    if dev < 0 and not evit_launcher.interpreted:
        raise ValueError("evit_select: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "raggedvit.pruning.evit")
    if score.dtype != torch.float32 or score.stride(1) != 1 or y.stride(1) != 1 or dense_rows.stride(1) != 1 \
            or dense_rows.dtype != torch.int64 or lengths.dtype != torch.int64 or not lengths.is_contiguous():
        raise ValueError("evit_select: score fp32, dense_rows and lengths int64, last strides 1")
    batch, L = dense_rows.shape
    C = y.shape[1]
    index = torch.empty(batch, width, dtype=torch.int64, device=y.device)
    count = torch.empty(batch, dtype=torch.int64, device=y.device)
    extra = torch.empty(batch, C, dtype=y.dtype, device=y.device) if fuse else None
    block_l, block_c = _blocks(L)
    ints = (batch, L, width, C, num_prefix, score.stride(0), y.stride(0), dense_rows.stride(0), k or 0, k_min,
            _BIG if k_max is None else k_max, float(mass or 0.0))
    tensors = (score, y, dense_rows, lengths, index, count, extra if fuse else count)
    _launch(evit_launcher, dev, batch, tensors, ints, (fixed, fuse, block_l, block_c, block_c), y.dtype)
    return index, count, extra
