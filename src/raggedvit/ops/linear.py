"""``ragged_linear``: a Linear (+ optional exact GELU) over the live rows of a capacity buffer.

Used by the packed pipeline for adaptive pruning, whose token buffers are sized for the worst case so that
shapes stay static (CUDA graphs) while the live row count stays on the device. ``torch.nn.functional.linear``
would multiply every capacity row; :func:`ragged_linear` skips row tiles past the live count.
Forward only. See :mod:`raggedvit.kernels.linear` for the kernel.
"""

from __future__ import annotations

import torch

from ..kernels.linear import ragged_linear_fwd
from .launch import DirectLauncher, raw_stream

launcher = DirectLauncher(ragged_linear_fwd, "ragged_linear")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _config(dtype: torch.dtype, m: int, n: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) from the dtype and the buffer's static shape.

    ``m`` is the buffer capacity (a host int fixed per batch size and stage), never the live row count, so
    a captured graph and a sweep of lengths keep one compiled variant per shape class (two at most)."""
    if launcher.interpreted:
        return 32, 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 3
    if m * n < 128 * 256 * 264:  # under two waves of large tiles on 132 SMs: small tiles keep SMs busy
        return 64, 64, 64, 4, 3
    return 128, (256 if n >= 256 else 64), 64, 8, 3  # best of 8 configs on an H100 (deit-S/B shapes)


def _fail(msg: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"ragged_linear: {msg}")


def ragged_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    live_rows: torch.Tensor,
    *,
    gelu: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` for rows ``[0, live_rows)`` of ``x``; zeros for the other rows.

    Args:
        x: ``(M, K)`` rows (the capacity buffer), last stride 1; fp16, bf16 or fp32.
        weight: ``(N, K)`` as in ``nn.Linear``, contiguous, same dtype and device.
        bias: ``(N,)`` or None.
        live_rows: int32 tensor with one element on the device (e.g. ``cu_seqlens[-1:]``): the number of live
            rows. Read by the kernel only; the host never waits for it.
        gelu: apply the exact (erf) GELU, as ``nn.GELU()`` does.
        out: optional ``(M, N)`` output, last stride 1.

    Returns:
        ``(M, N)`` in ``x.dtype``; rows at and past ``live_rows`` are zero.
    """
    if not all(isinstance(t, torch.Tensor) for t in (x, weight, live_rows)):
        _fail("x, weight and live_rows must be tensors", TypeError)
    if x.dtype not in _DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        _fail(f"x, weight, bias need one dtype among fp16/bf16/fp32, got {x.dtype}, {weight.dtype}, "
              f"{None if bias is None else bias.dtype}", TypeError)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        _fail(f"need x (M, K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        _fail(f"bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    if live_rows.dtype != torch.int32 or live_rows.numel() != 1:
        _fail(f"live_rows must be a one-element int32 tensor, got {live_rows.dtype} {tuple(live_rows.shape)}",
              TypeError)
    if x.stride(1) != 1 or not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        _fail("x needs stride 1 along K; weight and bias must be contiguous")
    dev = x.get_device()
    if any(t.get_device() != dev for t in (weight, live_rows) + (() if bias is None else (bias,))):
        _fail("x, weight, bias and live_rows must be on one device")
    if dev < 0 and not launcher.interpreted:
        _fail("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use torch.nn.functional.linear")
    M, K = x.shape
    N = weight.shape[0]
    if out is None:
        out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    elif out.shape != (M, N) or out.dtype != x.dtype or out.get_device() != dev or out.stride(1) != 1:
        _fail(f"out must be ({M}, {N}) {x.dtype} on x's device with last stride 1")
    if M == 0 or N == 0:
        return out
    bm, bn, bk, num_warps, num_stages = _config(x.dtype, M, N)
    grid = (triton_cdiv(M, bm) * triton_cdiv(N, bn), 1, 1)
    b = weight if bias is None else bias
    rest = (M, N, K, x.stride(0), weight.stride(0), out.stride(0), bias is not None, gelu, x.dtype == torch.float32,
            launcher.interpreted and x.dtype == torch.bfloat16, bm, bn, bk, 8)  # M is per call, the rest per key
    ptrs = (x.data_ptr(), weight.data_ptr(), b.data_ptr(), out.data_ptr(), live_rows.data_ptr())
    key = (x.dtype, dev, N, K, bm, x.stride(0), out.stride(0), bias is not None, gelu) if all(
        p % 16 == 0 for p in ptrs[:4]) and ptrs[4] % 4 == 0 else None
    entry = launcher.cache.get(key) if key is not None else None
    if entry is not None and launcher.usable(dev):
        call, prefix, constant = entry
        call(grid[0], 1, 1, raw_stream(dev), *prefix, *ptrs, M, *constant)
        launcher.direct_launches += 1
    else:
        launcher.launch_jit(key, dev, grid, (x, weight, b, out, live_rows, *rest), n_per_call=6, num_warps=num_warps,
                            num_stages=num_stages)
    return out


def triton_cdiv(a: int, b: int) -> int:
    """Ceiling division on host ints (``triton.cdiv`` is a JIT function with host overhead)."""
    return -(-a // b)
