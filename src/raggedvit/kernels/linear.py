"""Triton kernel: ``y = act(x @ w.T + b)`` on the live rows of a fixed-capacity token buffer.

A packed pruned batch lives in a buffer sized for the worst case (a static capacity, so the forward can be
captured in a CUDA graph) while only the first ``live`` rows hold tokens; ``live`` is a device scalar
(``cu_seqlens[-1]``), never read by the host. Row tiles at or past ``live`` skip the matrix product and
store zeros, so the work tracks the tokens actually kept, not the capacity. Rows past ``live`` inside the
last live tile are zeroed too: every output row is defined.

x: ``(M, K)``, w: ``(N, K)`` (``nn.Linear.weight``), b: ``(N,)``, y: ``(M, N)``; unit stride along K / N.
fp16 and bf16 (fp32 accumulation), fp32 (IEEE products). ``GELU`` is the exact (erf) GELU of ``nn.GELU()``.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["M"])
def ragged_linear_fwd(
    X,
    W,
    BIAS,
    Y,
    LIVE,  # pointer to one int32: rows [0, live) are computed, the rest zero-filled
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,
    IS_FP32: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only (its bf16 tl.dot is wrong): multiply in fp32
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n  # grouped tile order: neighbouring programs share weight tiles in L2
    first_m = (pid // group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    live = tl.load(LIVE)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = Y + rows[:, None].to(tl.int64) * stride_ym + cols[None, :]
    out_mask = (rows[:, None] < M) & (cols[None, :] < N)
    if pid_m * BLOCK_M >= live:
        tl.store(y_ptrs, tl.zeros([BLOCK_M, BLOCK_N], dtype=Y.dtype.element_ty), mask=out_mask)
    else:
        ks = tl.arange(0, BLOCK_K)
        x_ptrs = X + rows[:, None].to(tl.int64) * stride_xm + ks[None, :]
        w_ptrs = W + cols[None, :].to(tl.int64) * stride_wn + ks[:, None]
        row_ok = rows[:, None] < live
        col_ok = cols[None, :] < N
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = tl.load(x_ptrs, mask=row_ok & (ks[None, :] < K - k0), other=0.0)
            b = tl.load(w_ptrs, mask=col_ok & (ks[:, None] < K - k0), other=0.0)
            if IS_FP32:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            elif UPCAST_DOT:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            x_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        acc = tl.where(row_ok, acc, 0.0)
        tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=out_mask)
