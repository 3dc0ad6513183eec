"""Triton kernel: bidirectional softmax attention over packed ragged sequences.

Layout (flash-attn varlen conventions): q, k, v, o are ``(total_rows, heads, head_dim)`` with the last
stride 1; sequence ``b`` owns rows ``cu_seqlens[b] .. cu_seqlens[b + 1]``. Each program owns one
(query-tile stride, sequence, head) triple and walks its query tiles with a grid-stride loop, so the
grid size (from the host-side ``max_seqlen`` bound) only sets the parallelism: a sequence longer than
the bound is still computed exactly. Lengths are read from ``cu_seqlens`` on the device and are never
compile-time constants, so one compiled kernel serves every batch composition and a CUDA graph that
captured it stays correct when the lengths change.

Offsets are clamped on the device (:func:`_offsets`): sequence ``b`` owns rows ``c[b] .. c[b + 1]`` with
``c[i] = min(max(0, cu_seqlens[0], ..., cu_seqlens[i]), total_rows)``, so malformed offsets (negative,
decreasing, past the rows) give empty or truncated sequences that never overlap, and no program touches a
row past ``total_rows``. The grid's last "sequence" slot (``program_id(1) == num_programs(1) - 1``)
zero-fills the rows outside every sequence (before ``c[0]`` and from ``c[batch]`` on) so that every output
row is defined.

dtypes: fp16, bf16 (fp32 accumulation) and fp32 (IEEE fp32 dot products). Under the Triton interpreter
(CPU tests) bf16 products are formed in fp32 (``UPCAST_DOT``), because the interpreter's bf16 ``tl.dot``
is wrong; bf16 x bf16 products are exact in fp32, so only the summation order differs. Head dims: any multiple of 8
from 16 to 128 (``BLOCK_D`` is the next power of two; padded lanes are masked).

Optional per-key bias (``HAS_BIAS``): ``KEY_BIAS`` is a ``(total_rows,)`` fp32 tensor added to the logit of
every key row, in natural-log units after the softmax scale (``softmax(q k^T * scale + bias)``, ToMe's
proportional attention with ``bias = log(token size)``); the kernel works in base 2, so it adds
``bias * log2(e)``. Without it (``HAS_BIAS`` False) ``KEY_BIAS`` is any pointer and is never read.
"""

import triton
import triton.language as tl

OFFSETS_BLOCK = tl.constexpr(128)  # offsets read per step of the prefix maximum (batches < 128: one step)


@triton.jit
def _offsets(CU_SEQLENS, b, last, total_rows):
    """``(c[b], c[b + 1])`` (``(c[last], c[last])`` for ``b == last``) of the clamped offsets
    ``c[i] = min(max(0, cu[0], ..., cu[i]), total_rows)`` of ``cu = CU_SEQLENS[0 .. last]``.

    A prefix maximum: while ``b < OFFSETS_BLOCK`` it costs the loads of the first block and of ``cu[b + 1]``
    (issued together) and one block-wide reduction."""
    offs = tl.arange(0, OFFSETS_BLOCK)
    nxt = tl.load(CU_SEQLENS + tl.minimum(b + 1, last))
    lo = tl.max(tl.load(CU_SEQLENS + offs, mask=offs <= b, other=0), axis=0)
    for i0 in range(OFFSETS_BLOCK, b + 1, OFFSETS_BLOCK):
        i = i0 + offs
        lo = tl.maximum(lo, tl.max(tl.load(CU_SEQLENS + i, mask=i <= b, other=0), axis=0))
    lo = tl.maximum(lo, 0)
    return tl.minimum(lo, total_rows), tl.minimum(tl.maximum(lo, nxt), total_rows)


