"""``tome_merge``: ToMe's bipartite matching, merge decision, output order and size-weighted merge for every
image of a dense batch in three launches (matching over tiles of A rows, and below ``SPLIT_BELOW_BATCH`` over
chunks of B columns too; the decision per image; the merge over tiles of rows, and there chunks of channels).

The torch version (:func:`raggedvit.pruning.tome.bipartite_merge`, the reference) is about 35 small ops per
block (normalisation, a batched matmul, two sorts, gathers, scatters), a few microseconds each even in a CUDA
graph, in every one of the twelve blocks. See :mod:`raggedvit.kernels.tome`. Registered as
``torch.ops.raggedvit.tome_merge`` for ``torch.compile`` (see :mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

import torch

from ..kernels.tome import tome_apply_fwd, tome_decide_fwd, tome_match_fwd
from .launch import DirectLauncher
from .library import is_compiling

match_launcher = DirectLauncher(tome_match_fwd, "tome_match")
decide_launcher = DirectLauncher(tome_decide_fwd, "tome_decide")
apply_launcher = DirectLauncher(tome_apply_fwd, "tome_apply")
launchers = (match_launcher, decide_launcher, apply_launcher)
launcher = match_launcher  # the one the interpreter check and the tests' launch counts look at
# Tiles (H200 sweeps, benchmarks/results/tome-kernels-sweep-nvidia-h200-*): match 64 A rows x 32 B columns per
# tile, 4 warps; apply 16 pairs x 32 A rows, 4 warps (the fastest at batch 64, 20261130.log). From batch 128
# (_BIG_BATCH) the grid fills the GPU with fewer, larger tiles: match 128 A rows (8 warps), apply 8 pairs x 64
# A rows (2 warps): at batch 256 41.3 / 50.4 us against 81.8 / 61.9 (20261201-*.log)
_BLOCK_J = 32
_SMALL = dict(block_m=64, match_warps=4, block_p=16, block_i=32, apply_warps=4)
_BIG = dict(block_m=128, match_warps=8, block_p=8, block_i=64, apply_warps=2)
_BIG_BATCH = 128
# Below this batch the grid is a few programs per image (2 match tiles and 7 merge tiles at L = 197, batch 1),
# each walking every B column or every channel chunk in turn; there each program takes one chunk of B columns
# (the decision kernel then takes the best of the chunks) and one chunk of channels. 0: never. H200, ViT-Tiny
# fp16, whole ToMe forward in a CUDA graph, split against not: r = 4 601 / 792 us at batch 1, 747 / 915 at 8,
# 1,754 / 1,704 at 64; adaptive 820 / 1,025, 1,007 / 1,223, 2,300 / 2,184 (live-rows-ab-tomesplit-*-0629)
SPLIT_BELOW_BATCH = 64


def _fail(msg: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"tome_merge: {msg}")


def tome_merge(metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor | None, lengths: torch.Tensor | None,
               num_prefix: int, *, r: int, threshold: float | None = None, r_min: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe merge of every image of a dense batch: what :func:`~raggedvit.pruning.tome.bipartite_merge`
    computes, in three kernels.

    Args:
        metric: ``(B, L, D)`` matching features (the block's head-mean keys), or ``(B, L, H, D)`` per-head keys
            (``H <= 16``), added over the heads in the kernel (the cosine similarity of the head sum is that of
            the head mean, up to rounding); last stride 1, ``D <= 256``.
        x: ``(B, L, C)`` tokens, last stride 1; fp16, bf16 or fp32.
        size: ``(B, L)`` fp32 token sizes (contiguous), or None (all 1).
        lengths: ``(B,)`` int64 tokens per image (clamped to ``[0, L]``), or None (every image holds ``L``).
        num_prefix: protected prefix tokens.
        r: host int >= 0. Fixed (``threshold`` None): every image merges ``min(r, (len - P) // 2)`` tokens.
            Adaptive: at most ``r``.
        threshold: adaptive: merge the A tokens whose best cosine similarity exceeds it, at least ``r_min``
            (and at most ``r`` and ``(len - P) // 2``).

    Returns:
        ``(index, count, values, size)``: ``index (B, L)`` int64 ToMe's output order (entries past ``count``
        are the dropped positions), ``count (B,)`` int64, ``values (B, L, C)`` in ``x.dtype`` (merged B
        tokens, other rows copied), ``size (B, L)`` fp32. No host sync; CUDA tensors, or CPU tensors under the
        Triton interpreter.
    """
    if not isinstance(metric, torch.Tensor) or not isinstance(x, torch.Tensor):
        _fail("metric and x must be tensors", TypeError)
    if metric.dim() not in (3, 4) or x.dim() != 3 or metric.shape[:2] != x.shape[:2]:
        _fail(f"need metric (B, L, D) or (B, L, H, D) and x (B, L, C), got {tuple(metric.shape)} and "
              f"{tuple(x.shape)}")
    B, L, C = x.shape
    D = metric.shape[-1]
    H = metric.shape[2] if metric.dim() == 4 else 1
    if not 1 <= H <= 16:
        _fail(f"metric needs 1 <= H <= 16 heads, got {H}")
    if not metric.is_floating_point() or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        _fail(f"metric must be floating point and x fp16/bf16/fp32, got {metric.dtype} and {x.dtype}", TypeError)
    if metric.stride(-1) != 1 or x.stride(2) != 1 or not 1 <= D <= 256 or C < 1:
        _fail(f"metric and x need last stride 1, 1 <= D <= 256 and C >= 1 (D = {D}, C = {C})")
    if size is not None and (size.dtype != torch.float32 or tuple(size.shape) != (B, L) or not size.is_contiguous()):
        _fail(f"size must be contiguous fp32 ({B}, {L})")
    if lengths is not None and (lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,)):
        _fail(f"lengths must be int64 ({B},)")
    for name, v, lo in (("num_prefix", num_prefix, 0), ("r", r, 0), ("r_min", r_min, 0)):
        if type(v) is not int or v < lo:
            _fail(f"{name} must be a Python int >= {lo}, got {v!r}", TypeError)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        _fail(f"threshold must be a number or None, got {threshold!r}", TypeError)
    dev = x.get_device()
    if any(t is not None and t.get_device() != dev for t in (metric, size, lengths)):
        _fail("metric, x, size and lengths must be on one device")
    if dev < 0 and not launcher.interpreted:
        _fail("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
              "raggedvit.pruning.tome.bipartite_merge")
    if is_compiling():
        return torch.ops.raggedvit.tome_merge(metric, x, size, lengths, num_prefix, r,
                                              None if threshold is None else float(threshold), r_min)
    index = torch.empty(B, L, dtype=torch.int64, device=x.device)
    count = torch.empty(B, dtype=torch.int64, device=x.device)
    values = torch.empty(B, L, C, dtype=x.dtype, device=x.device)
    new_size = torch.empty(B, L, dtype=torch.float32, device=x.device)
    if B == 0 or L == 0:
        return index, count.fill_(0), values, new_size
    LA = (L + 1) // 2
    lda = max(16, 1 << (LA - 1).bit_length())
    block_d = max(16, 1 << (D - 1).bit_length())
    block_c = min(64, max(16, 1 << (C - 1).bit_length()))
    wide = block_d > 64
    block_j = _BLOCK_J // 2 if wide else _BLOCK_J
    split = B < SPLIT_BELOW_BATCH
    LB = L // 2
    slots = max(1, -(-LB // block_j)) if split else 1  # B column chunks of the matching, one program each
    j_span = block_j if split else block_j * max(1, -(-LB // block_j))
    c_span = block_c if split else block_c * -(-C // block_c)
    node_max = torch.empty(B, slots, lda, dtype=torch.float32, device=x.device)
    best_j = torch.empty(B, slots, lda, dtype=torch.int32, device=x.device)
    dst = torch.empty(B, lda, dtype=torch.int32, device=x.device)
    R = min(r, max(L - num_prefix, 0) // 2)
    s = x if size is None else size
    ln = count if lengths is None else lengths
    aligned = not any(t.data_ptr() & 15 for t in (metric, x, s, ln, node_max, best_j, dst, index, count, values,
                                                 new_size))
    # 1. matching
    ptrs = (metric.data_ptr(), ln.data_ptr(), node_max.data_ptr(), best_j.data_ptr())
    ints = (L, num_prefix, metric.stride(0), metric.stride(1), metric.stride(2) if H > 1 else 0, j_span)
    tile = _BIG if B >= _BIG_BATCH else _SMALL
    block_m = 16 if wide else tile["block_m"]  # D > 64: the small tile (no register spills up to D = 256)
    warps = 8 if wide else tile["match_warps"]
    const = (D, H, lengths is not None, lda, block_m, block_d, block_j)
    match_launcher.launch((metric.dtype, dev, warps, *const) if aligned else None, dev,
                          (B, -(-LA // block_m), slots), ptrs, ints,
                          lambda: (metric, ln, node_max, best_j, *ints, *const), num_warps=warps)
    # 2. decision and output order
    ptrs = (ln.data_ptr(), node_max.data_ptr(), best_j.data_ptr(), dst.data_ptr(), index.data_ptr(),
            count.data_ptr())
    ints = (L, num_prefix, R, r, r_min, float(0.0 if threshold is None else threshold), slots)
    const = (lengths is not None, threshold is not None, lda, _BLOCK_J)
    decide_launcher.launch((dev, *const) if aligned else None, dev, (B, 1, 1), ptrs, ints,
                           lambda: (ln, node_max, best_j, dst, index, count, *ints, *const),
                           num_warps=4 if lda <= 128 else 8)
    # 3. the size-weighted merge
    ptrs = (x.data_ptr(), s.data_ptr(), dst.data_ptr(), values.data_ptr(), new_size.data_ptr())
    ints = (L, x.stride(0), x.stride(1), s.stride(0), values.stride(0), values.stride(1), c_span)
    const = (C, size is not None, lda, tile["block_p"], tile["block_i"], block_c)
    warps = tile["apply_warps"]
    apply_launcher.launch((x.dtype, dev, warps, *const) if aligned else None, dev,
                          (B, -(-LA // tile["block_p"]), -(-C // c_span)), ptrs, ints,
                          lambda: (x, s, dst, values, new_size, *ints, *const), num_warps=warps)
    return index, count, values, new_size


Tensor = torch.Tensor


@torch.library.custom_op("raggedvit::tome_merge", mutates_args=())
def _tome_merge_op(metric: Tensor, x: Tensor, size: Tensor | None, lengths: Tensor | None, num_prefix: int, r: int,
                   threshold: float | None, r_min: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tome_merge(metric, x, size, lengths, num_prefix, r=r, threshold=threshold, r_min=r_min)


@_tome_merge_op.register_fake
def _(metric, x, size, lengths, num_prefix, r, threshold, r_min):
    B, L, C = x.shape
    return (x.new_empty((B, L), dtype=torch.int64), x.new_empty((B,), dtype=torch.int64), x.new_empty((B, L, C)),
            x.new_empty((B, L), dtype=torch.float32))
