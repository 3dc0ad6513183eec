"""Triton kernels: one ToMe bipartite merge of every image of a dense ``(B, L, ...)`` batch (see
:mod:`raggedvit.pruning.tome` for the algorithm and its tie rules), in three launches that each spread an
image over several programs where the work allows.

Per image ``b`` (``len``: its length, ``P``: protected prefix positions; A: even positions, B: odd ones):

1. :func:`tome_match_fwd`, grid ``(B, cdiv(LA, BLOCK_M), S)``: every A row's best cosine similarity to a B
   column (``node_max``) and that column (``best_j``, the lowest on ties), over the L2-normalised ``metric``
   rows (a ``(B, L, H, D)`` metric: each row the sum of its ``H`` heads, added in head order), per *slot*:
   program ``(b, i, s)`` scans the B columns ``[s * J_SPAN, (s + 1) * J_SPAN)`` (``S = 1`` scans them all in
   one program; small batches split them so that more programs share the work); rows and columns that are
   prefix or past ``len`` are ``-inf`` (column chunks of ``BLOCK_J``;
   fp32 products on tensor cores as three TF32 products, ``tf32x3``: about fp32 accuracy and 5x faster on the H200
   than the FMA-pipe ``ieee`` dot, ``tome-kernels-sweep-nvidia-h200-20261130.log``);
2. :func:`tome_decide_fwd`, grid ``(B,)``: the best of the ``S`` slots (the lower slot, so the lower column,
   on ties), then the rank of every A row in ``node_max``, descending, ties to the
   lower A position (a stable sort, counted: ``rank[i] = #{j: v[j] > v[i] or (v[j] == v[i] and j < i)}``);
   the first ``n`` merge (``dst``: their B column, else -1), with ``n`` the fixed rule
   ``min(r, (len - P) // 2)`` or the adaptive one (the top ``R`` above ``threshold``, at least ``r_min``, at
   most ``(len - P) // 2``); the output order (prefix, kept A tokens, B tokens, then the dropped ones:
   ToMe's ``cat([unm, dst])``) as ``index`` and ``count = len - n``;
3. :func:`tome_apply_fwd`, grid ``(B, cdiv(LA, BLOCK_P), cdiv(C, C_SPAN))`` over pairs (A row ``2p``, B row
   ``2p + 1``) and spans of ``C_SPAN`` channels: the
   size-weighted merge (ToMe's ``merge_wavg``): every B row becomes ``sum(size * x) / sum(size)`` over
   itself and the A rows merged into it (one-hot products over the chunks of A rows that hold a merge into
   the tile: deterministic), its size the sum; A rows are copied.
"""

import triton
import triton.language as tl


@triton.jit
def _head_sum(ptr, rows, stride_ml, stride_mh, dd, L, D: tl.constexpr, H: tl.constexpr):
    """``(rows, BLOCK_D)`` fp32: the ``H`` heads of matching rows ``rows`` added in head order (0 past L or D)."""
    offs = rows[:, None] * stride_ml + dd[None, :]
    mask = (rows[:, None] < L) & (dd[None, :] < D)
    m = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for h in tl.static_range(1, H):
        m += tl.load(ptr + offs + h * stride_mh, mask=mask, other=0.0).to(tl.float32)
    return m


