"""``ragged_linear``: a Linear (+ exact GELU or + a residual) over the live rows of a capacity buffer.

Used by the packed pipeline, whose token buffers are sized for the worst case so that shapes stay static
(CUDA graphs) while the live row count stays on the device. ``torch.nn.functional.linear`` would multiply
every capacity row; :func:`ragged_linear` visits only the row tiles below the live count, and fuses the
bias, fc1's GELU or the block's residual add into the same pass. Forward only. See
:mod:`raggedvit.kernels.linear` for the kernel. Registered as ``torch.ops.raggedvit.ragged_linear`` for
``torch.compile`` (see :mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from triton.runtime import _allocation

from ..kernels.linear import ragged_linear_fwd
from .checks import check_ragged
from .launch import DirectLauncher
from .library import check_compilable, is_compiling

launcher = DirectLauncher(ragged_linear_fwd, "ragged_linear")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


_SMS: dict[int, int] = {}
_TMA_OK: dict[int, bool] = {}


class Config(NamedTuple):
    """Launch configuration: tile sizes, warps, pipeline stages, programs per SM (0: one per tile), TMA."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    per_sm: int
    tma: bool


def _config(dtype: torch.dtype, m: int, n: int, k: int, tma_ok: bool) -> Config:
    """The launch configuration from the dtype and the static GEMM shape (best of sweeps on an H100; narrow
    outputs from ``benchmarks/linear_sweep.py`` on an H200).

    ``m`` is the buffer capacity (a host int fixed per batch size and stage), never the live row count, so
    a captured graph and a sweep of lengths keep one compiled variant per shape class (two at most).
    ``tma_ok``: the GPU has TMA (sm90+) and the tensors meet its 16-byte alignment rules."""
    if launcher.interpreted:
        return Config(32, 32, 32, 4, 1, 0, False)
    if dtype == torch.float32:
        return Config(64, 64, 32, 4, 3, 0, False)
    waves = m * n / (132 * 128 * 128)  # of 128 x 128 tiles on an H100's 132 SMs
    if waves < 1 or (waves < 4 and k < 768):  # small tiles keep the SMs busy (DeiT-S at batch 16: 1.03x)
        return Config(64, 64, 64, 4, 3, 0, False)
    if n <= 256:  # narrow outputs (ViT-Tiny's proj and fc2, 192 wide): 64-column tiles, none half empty
        # (H200, 85 % live rows, linear-sweep-nvidia-h200-20261130-140649: fc2 at batch 64 10.9 vs 18.8 us)
        return Config(256, 64, 64, 8, 3, 1, True) if tma_ok and waves >= 4 else Config(128, 64, 64, 4, 3, 0, False)
    if tma_ok:  # persistent, one program per SM, TMA tiles
        return Config(128, 128, 64, 8, 4, 1, True)
    return Config(128, 128, 64, 8, 3, 0, False)


def _tma_ok(dev: int, ptrs: tuple[int, ...], row_bytes: tuple[int, ...]) -> bool:
    """TMA descriptors can address these tensors on this device: sm90+, 16-byte aligned bases (``ptrs``) and
    row strides (``row_bytes``)."""
    if dev < 0:
        return False
    ok = _TMA_OK.get(dev)
    if ok is None:
        ok = _TMA_OK.setdefault(dev, torch.cuda.get_device_capability(dev)[0] >= 9)
    return ok and not any(v & 15 for v in ptrs + row_bytes)


def check_live_rows(op: str, live_rows: torch.Tensor, rows: int, check_lengths: bool = False) -> None:
    """TypeError unless ``live_rows`` is a one-element int32 tensor (the device-side live row count that the
    live-row ops read, clamped by their kernels to ``[0, rows]``); with ``check_lengths``, also validate its
    value on the device (``ValueError`` outside ``[0, rows]``; one host sync). ``op`` names the caller."""
    if live_rows.dtype != torch.int32 or live_rows.numel() != 1:
        raise TypeError(f"{op}: live_rows must be a one-element int32 tensor, got {live_rows.dtype} "
                        f"{tuple(live_rows.shape)}")
    if check_lengths:
        check_ragged(op, rows, bounded=(("live_rows", live_rows.reshape(1), 0, rows),))


def _torch_allocator(size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """TMA descriptors built on the device need a few bytes of scratch per program, which Triton obtains
    from ``triton.set_allocator``: install a torch-backed allocator unless the caller set one."""
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_allocator)


def _fail(msg: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"ragged_linear: {msg}")


