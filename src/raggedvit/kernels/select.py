"""Triton kernel: Threshold-L2 token selection of one pruning stage, one program per image.

Reads the image's rows of the token buffer (``dense_rows[b, l]``, valid for ``l < lengths[b]``), computes
each candidate's fp32 L2 norm (positions ``>= P``; the prefix tokens are always kept), picks how many to
keep (``K`` for the fixed rule; else the count with ``norm >= T``, ``T`` absolute or ``ALPHA`` times the
image's mean candidate norm, clamped to ``[k_min, k_max]`` and the candidates available), and keeps the
``num`` best by norm (ties: lower position first, the stable-sort rule of :mod:`raggedvit.pruning`) in
their original order. Ranks come from pairwise comparisons (``O(L^2)`` per image, ``L <= 577``), the output
slots from a prefix sum, so no sort is needed. Writes ``index[b, :width]`` (prefix ``0..P-1``, kept
positions, then filler 0) and ``count[b] = P + num``. ``SCRATCH``: ``(B, BLOCK_L)`` fp32 workspace.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["B", "L", "W", "C", "P", "stride_x", "stride_dr", "K", "K_MIN", "K_MAX", "T",
                               "ALPHA"])
def l2_select_fwd(
    X, DENSE_ROWS, LENGTHS, INDEX, COUNT, SCRATCH,
    B, L, W, C, P, stride_x, stride_dr,
    K, K_MIN, K_MAX, T, ALPHA,
    FIXED: tl.constexpr,
    RELATIVE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0)
    pos = tl.arange(0, BLOCK_L)
    n_b = tl.load(LENGTHS + b).to(tl.int32)
    cand = (pos >= P) & (pos < n_b)
    rows = tl.load(DENSE_ROWS + b * stride_dr + pos, mask=cand, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        v = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=cand[:, None] & (cols[None, :] < C),
                    other=0.0).to(tl.float32)
        acc += tl.sum(v * v, axis=1)
    s = tl.sqrt(acc)
    avail = tl.maximum(n_b - P, 0)
    if FIXED:
        num = tl.minimum(avail, K)
    else:
        if RELATIVE:
            thr = ALPHA * (tl.sum(tl.where(cand, s, 0.0), axis=0) / tl.maximum(avail, 1).to(tl.float32))
        else:
            thr = T
        passing = tl.sum((cand & (s >= thr)).to(tl.int32), axis=0)
        num = tl.minimum(tl.minimum(tl.maximum(passing, K_MIN), K_MAX), avail)
    # rank[i] = candidates j better than i (higher norm, or equal norm and lower position); the norms are
    # read back from SCRATCH so that every comparison sees bit-identical values
    tl.store(SCRATCH + b * BLOCK_L + pos, s)
    tl.debug_barrier()
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        cj = (js >= P) & (js < n_b)
        sj = tl.load(SCRATCH + b * BLOCK_L + js, mask=cj, other=0.0)
        better = (sj[None, :] > s[:, None]) | ((sj[None, :] == s[:, None]) & (js[None, :] < pos[:, None]))
        rank += tl.sum((better & cj[None, :]).to(tl.int32), axis=1)
    keep = cand & (rank < num)
    slot = P + tl.cumsum(keep.to(tl.int32), axis=0) - 1
    count = P + num
    tl.store(INDEX + b * W + pos, tl.where(pos < P, pos, 0).to(tl.int64), mask=(pos < W) & ((pos < P) | (pos >= count)))
    tl.store(INDEX + b * W + slot, pos.to(tl.int64), mask=keep)
    tl.store(COUNT + b, count.to(tl.int64))


@triton.jit(do_not_specialize=["B", "L", "W", "C", "P", "stride_s", "stride_y", "stride_dr", "K", "K_MIN", "K_MAX",
                               "MASS"])
def evit_select_fwd(
    SCORE, Y, DENSE_ROWS, LENGTHS, INDEX, COUNT, EXTRA,
    B, L, W, C, P, stride_s, stride_y, stride_dr,
    K, K_MIN, K_MAX, MASS,
    FIXED: tl.constexpr,
    FUSE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    """EViT selection of one image per program: ranks by CLS attention ``SCORE[b, l]`` (descending, ties:
    lower position first), ``K`` kept (fixed) or the shortest best-first prefix holding ``MASS`` of the
    attention (clamped), kept tokens written best first, then the fused token (index ``L``, value
    ``EXTRA[b] = sum of score * y`` over the dropped candidates, fp32) when ``FUSE`` and something was dropped.
    """
    b = tl.program_id(0)
    pos = tl.arange(0, BLOCK_L)
    n_b = tl.load(LENGTHS + b).to(tl.int32)
    cand = (pos >= P) & (pos < n_b)
    a = tl.load(SCORE + b * stride_s + pos, mask=cand, other=0.0).to(tl.float32)
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)
    before = tl.zeros([BLOCK_L], dtype=tl.float32)  # attention mass of the better candidates
    for j0 in range(0, L, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        cj = (js >= P) & (js < n_b)
        aj = tl.load(SCORE + b * stride_s + js, mask=cj, other=0.0).to(tl.float32)
        better = ((aj[None, :] > a[:, None]) | ((aj[None, :] == a[:, None]) & (js[None, :] < pos[:, None]))) \
            & cj[None, :]
        rank += tl.sum(better.to(tl.int32), axis=1)
        if not FIXED:
            before += tl.sum(tl.where(better, aj[None, :], 0.0), axis=1)
    avail = tl.maximum(n_b - P, 0)
    if FIXED:
        num = tl.minimum(avail, K)
    else:
        target = MASS * tl.sum(a, axis=0)
        passing = tl.sum((cand & (before < target)).to(tl.int32), axis=0)
        num = tl.minimum(tl.minimum(tl.maximum(passing, K_MIN), K_MAX), avail)
    keep = cand & (rank < num)
    has_extra = FUSE & (num < avail)
    count = P + num + has_extra.to(tl.int32)
    filler = tl.where(pos < P, pos, tl.where(has_extra & (pos == P + num), L, 0))
    tl.store(INDEX + b * W + pos, filler.to(tl.int64), mask=(pos < W) & ((pos < P) | (pos >= P + num)))
    tl.store(INDEX + b * W + P + rank, pos.to(tl.int64), mask=keep)
    tl.store(COUNT + b, count.to(tl.int64))
    if FUSE:
        drop = cand & (rank >= num)
        rows = tl.load(DENSE_ROWS + b * stride_dr + pos, mask=drop, other=0).to(tl.int64)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            v = tl.load(Y + rows[:, None] * stride_y + cols[None, :], mask=drop[:, None] & (cols[None, :] < C),
                        other=0.0).to(tl.float32)
            e = tl.sum(v * tl.where(drop, a, 0.0)[:, None], axis=0)
            tl.store(EXTRA + b * C + cols, e.to(EXTRA.dtype.element_ty), mask=cols < C)
