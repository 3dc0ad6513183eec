"""Triton kernels: the Threshold-L2 and EViT selections of one pruning stage, one program per image.

Threshold-L2 (:func:`l2_select_fwd`) reads each candidate's fp32 L2 norm through ``dense_rows[b, l]``
(valid for ``l < lengths[b]``; positions ``>= P``, the prefix tokens are always kept), picks how many to
keep (``K`` for the fixed rule; else the count with ``norm >= T``, ``T`` absolute or ``ALPHA`` times the
image's mean candidate norm, clamped to ``[k_min, k_max]`` and the candidates available), and keeps the
``num`` best by norm (ties: lower position first, the stable-sort rule of :mod:`raggedvit.pruning`) in
their original order. Ranks come from pairwise comparisons (``O(L^2)`` per image, ``L <= 577``), the output
slots from a prefix sum, so no sort is needed. Writes ``index[b, :width]`` (prefix ``0..P-1``, kept
positions, then filler 0) and ``count[b] = P + num``. EViT (:func:`evit_select_fwd`) and DynamicViT
(:func:`best_first_select_fwd`) rank by score the same way and write the kept tokens best first; EViT's fused
token is split over the programs of a second grid axis (channel blocks).

Malformed metadata is clamped on load (:func:`_length`, :func:`_row`): ``lengths`` to ``[0, L]``, ``dense_rows``
to ``[0, R - 1]`` (``R``: the rows every row-indexed input has, a host int), and the kept count to the output
``width`` ``W`` (``num <= W - P``; no fused token without a free slot), so no program reads or writes past a
tensor.
"""

import triton
import triton.language as tl


@triton.jit
def _length(LENGTHS, b, L):
    """``LENGTHS[b]`` clamped to ``[0, L]`` (int32)."""
    return tl.minimum(tl.maximum(tl.load(LENGTHS + b), 0), L).to(tl.int32)


@triton.jit
def _row(DENSE_ROWS, b, stride_dr, idx, mask, R):
    """``DENSE_ROWS[b, idx]`` clamped to ``[0, R - 1]`` (0 where ``mask`` is false)."""
    return tl.minimum(tl.maximum(tl.load(DENSE_ROWS + b * stride_dr + idx, mask=mask, other=0), 0), R - 1)


