"""Triton kernel: ``y = [res +] act(x @ w.T + b)`` on the live rows of a fixed-capacity token buffer.

A packed pruned batch lives in a buffer sized for the worst case (a static capacity, so the forward can be
captured in a CUDA graph) while only the first ``live`` rows hold tokens; ``live`` is a device scalar
(``cu_seqlens[-1]``), never read by the host. Programs stride over the output tiles of the live rows only
(their number is computed on the device from ``live``), so the work tracks the tokens actually kept, not
the capacity. Rows at or past ``live`` are never written, nor read (``TMA``) or read only as clamped
duplicates of live rows (pointer loads).

x: ``(M, K)``, w: ``(N, K)`` (``nn.Linear.weight``), b: ``(N,)``, res and y: ``(M, N)``; unit stride along
K / N. ``N`` and ``K`` (layer widths, never token counts) are compile-time constants. fp16 and bf16 (fp32
accumulation), fp32 (IEEE products). ``TMA`` (Hopper and newer, 16-byte aligned rows): tiles move through
tensor descriptors whose row count is ``live``, so out-of-range rows and columns are zero-filled on load
and clipped on store; otherwise pointer loads. ``GELU`` is the exact (erf) GELU of ``nn.GELU()``: for fp32,
PyTorch's own formula with libdevice's ``erff`` (within a few ulp of ``nn.GELU``: fp32 layouts then agree
on near-tied decisions; with the A&S form below, whose error reaches 3e-7, ATS fixed and adaptive ToMe each
differed on one of 436 photos, ``exactness-nvidia-h200-20261201-032907``); for fp16 / bf16 a faster form of
Abramowitz & Stegun's erf 7.1.26 (absolute error < 5e-7, far below their rounding), see :func:`_gelu`.
"""

import triton
import triton.language as tl


@triton.jit
def _gelu(x, FAST_MATH: tl.constexpr):
    """GELU ``x * Phi(x)`` of fp32 ``x`` (for fp16 / bf16 outputs), Abramowitz & Stegun's erf 7.1.26 folded into
    ``Phi``: ``h = 0.5 P(t) exp(-x^2 / 2)``, ``t = 1 / (1 + p |x| / sqrt(2))``, is ``Phi(-|x|)`` (within
    0.75e-7), so ``Phi(x) = 1 - h`` for ``x >= 0`` and ``h`` below: no ``1 + erf`` cancellation in the tail.

    About 14 fp32 ops and two special-function ops (a reciprocal and an exp2) per element, where the epilogue
    is compute-bound (H200, ViT-Tiny fc1 at 256 x 197 rows: 65 us against 80 us for ``0.5 x (1 + erf(x /
    sqrt 2))`` with the same erf, 89 us with libdevice's ``erff``, 45 us without GELU;
    ``gelu-epilogue-ab-nvidia-h200-20261201-032130``). ``FAST_MATH`` (CUDA): PTX ``rcp.approx`` and
    ``ex2.approx`` (1-2 ulp; their denormal flush only meets ``h`` once it is below fp32 resolution);
    otherwise ``/`` and ``tl.exp2`` (the interpreter)."""
    d = 1.0 + 0.2316418882663604 * tl.abs(x)
    z = x * x * -0.7213475204444817  # -x^2 / 2 in log2 units
    if FAST_MATH:
        t = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [d], dtype=tl.float32, is_pure=True,
                                      pack=1)
        e = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [z], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        t = 1.0 / d
        e = tl.exp2(z)
    h = ((((0.5307027145 * t - 0.7265760135) * t + 0.7107068705) * t - 0.142248368) * t + 0.127414796) * t * e
    return x * tl.where(x >= 0, 1.0 - h, h)


