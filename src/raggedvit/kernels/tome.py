"""Triton kernel: one ToMe bipartite merge of every image of a dense ``(B, L, ...)`` batch, one program per
image (see :mod:`raggedvit.pruning.tome` for the algorithm and its tie rules).

Per image ``b`` (``len``: its length, ``P``: protected prefix positions; A: even positions, B: odd ones):

1. matching: every A row's best cosine similarity to a B column (``node_max``) and that column (``node_idx``,
   the lowest on ties), over the L2-normalised ``metric`` rows; rows and columns that are prefix or past
   ``len`` are ``-inf`` (IEEE fp32 products, column chunks of ``BLOCK_J``);
2. the rank of every A row in ``node_max``, descending, ties to the lower A position (a stable sort, counted:
   ``rank[i] = #{j: v[j] > v[i] or (v[j] == v[i] and j < i)}``); the first ``n`` merge, with ``n`` the
   fixed rule ``min(r, (len - P) // 2)`` or the adaptive one (the top ``R`` above ``threshold``, at least
   ``r_min``, at most ``(len - P) // 2``);
3. the output order (prefix, kept A tokens, B tokens, then the dropped ones: ToMe's ``cat([unm, dst])``) as
   ``index`` and ``count = len - n``;
4. the size-weighted merge (ToMe's ``merge_wavg``): every B row becomes ``sum(size * x) / sum(size)`` over
   itself and the A rows merged into it (a one-hot matrix product per chunk: deterministic), its size the
   sum; other rows are copied.

``node_max`` and ``dst`` (``node_idx`` where merged, else -1) are written to global scratch between the
steps; the program reads them back after a barrier.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["L", "P", "R", "r", "r_min", "stride_mb", "stride_ml", "stride_xb", "stride_xl",
                               "stride_sb", "stride_vb", "stride_vl"])  # per-call values of a cached kernel
def tome_merge_fwd(
    MET,  # (B, L, D) fp32 matching features
    X,  # (B, L, C) tokens
    SIZE,  # (B, L) fp32 sizes (HAS_SIZE)
    LEN,  # (B,) int64 lengths (HAS_LEN)
    NODE_MAX,  # (B, LA) fp32 out: best similarity of every A row
    DST,  # (B, LA) int32 out: the B column an A row merges into, -1 if it stays
    INDEX,  # (B, L) int64 out: output order
    COUNT,  # (B,) int64 out: tokens kept
    VALUES,  # (B, L, C) out: merged tokens (x.dtype)
    NEW_SIZE,  # (B, L) fp32 out
    L,
    P,
    R,  # min(r, (L - P) // 2)
    r,
    r_min,
    threshold,
    stride_mb,
    stride_ml,
    stride_xb,
    stride_xl,
    stride_sb,
    stride_vb,
    stride_vl,
    D: tl.constexpr,
    C: tl.constexpr,
    HAS_SIZE: tl.constexpr,
    HAS_LEN: tl.constexpr,
    ADAPTIVE: tl.constexpr,
    BLOCK_A: tl.constexpr,  # >= LA = ceil(L / 2)
    BLOCK_D: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    LA = (L + 1) // 2
    LB = L // 2
    n_len = L
    if HAS_LEN:
        n_len = tl.minimum(tl.maximum(tl.load(LEN + b), 0), L).to(tl.int32)
    a = tl.arange(0, BLOCK_A)
    pa = 2 * a
    dd = tl.arange(0, BLOCK_D)
    m_base = MET + b * stride_mb
    # 1. matching: normalised A rows against chunks of normalised B rows
    ma = tl.load(m_base + pa[:, None] * stride_ml + dd[None, :], mask=(pa[:, None] < L) & (dd[None, :] < D),
                 other=0.0).to(tl.float32)
    ma = tl.where((pa < L)[:, None], ma, 1.0)  # rows past L: any finite values (masked below), no 0 / 0
    ma = ma / tl.sqrt(tl.sum(ma * ma, axis=1))[:, None]
    row_ok = (pa >= P) & (pa < n_len)
    best = tl.full([BLOCK_A], float("-inf"), tl.float32)
    best_j = tl.zeros([BLOCK_A], tl.int32)
    for j0 in range(0, LB, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        pb = 2 * j + 1
        mb = tl.load(m_base + pb[:, None] * stride_ml + dd[None, :], mask=(pb[:, None] < L) & (dd[None, :] < D),
                     other=0.0).to(tl.float32)
        mb = tl.where((pb < L)[:, None], mb, 1.0)
        mb = mb / tl.sqrt(tl.sum(mb * mb, axis=1))[:, None]
        s = tl.dot(ma, tl.trans(mb), input_precision="ieee")  # (BLOCK_A, BLOCK_J)
        ok = row_ok[:, None] & ((pb >= P) & (pb < n_len))[None, :]
        s = tl.where(ok, s, float("-inf"))
        cmax = tl.max(s, axis=1)
        cidx = tl.min(tl.where(s == cmax[:, None], j[None, :], 2147483647), axis=1)
        better = cmax > best  # strictly: an earlier (lower) column keeps a tie
        best_j = tl.where(better, cidx, best_j)
        best = tl.where(better, cmax, best)
    nm_base = NODE_MAX + b * BLOCK_A
    tl.store(nm_base + a, best, mask=a < LA)
    tl.debug_barrier()
    # 2. stable descending rank, then how many merge
    rank = tl.zeros([BLOCK_A], tl.int32)
    for i0 in range(0, LA, BLOCK_J):
        i = i0 + tl.arange(0, BLOCK_J)
        v = tl.load(nm_base + i, mask=i < LA, other=float("-inf"))
        before = (v[None, :] > best[:, None]) | ((v[None, :] == best[:, None]) & (i[None, :] < a[:, None]))
        rank += tl.sum((before & (i[None, :] < LA)).to(tl.int32), axis=1)
    most = tl.maximum(n_len - P, 0) // 2
    if ADAPTIVE:
        above = tl.sum(((rank < R) & (best > threshold) & (a < LA)).to(tl.int32), axis=0)
        n = tl.minimum(tl.maximum(above, r_min), most)
    else:
        n = tl.minimum(r, most)
    merged = (rank < n) & (a < LA)
    tl.store(DST + b * BLOCK_A + a, tl.where(merged, best_j, -1), mask=a < LA)
    tl.store(COUNT + b, (n_len - n).to(tl.int64))
    # 3. output order: prefix, kept A, B, then the dropped positions (any order past count)
    jb = tl.arange(0, BLOCK_A)  # B columns (LB <= LA)
    pbv = 2 * jb + 1
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
    tl.debug_barrier()
    # 4. the size-weighted merge into the B rows; other rows copied
    x_base = X + b * stride_xb
    v_base = VALUES + b * stride_vb
    cc = tl.arange(0, BLOCK_C)
    for j0 in range(0, LB, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        pb = 2 * j + 1
        if HAS_SIZE:
            sb = tl.load(SIZE + b * stride_sb + pb, mask=pb < L, other=1.0)
        else:
            sb = tl.full([BLOCK_J], 1.0, tl.float32)
        den = sb
        for i0 in range(0, LA, BLOCK_J):
            i = i0 + tl.arange(0, BLOCK_J)
            dst = tl.load(DST + b * BLOCK_A + i, mask=i < LA, other=-1)
            if HAS_SIZE:
                sa = tl.load(SIZE + b * stride_sb + 2 * i, mask=i < LA, other=0.0)
            else:
                sa = tl.full([BLOCK_J], 1.0, tl.float32)
            den += tl.sum(tl.where(dst[None, :] == j[:, None], sa[None, :], 0.0), axis=1)
        tl.store(NEW_SIZE + b * L + pb, den, mask=pb < L)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cc
            xb = tl.load(x_base + pb[:, None] * stride_xl + c[None, :], mask=(pb[:, None] < L) & (c[None, :] < C),
                         other=0.0).to(tl.float32)
            acc = xb * sb[:, None]
            for i0 in range(0, LA, BLOCK_J):
                i = i0 + tl.arange(0, BLOCK_J)
                dst = tl.load(DST + b * BLOCK_A + i, mask=i < LA, other=-1)
                if HAS_SIZE:
                    sa = tl.load(SIZE + b * stride_sb + 2 * i, mask=i < LA, other=0.0)
                else:
                    sa = tl.full([BLOCK_J], 1.0, tl.float32)
                w = tl.where(dst[None, :] == j[:, None], sa[None, :], 0.0)  # (BLOCK_J rows of B, BLOCK_J of A)
                xa = tl.load(x_base + (2 * i)[:, None] * stride_xl + c[None, :],
                             mask=(i[:, None] < LA) & (c[None, :] < C), other=0.0).to(tl.float32)
                acc += tl.dot(w, xa, input_precision="ieee")
            tl.store(v_base + pb[:, None] * stride_vl + c[None, :], (acc / den[:, None]).to(VALUES.dtype.element_ty),
                     mask=(pb[:, None] < L) & (c[None, :] < C))
    for i0 in range(0, LA, BLOCK_J):  # A rows (and the prefix among them): copied, sizes kept
        i = i0 + tl.arange(0, BLOCK_J)
        p = 2 * i
        if HAS_SIZE:
            sa = tl.load(SIZE + b * stride_sb + p, mask=p < L, other=1.0)
        else:
            sa = tl.full([BLOCK_J], 1.0, tl.float32)
        tl.store(NEW_SIZE + b * L + p, sa, mask=p < L)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cc
            m = (p[:, None] < L) & (c[None, :] < C)
            tl.store(v_base + p[:, None] * stride_vl + c[None, :],
                     tl.load(x_base + p[:, None] * stride_xl + c[None, :], mask=m), mask=m)