@triton.jit(do_not_specialize=["B", "L", "W", "P", "R", "stride_dr", "K", "K_MIN", "K_MAX", "T", "ALPHA"])
def l2_select_fwd(
    NORMS, DENSE_ROWS, LENGTHS, INDEX, COUNT,
    B, L, W, P, R, stride_dr,
    K, K_MIN, K_MAX, T, ALPHA,
    FIXED: tl.constexpr,
    RELATIVE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, BLOCK_L)
    n_b = _length(LENGTHS, b, L)
    cand = (pos >= P) & (pos < n_b)
    rows = _row(DENSE_ROWS, b, stride_dr, pos, cand, R)
    s = tl.load(NORMS + rows, mask=cand, other=0.0)
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
    num = tl.minimum(num, W - P)  # never more slots than the output has
    # rank[i] = candidates j better than i (higher norm, or equal norm and lower position)
    rank = tl.zeros([BLOCK_L], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        js = j0 + tl.arange(0, BLOCK_J)
        cj = (js >= P) & (js < n_b)
        sj = tl.load(NORMS + _row(DENSE_ROWS, b, stride_dr, js, cj, R), mask=cj, other=0.0)
        better = (sj[None, :] > s[:, None]) | ((sj[None, :] == s[:, None]) & (js[None, :] < pos[:, None]))
        rank += tl.sum((better & cj[None, :]).to(tl.int32), axis=1)
    keep = cand & (rank < num)
    slot = P + tl.cumsum(keep.to(tl.int32), axis=0) - 1
    count = P + num
    tl.store(INDEX + b * W + pos, tl.where(pos < P, pos, 0).to(tl.int64), mask=(pos < W) & ((pos < P) | (pos >= count)))
    tl.store(INDEX + b * W + slot, pos.to(tl.int64), mask=keep)
    tl.store(COUNT + b, count.to(tl.int64))


@triton.jit
def _scores(SCORE, WEIGHT, DENSE_ROWS, b, idx, mask, stride_s, stride_dr, R, BY_ROW: tl.constexpr,
            HAS_WEIGHT: tl.constexpr):
    """fp32 scores of positions ``idx`` of image ``b`` (0 where ``mask`` is false)."""
    if BY_ROW or HAS_WEIGHT:
        rows = _row(DENSE_ROWS, b, stride_dr, idx, mask, R)
    if BY_ROW:
        a = tl.load(SCORE + rows * stride_s, mask=mask, other=0.0).to(tl.float32)
    else:
        a = tl.load(SCORE + b * stride_s + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        a = a * tl.load(WEIGHT + rows, mask=mask, other=0.0)
    return a


@triton.jit
def _slice(LENGTHS, L, P, BLOCK_I: tl.constexpr, BLOCK_L: tl.constexpr):
    """Prologue of an (image, slice) program: image ``b``, its slice ``ii`` of BLOCK_I positions, all
    positions ``js`` (one tile of BLOCK_L), and their candidate masks (past the prefix, before the length)."""
    b = tl.program_id(0).to(tl.int64)
    ii = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    js = tl.arange(0, BLOCK_L)
    n_b = _length(LENGTHS, b, L)
    return b, ii, js, (ii >= P) & (ii < n_b), (js >= P) & (js < n_b)


@triton.jit(do_not_specialize=["L", "P", "R", "stride_s", "stride_dr"])
def best_first_rank_fwd(SCORE, WEIGHT, DENSE_ROWS, LENGTHS, RANK, BEFORE, L, P, R, stride_s, stride_dr,
                        MASS_RULE: tl.constexpr, BY_ROW: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        BLOCK_I: tl.constexpr, BLOCK_L: tl.constexpr):
    """``RANK[b, i]``: candidates better than ``i`` (higher score, or equal score and lower position);
    ``BEFORE[b, i]`` (``MASS_RULE``): their score sum. One (image, slice of BLOCK_I positions) program
    compares its slice with every position in one tile."""
    b, ii, js, ci, cj = _slice(LENGTHS, L, P, BLOCK_I, BLOCK_L)
    ai = _scores(SCORE, WEIGHT, DENSE_ROWS, b, ii, ci, stride_s, stride_dr, R, BY_ROW, HAS_WEIGHT)
    aj = _scores(SCORE, WEIGHT, DENSE_ROWS, b, js, cj, stride_s, stride_dr, R, BY_ROW, HAS_WEIGHT)
    better = ((aj[None, :] > ai[:, None]) | ((aj[None, :] == ai[:, None]) & (js[None, :] < ii[:, None]))) & cj[None, :]
    tl.store(RANK + b * L + ii, tl.sum(better.to(tl.int32), axis=1), mask=ii < L)
    if MASS_RULE:
        tl.store(BEFORE + b * L + ii, tl.sum(tl.where(better, aj[None, :], 0.0), axis=1), mask=ii < L)


@triton.jit(do_not_specialize=["B", "L", "W", "C", "P", "R", "stride_s", "stride_y", "stride_dr", "K", "K_MIN",
                               "K_MAX", "MASS", "T"])
def best_first_select_fwd(
    SCORE, WEIGHT, Y, DENSE_ROWS, LENGTHS, RANK, BEFORE, INDEX, COUNT, EXTRA,
    B, L, W, C, P, R, stride_s, stride_y, stride_dr,
    K, K_MIN, K_MAX, MASS, T,
    RULE: tl.constexpr,  # 0: the K best; 1: attention mass MASS (EViT); 2: score > T (DynamicViT)
    BY_ROW: tl.constexpr,  # SCORE is per buffer row (row r at r * stride_s), else a (B, L) dense view
    HAS_WEIGHT: tl.constexpr,  # multiply the score by WEIGHT[row] (ATS: CLS attention x value norm)
    ASCENDING: tl.constexpr,  # write the kept tokens worst first (ATS order)
    FUSE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Best-first selection (EViT, DynamicViT) of one image per program, from the ranks (and better-score
    sums) of :func:`best_first_rank_fwd`: ``num`` kept by ``RULE`` (clamped to ``[K_MIN, K_MAX]`` and the
    candidates for rules 1 and 2), kept tokens written best first, then (``FUSE``) the fused token (index
    ``L``, value ``EXTRA[b] = sum of score * y`` over the dropped candidates, fp32) when something was
    dropped; the fused token's channels are split over the programs of the second grid axis.
    """
    b = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)  # channel block of the fused token; block 0 also writes index and count
    pos = tl.arange(0, BLOCK_L)
    n_b = _length(LENGTHS, b, L)
    cand = (pos >= P) & (pos < n_b)
    a = _scores(SCORE, WEIGHT, DENSE_ROWS, b, pos, cand, stride_s, stride_dr, R, BY_ROW, HAS_WEIGHT)
    rank = tl.load(RANK + b * L + pos, mask=cand, other=0)
    if RULE == 1:
        before = tl.load(BEFORE + b * L + pos, mask=cand, other=0.0)
    avail = tl.maximum(n_b - P, 0)
    if RULE == 0:
        num = tl.minimum(avail, K)
    else:
        if RULE == 1:
            passing = tl.sum((cand & (before < MASS * tl.sum(a, axis=0))).to(tl.int32), axis=0)
        else:
            passing = tl.sum((cand & (a > T)).to(tl.int32), axis=0)
        num = tl.minimum(tl.minimum(tl.maximum(passing, K_MIN), K_MAX), avail)
    num = tl.minimum(num, W - P)  # never more slots than the output has
    keep = cand & (rank < num)
    has_extra = FUSE & (num < avail) & (P + num < W)
    count = P + num + has_extra.to(tl.int32)
    if pid_c == 0:
        filler = tl.where(pos < P, pos, tl.where(has_extra & (pos == P + num), L, 0))
        tl.store(INDEX + b * W + pos, filler.to(tl.int64), mask=(pos < W) & ((pos < P) | (pos >= P + num)))
        slot = num - 1 - rank if ASCENDING else rank
        tl.store(INDEX + b * W + P + slot, pos.to(tl.int64), mask=keep)
        tl.store(COUNT + b, count.to(tl.int64))
    if FUSE:
        drop = cand & (rank >= num)
        rows = _row(DENSE_ROWS, b, stride_dr, pos, drop, R).to(tl.int64)
        w = tl.where(drop, a, 0.0)
        for c0 in range(pid_c * BLOCK_C, C, tl.num_programs(1) * BLOCK_C):  # this program's channel blocks
            cols = c0 + tl.arange(0, BLOCK_C)
            v = tl.load(Y + rows[:, None] * stride_y + cols[None, :], mask=drop[:, None] & (cols[None, :] < C),
                        other=0.0).to(tl.float32)
            e = tl.sum(v * w[:, None], axis=0)
            tl.store(EXTRA + b * C + cols, e.to(EXTRA.dtype.element_ty), mask=cols < C)


# ATS sampling in two launches (:func:`ats_rank_fwd`, :func:`ats_sample_fwd`), integer arithmetic as
# :func:`raggedvit.pruning.ats.select_sampling` (the same integers: decisions independent of the summation
# order and of GPU division rounding). Only the ranking is quadratic (fp32 / int32 tiles of an (image, slice)
# grid: no serial loops, a serial loop over 577 positions cost ~400 us per stage at batch 1 on an H100);
# the CDF, the sample hits and the output slots are linear passes over the ranks, one program per image.

_BIG = tl.constexpr(1 << 62)  # int64 sentinel above every scaled CDF value and sample point (pruning.ats._BIG)


@triton.jit(do_not_specialize=["L", "P", "R", "stride_s", "stride_dr", "Q"])
def ats_rank_fwd(SCORE, WEIGHT, DENSE_ROWS, LENGTHS, QS, PS, L, P, R, stride_s, stride_dr, Q,
                 HAS_WEIGHT: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_L: tl.constexpr):
    """Candidates in ascending significance order: ``QS[b, r]`` (int64) the integer significance and
    ``PS[b, r]`` (int32) the position of the candidate of rank ``r`` (ties: lower position first), for
    ``r < n`` (``n`` candidates; later ranks are not written). One (image, slice of BLOCK_I positions) program
    ranks its slice against all positions in one (BLOCK_I x BLOCK_L) fp32 tile, an int32 count per row.

    Significance ``SCORE[b, l] * WEIGHT[row]`` (fp32; ``SCORE[b, l]`` without ``HAS_WEIGHT``), as an integer
    ``floor(s * 2 ** (Q - E))``, ``2 ** (E - 1) <= max s < 2 ** E`` (exact steps:
    :func:`raggedvit.pruning.ats.fixed_point`). The integer is a non-decreasing function of ``s``, so
    ``QS[b, :n]`` is non-decreasing (:func:`ats_sample_fwd` uses it)."""
    b, ii, js, ci, cj = _slice(LENGTHS, L, P, BLOCK_I, BLOCK_L)
    si = _scores(SCORE, WEIGHT, DENSE_ROWS, b, ii, ci, stride_s, stride_dr, R, False, HAS_WEIGHT)
    sj = _scores(SCORE, WEIGHT, DENSE_ROWS, b, js, cj, stride_s, stride_dr, R, False, HAS_WEIGHT)
    lower = ((sj[None, :] < si[:, None]) | ((sj[None, :] == si[:, None]) & (js[None, :] < ii[:, None]))) & cj[None, :]
    rank = tl.sum(lower.to(tl.int32), axis=1)
    s_max = tl.max(tl.where(cj, sj, 0.0), axis=0)
    biased = tl.maximum(s_max.to(tl.float64).to(tl.int64, bitcast=True) >> 52, 1023 - 150)  # E + 1022
    scale = ((Q + 2045 - biased) << 52).to(tl.float64, bitcast=True)  # 2 ** (Q - E)
    qi = (si.to(tl.float64) * scale).to(tl.int64)  # exact product (a power of two), truncated: floor
    tl.store(QS + b * L + rank, qi, mask=ci)
    tl.store(PS + b * L + rank, ii, mask=ci)


@triton.jit(do_not_specialize=["L", "W", "P", "M"])
def ats_sample_fwd(QS, PS, LENGTHS, INDEX, COUNT, L, W, P, M, BLOCK_L: tl.constexpr):
    """The sampling of one image per program, linear in its ``n`` candidates (ranks ``r`` of
    :func:`ats_rank_fwd`): writes ``INDEX[b, :W]`` (prefix ``0..P-1``, the kept positions by ascending
    significance, filler 0) and ``COUNT[b] = min(P + kept, W)``.

    The official rule, in integers scaled by ``D (M - 1)`` (no rounding): CDF ``c_r = q_1 + ... + q_r``
    (``CDF - CDF[0]``), ``D = c_{n-1}`` (1 if 0), values ``v_r = g c_r`` (``g = max(M - 1, 1)``), sample points
    ``T_k = g c0 + k (D - c0)``, ``k < M`` (``T_0 = D`` when ``M == 1``), ``c0 = min{c_r > 0}`` (``D`` if none):
    ``y_k = y0 + k (1 - y0) / (M - 1)`` and ``F = c / D`` times ``D (M - 1)``. Each point picks the nearest
    value (the lower one on equal distance), each picked value its first rank.

    Per distinct value instead of per point: with ``lo < v < hi`` its neighbouring distinct values, a point
    ``T`` picks ``v`` iff ``lo < T <= v`` and ``v - T < T - lo`` (``2 T > v + lo``), or ``v < T <= hi`` and
    ``hi - T >= T - v`` (``2 T <= v + hi``); for integers that is ``T`` in ``(a, e]``, ``a = floor((v + lo) / 2)``
    (``-1`` without ``lo``: every ``T >= g c0 >= 1``), ``e = floor((v + hi) / 2)`` (no bound without ``hi``;
    beyond the top value, the all-zero case, the top value is the nearest as in the reference's clamped
    search). The points are an arithmetic progression, so the test is O(1): the first ``k`` with ``T_k > a``
    is ``0`` if ``T_0 > a``, else ``floor((a - T_0) / step) + 1`` (none if ``step == 0``); hit iff ``k < M`` and
    ``T_k <= e``. All operands are non-negative (``//`` is floor) and below ``2 D M < 2 ** 62``
    (:func:`raggedvit.pruning.ats.cdf_bits`).

    Neighbours from the ranks: ``q`` is non-decreasing, so equal CDF values (``q_r = 0``) only occur from
    rank 0 up to the last zero: rank ``r > 0`` repeats its predecessor's value iff ``q_r == 0`` (not a first
    rank, never kept), and a first rank ``r > 0`` has ``q_r, q_{r+1} > 0``: ``lo = c_r - q_r``,
    ``hi = c_r + q_{r+1}`` (none at the top rank). Rank 0 (value 0) has no ``lo`` and ``hi = c0`` (none if
    ``D == 0``)."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.arange(0, BLOCK_L)
    n = tl.maximum(_length(LENGTHS, b, L) - P, 0)  # candidates: ranks 0 .. n - 1
    live = r < n
    q = tl.load(QS + b * L + r, mask=live & (r > 0), other=0)  # rank 0's significance is not in c
    q_next = tl.load(QS + b * L + r + 1, mask=r + 1 < n, other=0)
    c = tl.cumsum(q, axis=0)
    d = tl.sum(q, axis=0)  # D = c at the top rank
    dp = tl.maximum(d, 1)
    c0 = tl.minimum(tl.min(tl.where(live & (c > 0), c, _BIG), axis=0), dp)
    g = tl.maximum(M - 1, 1).to(tl.int64)
    base = tl.where(M > 1, c0 * g, dp)  # T_0
    step = tl.where(M > 1, dp - c0, 0)  # T_{k+1} - T_k >= 0
    v = c * g
    a = tl.where(r == 0, -1, (v + (c - q) * g) // 2)
    has_hi = tl.where(r == 0, d > 0, r + 1 < n)
    e = tl.where(has_hi, (v + tl.where(r == 0, c0, c + q_next) * g) // 2, _BIG)
    k = tl.where(a < base, 0, tl.where(step > 0, (a - base) // tl.maximum(step, 1) + 1, M))
    t = base + tl.minimum(k, M - 1) * step  # the first point above a (if k < M)
    hit = live & ((r == 0) | (q > 0)) & (k < M) & (t <= e)
    slot = P + tl.cumsum(hit.to(tl.int32), axis=0) - 1
    # clamped: NaN significances (no total order) could leave a rank unwritten; never index past the image
    pos = tl.minimum(tl.maximum(tl.load(PS + b * L + r, mask=hit, other=0), 0), L - 1)
    tl.store(INDEX + b * W + slot, pos.to(tl.int64), mask=hit & (slot < W))
    count = tl.minimum(P + tl.sum(hit.to(tl.int32), axis=0), W)
    for w0 in range(0, W, BLOCK_L):
        ws = w0 + r
        tl.store(INDEX + b * W + ws, tl.where(ws < P, ws, 0).to(tl.int64), mask=(ws < W) & ((ws < P) | (ws >= count)))
    tl.store(COUNT + b, count.to(tl.int64))
