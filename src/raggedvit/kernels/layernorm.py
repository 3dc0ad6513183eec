"""Triton kernel: LayerNorm over the live rows of a fixed-capacity token buffer.

The token-wise companion of :mod:`raggedvit.kernels.linear`: rows ``[0, live)`` of ``x: (M, C)`` are
normalised (fp32 statistics, biased variance, as ``nn.LayerNorm``) and scaled; rows at or past ``live``
(a device scalar, clamped to ``[0, M]``) are neither read nor written. One program per ``BLOCK_M`` rows;
programs past the live rows return at once. ``SHIFT``: also write ``S = X + SHIFT`` (``SHIFT``: ``(C,)``), the
residual stream with the bias of the GEMM that will add to it (that GEMM then takes ``S`` as its accumulator
input and needs no separate add).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["M"])
def ragged_layer_norm_fwd(
    X,
    WEIGHT,
    BIAS,
    Y,
    LIVE,  # pointer to one int32
    SHIFT_VEC,  # SHIFT: (C,) added to X ...
    S,  # ... into S (M, C)
    M,
    stride_xm,
    stride_ym,
    stride_sm,
    eps,
    C: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SHIFT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    live = tl.minimum(tl.maximum(tl.load(LIVE), 0), M)  # clamped to the rows that exist
    first = tl.program_id(0) * BLOCK_M
    if first < live:
        rows = first + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows[:, None] < live) & (cols[None, :] < C)
        x = tl.load(X + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        if SHIFT:
            sh = tl.load(SHIFT_VEC + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
            tl.store(S + rows[:, None].to(tl.int64) * stride_sm + cols[None, :], (x + sh).to(S.dtype.element_ty),
                     mask=mask)
        mean = tl.sum(x, axis=1) / C
        d = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
        y = d * rstd[:, None]
        if HAS_WEIGHT:
            y = y * tl.load(WEIGHT + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            y = y + tl.load(BIAS + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + rows[:, None].to(tl.int64) * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