@triton.jit(do_not_specialize=["total_rows"])
def ragged_attention_fwd(
    Q,
    K,
    V,
    O,
    CU_SEQLENS,
    KEY_BIAS,  # (total_rows,) fp32 per-key logit bias (natural log units); read only when HAS_BIAS
    total_rows,  # rows of Q, K, V and O (host int): offsets are clamped to it
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_FP32: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only: its bf16 tl.dot is wrong, so multiply in fp32 (exact products)
    HAS_BIAS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_h = tl.program_id(2).to(tl.int64)
    tail = tl.num_programs(1) - 1
    m_step = tl.num_programs(0) * BLOCK_M

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    start, end = _offsets(CU_SEQLENS, pid_b, tail, total_rows)
    if pid_b == tail:
        # Zero-fill the rows outside every sequence (capacity buffers, CUDA graphs, malformed offsets):
        # [0, c[0]) and [c[batch], total_rows). Defined, never NaN.
        zeros = tl.zeros([BLOCK_M, BLOCK_D], dtype=O.dtype.element_ty)
        head = tl.minimum(tl.maximum(tl.load(CU_SEQLENS), 0), total_rows)
        for m0 in range(pid_m * BLOCK_M, head, m_step):
            rows = (m0 + offs_m).to(tl.int64)
            o_ptrs = O + rows[:, None] * stride_ot + pid_h * stride_oh + offs_d[None, :]
            tl.store(o_ptrs, zeros, mask=(rows[:, None] < head) & mask_d[None, :])
        for m0 in range(pid_m * BLOCK_M, total_rows - start, m_step):
            rows = start.to(tl.int64) + m0 + offs_m
            o_ptrs = O + rows[:, None] * stride_ot + pid_h * stride_oh + offs_d[None, :]
            tl.store(o_ptrs, zeros, mask=(rows[:, None] < total_rows) & mask_d[None, :])
    else:
        seqlen = end - start
        row0 = start.to(tl.int64)
        q_base = Q + row0 * stride_qt + pid_h * stride_qh
        k_base = K + row0 * stride_kt + pid_h * stride_kh
        v_base = V + row0 * stride_vt + pid_h * stride_vh
        o_base = O + row0 * stride_ot + pid_h * stride_oh
        for m0 in range(pid_m * BLOCK_M, seqlen, m_step):
            rows = m0 + offs_m
            row_ok = rows < seqlen
            q = tl.load(
                q_base + rows[:, None].to(tl.int64) * stride_qt + offs_d[None, :],
                mask=row_ok[:, None] & mask_d[None, :],
                other=0.0,
            )
            m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
            l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
            for n0 in range(0, seqlen, BLOCK_N):
                cols = n0 + offs_n
                col_ok = cols < seqlen
                kt = tl.load(
                    k_base + cols[None, :].to(tl.int64) * stride_kt + offs_d[:, None],
                    mask=col_ok[None, :] & mask_d[:, None],
                    other=0.0,
                )
                if IS_FP32:
                    qk = tl.dot(q, kt, input_precision="ieee")
                elif UPCAST_DOT:
                    qk = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
                else:
                    qk = tl.dot(q, kt)
                if HAS_BIAS:
                    kb = tl.load(KEY_BIAS + row0 + cols, mask=col_ok, other=0.0).to(tl.float32)
                    qk = tl.where(col_ok[None, :], qk * qk_scale + kb[None, :] * 1.4426950408889634, float("-inf"))
                else:
                    qk = tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                p = tl.exp2(qk - m_new[:, None])
                alpha = tl.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(
                    v_base + cols[:, None].to(tl.int64) * stride_vt + offs_d[None, :],
                    mask=col_ok[:, None] & mask_d[None, :],
                    other=0.0,
                )
                if IS_FP32:
                    pv = tl.dot(p, v, input_precision="ieee")
                elif UPCAST_DOT:
                    pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
                else:
                    pv = tl.dot(p.to(v.dtype), v)
                acc = acc * alpha[:, None] + pv
                m_i = m_new
            acc = acc / l_i[:, None]
            tl.store(
                o_base + rows[:, None].to(tl.int64) * stride_ot + offs_d[None, :],
                acc.to(O.dtype.element_ty),
                mask=row_ok[:, None] & mask_d[None, :],
            )