@triton.jit
def _tile(tile, num_pid_m, NUM_PID_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of linear tile ``tile`` in grouped order (neighbours share weight tiles in L2)."""
    group = GROUP_M * NUM_PID_N
    first_m = (tile // group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (tile % group) % group_m, (tile % group) // group_m


@triton.jit(do_not_specialize=["M", "PROGRAMS"])
def ragged_linear_fwd(
    X,
    W,
    BIAS,
    RES,
    Y,
    LIVE,  # pointer to one int32: rows [0, live) are computed (live clamped to [0, M]), the others untouched
    M,
    PROGRAMS,  # the grid size: programs stride over the tiles
    stride_xm,
    stride_wn,
    stride_rm,
    stride_ym,
    N: tl.constexpr,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,
    HAS_RES: tl.constexpr,
    IS_FP32: tl.constexpr,
    UPCAST_DOT: tl.constexpr,  # interpreter only (its bf16 tl.dot is wrong): multiply in fp32
    FAST_MATH: tl.constexpr,  # CUDA: PTX approximate reciprocal / exp2 in the GELU (see _gelu)
    TMA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    NUM_PID_N: tl.constexpr = (N + BLOCK_N - 1) // BLOCK_N
    live = tl.minimum(tl.maximum(tl.load(LIVE), 0), M)  # clamped to the rows that exist
    num_pid_m = tl.cdiv(live, BLOCK_M)
    ks = tl.arange(0, BLOCK_K)
    if TMA:
        rows_d = tl.maximum(live, 1)  # no zero-sized descriptor (with live == 0 no tile is visited)
        x_desc = tl.make_tensor_descriptor(X, [rows_d, K], [stride_xm, 1], [BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(W, [N, K], [stride_wn, 1], [BLOCK_N, BLOCK_K])
        y_desc = tl.make_tensor_descriptor(Y, [rows_d, N], [stride_ym, 1], [BLOCK_M, BLOCK_N])
        if HAS_RES:
            r_desc = tl.make_tensor_descriptor(RES, [rows_d, N], [stride_rm, 1], [BLOCK_M, BLOCK_N])
    tile_out = tl.program_id(0) - PROGRAMS  # a second counter for the epilogue (keeps the loop pipelinable)
    for tile in tl.range(tl.program_id(0), num_pid_m * NUM_PID_N, PROGRAMS, flatten=True):
        pid_m, pid_n = _tile(tile, num_pid_m, NUM_PID_N, GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rows_in = tl.where(rows < live, rows, 0).to(tl.int64)  # clamped: pointer loads need no row mask
        cols_in = tl.where(cols < N, cols, 0)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if TMA:
                a = x_desc.load([pid_m * BLOCK_M, k0])
                b = w_desc.load([pid_n * BLOCK_N, k0]).T
            else:
                kk = k0 + ks
                a_ptrs = X + rows_in[:, None] * stride_xm + kk[None, :]
                b_ptrs = W + cols_in[None, :] * stride_wn + kk[:, None]
                if K % BLOCK_K == 0:
                    a = tl.load(a_ptrs)
                    b = tl.load(b_ptrs)
                else:
                    a = tl.load(a_ptrs, mask=kk[None, :] < K, other=0.0)
                    b = tl.load(b_ptrs, mask=kk[:, None] < K, other=0.0)
            if IS_FP32:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            elif UPCAST_DOT:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        tile_out += PROGRAMS
        pid_m, pid_n = _tile(tile_out, num_pid_m, NUM_PID_N, GROUP_M)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            acc += tl.load(BIAS + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        if GELU:
            if IS_FP32:  # PyTorch's CUDA formula with libdevice's erff: within a few ulp of nn.GELU
                acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
            else:
                acc = _gelu(acc, FAST_MATH)
        if TMA:
            if HAS_RES:
                acc += r_desc.load([pid_m * BLOCK_M, pid_n * BLOCK_N]).to(tl.float32)
            y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], acc.to(Y.dtype.element_ty))
        else:
            mask = (rows[:, None] < live) & (cols[None, :] < N)
            if HAS_RES:
                r_ptrs = RES + rows[:, None].to(tl.int64) * stride_rm + cols[None, :]
                acc += tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32)
            y_ptrs = Y + rows[:, None].to(tl.int64) * stride_ym + cols[None, :]
            tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=mask)