def ragged_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    live_rows: torch.Tensor,
    *,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    check_lengths: bool = False,
) -> torch.Tensor:
    """``residual + act(x @ weight.T + bias)`` for rows ``[0, live_rows)`` of ``x``; other rows not written.

    Args:
        x: ``(M, K)`` rows (the capacity buffer), last stride 1; fp16, bf16 or fp32.
        weight: ``(N, K)`` as in ``nn.Linear``, contiguous, same dtype and device.
        bias: ``(N,)`` or None.
        live_rows: int32 tensor with one element on the device (e.g. ``cu_seqlens[-1:]``): the number of live
            rows (clamped to ``[0, M]``). Read by the kernel only; the host never waits for it.
        gelu: apply the exact (erf) GELU, as ``nn.GELU()`` does (fp32: PyTorch's formula with ``erff``;
            fp16 / bf16: an erf approximation with absolute error below 5e-7, see
            :func:`raggedvit.kernels.linear._gelu`).
        residual: optional ``(M, N)`` tensor (last stride 1) added after the bias (not with ``gelu``).
        out: optional ``(M, N)`` output, last stride 1 (may be ``residual`` itself).
        check_lengths: validate ``live_rows`` on the device first (``ValueError`` outside ``[0, M]``; one host
            sync; debugging only).

    Returns:
        ``(M, N)`` in ``x.dtype``. Rows at and past ``live_rows`` are neither read nor written: with
        ``out=None`` they hold whatever the allocator returned.
    """
    if not all(isinstance(t, torch.Tensor) for t in (x, weight, live_rows)):
        _fail("x, weight and live_rows must be tensors", TypeError)
    if x.dtype not in _DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        _fail(f"x, weight, bias need one dtype among fp16/bf16/fp32, got {x.dtype}, {weight.dtype}, "
              f"{None if bias is None else bias.dtype}", TypeError)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        _fail(f"need x (M, K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    M, K = x.shape
    N = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (N,):
        _fail(f"bias must be ({N},), got {tuple(bias.shape)}")
    check_live_rows("ragged_linear", live_rows, M, check_lengths and not is_compiling())
    if x.stride(1) != 1 or not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
        _fail("x needs stride 1 along K; weight and bias must be contiguous")
    dev = x.get_device()
    extra = tuple(t for t in (bias, residual, out) if t is not None)
    if any(t.get_device() != dev for t in (weight, live_rows) + extra):
        _fail("x, weight, bias, residual, out and live_rows must be on one device")
    if dev < 0 and not launcher.interpreted:
        _fail("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use torch.nn.functional.linear")
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and (t.shape != (M, N) or t.dtype != x.dtype or t.stride(1) != 1):
            _fail(f"{name} must be ({M}, {N}) {x.dtype} with last stride 1, got {tuple(t.shape)} {t.dtype}")
    if gelu and residual is not None:
        _fail("gelu and residual cannot be combined")
    if is_compiling():
        check_compilable("ragged_linear", out, check_lengths)
        return torch.ops.raggedvit.ragged_linear(x, weight, bias, live_rows, gelu, residual)
    if out is None:
        out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    b = weight if bias is None else bias
    r = out if residual is None else residual
    ptrs = (x.data_ptr(), weight.data_ptr(), b.data_ptr(), r.data_ptr(), out.data_ptr(), live_rows.data_ptr())
    size = x.element_size()
    cfg = _config(x.dtype, M, N, K, _tma_ok(dev, (ptrs[0], ptrs[1], ptrs[3], ptrs[4]),
                                            (x.stride(0) * size, weight.stride(0) * size, r.stride(0) * size,
                                             out.stride(0) * size)))
    tiles = -(-M // cfg.block_m) * -(-N // cfg.block_n)
    if dev >= 0 and cfg.per_sm:
        sms = _SMS.get(dev) or _SMS.setdefault(dev, torch.cuda.get_device_properties(dev).multi_processor_count)
        programs = min(tiles, sms * cfg.per_sm)
    elif dev < 0:
        programs = min(tiles, 4)  # the interpreter: a few programs, each walking several tiles
    else:
        programs = tiles
    if cfg.tma and dev >= 0:
        _ensure_allocator()
    fast_math = dev >= 0 and not launcher.interpreted and torch.version.hip is None  # PTX in the GELU
    rest = (x.stride(0), weight.stride(0), r.stride(0), out.stride(0), N, K, bias is not None, gelu,
            residual is not None, x.dtype == torch.float32, launcher.interpreted and x.dtype == torch.bfloat16,
            fast_math, cfg.tma, cfg.block_m, cfg.block_n, cfg.block_k, 8)  # determined by the key
    key = (x.dtype, dev, N, K, cfg, x.stride(0), r.stride(0), out.stride(0), bias is not None, gelu,
           residual is not None) if all(p % 16 == 0 for p in ptrs[:5]) and ptrs[5] % 4 == 0 else None
    launcher.launch(key, dev, (programs, 1, 1), ptrs, (M, programs),
                    lambda: (x, weight, b, r, out, live_rows, M, programs, *rest), num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages)
    return out


@torch.library.custom_op("raggedvit::ragged_linear", mutates_args=())
def _ragged_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, live_rows: torch.Tensor,
                      gelu: bool, residual: torch.Tensor | None) -> torch.Tensor:
    return ragged_linear(x, weight, bias, live_rows, gelu=gelu, residual=residual)


@_ragged_linear_op.register_fake
def _(x, weight, bias, live_rows, gelu, residual):
    return x.new_empty((x.shape[0], weight.shape[0]))