@triton.jit(do_not_specialize=["L", "P", "stride_mb", "stride_ml", "stride_mh", "J_SPAN"])  # per-call values
def tome_match_fwd(
    MET,  # (B, L, [H,] D) matching features: per row, the sum of H heads (H = 1: one vector)
    LEN,  # (B,) int64 lengths (HAS_LEN)
    NODE_MAX,  # (B, S, LDA) fp32 out: best similarity of every A row in each slot's columns
    BEST_J,  # (B, S, LDA) int32 out: its B column
    L,
    P,
    stride_mb,
    stride_ml,
    stride_mh,  # head stride (H > 1)
    J_SPAN,  # B columns per slot (a multiple of BLOCK_J; >= LB when S = 1)
    D: tl.constexpr,
    H: tl.constexpr,
    HAS_LEN: tl.constexpr,
    LDA: tl.constexpr,  # row stride of the scratch (>= LA = ceil(L / 2))
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    a = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.program_id(2)
    LA = (L + 1) // 2
    LB = L // 2
    n_len = L
    if HAS_LEN:
        n_len = tl.minimum(tl.maximum(tl.load(LEN + b), 0), L).to(tl.int32)
    pa = 2 * a
    dd = tl.arange(0, BLOCK_D)
    m_base = MET + b * stride_mb
    ma = _head_sum(m_base, pa, stride_ml, stride_mh, dd, L, D, H)
    ma = tl.where((pa < L)[:, None], ma, 1.0)  # rows past L: any finite values (masked below), no 0 / 0
    ma = ma / tl.sqrt(tl.sum(ma * ma, axis=1))[:, None]
    row_ok = (pa >= P) & (pa < n_len)
    best = tl.full([BLOCK_M], float("-inf"), tl.float32)
    best_j = tl.zeros([BLOCK_M], tl.int32)
    j_lo = slot * J_SPAN
    for j0 in range(j_lo, tl.minimum(LB, j_lo + J_SPAN), BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        pb = 2 * j + 1
        mb = _head_sum(m_base, pb, stride_ml, stride_mh, dd, L, D, H)
        mb = tl.where((pb < L)[:, None], mb, 1.0)
        mb = mb / tl.sqrt(tl.sum(mb * mb, axis=1))[:, None]
        s = tl.dot(ma, tl.trans(mb), input_precision="tf32x3")  # (BLOCK_M, BLOCK_J), about fp32-exact
        ok = row_ok[:, None] & ((pb >= P) & (pb < n_len))[None, :]
        s = tl.where(ok, s, float("-inf"))
        cmax = tl.max(s, axis=1)
        cidx = tl.min(tl.where(s == cmax[:, None], j[None, :], 2147483647), axis=1)
        better = cmax > best  # strictly: an earlier (lower) column keeps a tie
        best_j = tl.where(better, cidx, best_j)
        best = tl.where(better, cmax, best)
    out = (b * tl.num_programs(2) + slot) * LDA + a
    tl.store(NODE_MAX + out, best, mask=a < LA)
    tl.store(BEST_J + out, best_j, mask=a < LA)


@triton.jit
def _best_of_slots(NODE_MAX, BEST_J, base, i, n, S, LDA: tl.constexpr):
    """(best value, its column) of A rows ``i`` (``i < n`` valid) over ``S`` slots: the lower slot on ties."""
    best = tl.load(NODE_MAX + base + i, mask=i < n, other=float("-inf"))
    best_j = tl.load(BEST_J + base + i, mask=i < n, other=0)
    for s in range(1, S):
        v = tl.load(NODE_MAX + base + s * LDA + i, mask=i < n, other=float("-inf"))
        better = v > best
        best_j = tl.where(better, tl.load(BEST_J + base + s * LDA + i, mask=i < n, other=0), best_j)
        best = tl.where(better, v, best)
    return best, best_j


@triton.jit(do_not_specialize=["L", "P", "R", "r", "r_min", "S"])
def tome_decide_fwd(
    LEN,  # (B,) int64 lengths (HAS_LEN)
    NODE_MAX,  # (B, S, LDA) fp32
    BEST_J,  # (B, S, LDA) int32
    DST,  # (B, LDA) int32 out: the B column an A row merges into, -1 if it stays
    INDEX,  # (B, L) int64 out: output order
    COUNT,  # (B,) int64 out: tokens kept
    L,
    P,
    R,  # min(r, (L - P) // 2)
    r,
    r_min,
    threshold,
    S,  # slots of the matching
    HAS_LEN: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    LDA: tl.constexpr,  # a power of two >= LA
    BLOCK_J: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    LA = (L + 1) // 2
    n_len = L
    if HAS_LEN:
        n_len = tl.minimum(tl.maximum(tl.load(LEN + b), 0), L).to(tl.int32)
    a = tl.arange(0, LDA)
    pa = 2 * a
    base = b * S * LDA
    best, best_j = _best_of_slots(NODE_MAX, BEST_J, base, a, LA, S, LDA)
    # stable descending rank, then how many merge
    rank = tl.zeros([LDA], tl.int32)
    for i0 in range(0, LA, BLOCK_J):
        i = i0 + tl.arange(0, BLOCK_J)
        v, _ = _best_of_slots(NODE_MAX, BEST_J, base, i, LA, S, LDA)
        before = (v[None, :] > best[:, None]) | ((v[None, :] == best[:, None]) & (i[None, :] < a[:, None]))
        rank += tl.sum((before & (i[None, :] < LA)).to(tl.int32), axis=1)
    most = tl.maximum(n_len - P, 0) // 2
    if ADAPTIVE:
        above = tl.sum(((rank < R) & (best > threshold) & (a < LA)).to(tl.int32), axis=0)
        n = tl.minimum(tl.maximum(above, r_min), most)
    else:
        n = tl.minimum(r, most)
    merged = (rank < n) & (a < LA)
    tl.store(DST + b * LDA + a, tl.where(merged, best_j, -1), mask=a < LA)
    tl.store(COUNT + b, (n_len - n).to(tl.int64))
    # output order: prefix, kept A, B, then the dropped positions (any order past count)
    pbv = pa + 1  # B columns (LB <= LA)
    pre_a = (pa < P) & (pa < n_len)
    pre_b = (pbv < P) & (pbv < n_len)
    kept_a = (pa >= P) & (pa < n_len) & ~merged
    kept_b = (pbv >= P) & (pbv < n_len)
    drop_a = (pa < L) & ~pre_a & ~kept_a
    drop_b = (pbv < L) & ~pre_b & ~kept_b
    n_pre = tl.minimum(P, n_len)
    n_kept_a = tl.sum(kept_a.to(tl.int32), axis=0)
    n_kept = n_len - n
    n_drop_a = tl.sum(drop_a.to(tl.int32), axis=0)
    slot_a = tl.where(pre_a, pa, tl.where(kept_a, n_pre + tl.cumsum(kept_a.to(tl.int32), axis=0) - 1,
                                          n_kept + tl.cumsum(drop_a.to(tl.int32), axis=0) - 1))
    slot_b = tl.where(pre_b, pbv, tl.where(kept_b, n_pre + n_kept_a + tl.cumsum(kept_b.to(tl.int32), axis=0) - 1,
                                           n_kept + n_drop_a + tl.cumsum(drop_b.to(tl.int32), axis=0) - 1))
    i_base = INDEX + b * L
    tl.store(i_base + slot_a, pa.to(tl.int64), mask=pa < L)
    tl.store(i_base + slot_b, pbv.to(tl.int64), mask=pbv < L)


@triton.jit(do_not_specialize=["L", "stride_xb", "stride_xl", "stride_sb", "stride_vb", "stride_vl", "C_SPAN"])
def tome_apply_fwd(
    X,  # (B, L, C) tokens
    SIZE,  # (B, L) fp32 sizes (HAS_SIZE)
    DST,  # (B, LDA) int32
    VALUES,  # (B, L, C) out: merged tokens (x.dtype)
    NEW_SIZE,  # (B, L) fp32 out
    L,
    stride_xb,
    stride_xl,
    stride_sb,
    stride_vb,
    stride_vl,
    C_SPAN,  # channels per program along grid axis 2 (a multiple of BLOCK_C; >= C for one program)
    C: tl.constexpr,
    HAS_SIZE: tl.constexpr,
    LDA: tl.constexpr,
    BLOCK_P: tl.constexpr,  # pairs (A row 2p, B row 2p + 1) per program
    BLOCK_I: tl.constexpr,  # A rows per chunk of the merge scan
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_lo = tl.program_id(2) * C_SPAN
    first = c_lo == 0  # the sizes are written by the programs of the first channel span only
    LA = (L + 1) // 2
    pa = 2 * j
    pb = pa + 1
    x_base = X + b * stride_xb
    v_base = VALUES + b * stride_vb
    cc = tl.arange(0, BLOCK_C)
    if HAS_SIZE:
        sa_own = tl.load(SIZE + b * stride_sb + pa, mask=pa < L, other=1.0)
        sb = tl.load(SIZE + b * stride_sb + pb, mask=pb < L, other=1.0)
    else:
        sa_own = tl.full([BLOCK_P], 1.0, tl.float32)
        sb = tl.full([BLOCK_P], 1.0, tl.float32)
    tl.store(NEW_SIZE + b * L + pa, sa_own, mask=(pa < L) & first)
    den = sb
    for i0 in range(0, LA, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        dst = tl.load(DST + b * LDA + i, mask=i < LA, other=-1)
        if HAS_SIZE:
            sa = tl.load(SIZE + b * stride_sb + 2 * i, mask=i < LA, other=0.0)
        else:
            sa = tl.full([BLOCK_I], 1.0, tl.float32)
        den += tl.sum(tl.where(dst[None, :] == j[:, None], sa[None, :], 0.0), axis=1)
    tl.store(NEW_SIZE + b * L + pb, den, mask=(pb < L) & first)
    for c0 in range(c_lo, tl.minimum(C, c_lo + C_SPAN), BLOCK_C):
        c = c0 + cc
        cm = c[None, :] < C
        xa_own = tl.load(x_base + pa[:, None] * stride_xl + c[None, :], mask=(pa[:, None] < L) & cm)
        tl.store(v_base + pa[:, None] * stride_vl + c[None, :], xa_own, mask=(pa[:, None] < L) & cm)
        xb = tl.load(x_base + pb[:, None] * stride_xl + c[None, :], mask=(pb[:, None] < L) & cm,
                     other=0.0).to(tl.float32)
        acc = xb * sb[:, None]
        for i0 in range(0, LA, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            dst = tl.load(DST + b * LDA + i, mask=i < LA, other=-1)
            hit = dst[None, :] == j[:, None]  # (BLOCK_P B rows, BLOCK_I A rows)
            if tl.sum(hit.to(tl.int32)) > 0:  # most chunks merge nothing into this tile
                if HAS_SIZE:
                    sa = tl.load(SIZE + b * stride_sb + 2 * i, mask=i < LA, other=0.0)
                else:
                    sa = tl.full([BLOCK_I], 1.0, tl.float32)
                # only the A rows that merge somewhere: rows past an image's length may hold anything (NaN
                # included), and 0 * NaN in the one-hot product would poison the B rows
                xa = tl.load(x_base + (2 * i)[:, None] * stride_xl + c[None, :], mask=(dst[:, None] >= 0) & cm,
                             other=0.0).to(tl.float32)
                acc += tl.dot(tl.where(hit, sa[None, :], 0.0), xa, input_precision="ieee")
        tl.store(v_base + pb[:, None] * stride_vl + c[None, :], (acc / den[:, None]).to(VALUES.dtype.element_ty),
                 mask=(pb[:, None] < L) & cm)
