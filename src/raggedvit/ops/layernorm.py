"""``ragged_layer_norm``: ``nn.LayerNorm`` over the live rows of a capacity buffer (no host sync).

See :mod:`raggedvit.kernels.layernorm`. Forward only; CUDA tensors, or CPU tensors under the Triton
interpreter. Registered as ``torch.ops.raggedvit.ragged_layer_norm`` for ``torch.compile`` (see
:mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

import torch

from ..kernels.layernorm import ragged_layer_norm_fwd
from .launch import DirectLauncher
from .library import check_compilable, is_compiling
from .linear import check_live_rows

launcher = DirectLauncher(ragged_layer_norm_fwd, "ragged_layer_norm")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fail(msg: str, kind: type[Exception] = ValueError) -> None:
    raise kind(f"ragged_layer_norm: {msg}")


def ragged_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      live_rows: torch.Tensor, *, eps: float = 1e-5, out: torch.Tensor | None = None,
                      check_lengths: bool = False) -> torch.Tensor:
    """``F.layer_norm(x, (C,), weight, bias, eps)`` on rows ``[0, live_rows)``; other rows not written.

    Args:
        x: ``(M, C)``, last stride 1; fp16, bf16 or fp32. ``C <= 8192``.
        weight, bias: ``(C,)`` contiguous in ``x.dtype``, or None.
        live_rows: one-element int32 device tensor (e.g. ``cu_seqlens[-1:]``), clamped to ``[0, M]``.
        eps: added to the variance.
        out: optional ``(M, C)`` output with last stride 1.
        check_lengths: validate ``live_rows`` on the device first (``ValueError`` outside ``[0, M]``; one host
            sync; debugging only).

    Returns:
        ``(M, C)`` in ``x.dtype``; rows at and past ``live_rows`` hold what ``out`` (or the allocator) held.
    """
    _check(x, weight, bias, live_rows, out, check_lengths)
    if is_compiling():
        check_compilable("ragged_layer_norm", out, check_lengths)
        return torch.ops.raggedvit.ragged_layer_norm(x, weight, bias, live_rows, float(eps))
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(x, weight, bias, live_rows, eps, out)
    return out


def ragged_layer_norm_shift(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                            live_rows: torch.Tensor, shift: torch.Tensor, *,
                            eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer_norm(x), x + shift)`` on rows ``[0, live_rows)`` in one pass: a pre-norm block's LayerNorm
    and its residual stream with the bias of the GEMM that adds to it (``shift``: that layer's bias), so that
    GEMM takes ``x + shift`` as its accumulator input (``torch.addmm(x + shift, a, W.T)``) and the residual
    add needs no kernel of its own.

    Args:
        x, weight, bias, live_rows, eps: as in :func:`ragged_layer_norm`.
        shift: ``(C,)`` contiguous in ``x.dtype``, on ``x``'s device.

    Returns:
        ``(y, s)``, both ``(M, C)`` in ``x.dtype``; rows at and past ``live_rows`` are not written.
    """
    _check(x, weight, bias, live_rows, None, False)
    C = x.shape[1]
    if not isinstance(shift, torch.Tensor) or tuple(shift.shape) != (C,) or shift.dtype != x.dtype or (
            not shift.is_contiguous()) or shift.get_device() != x.get_device():
        _fail(f"shift must be a contiguous ({C},) {x.dtype} tensor on x's device")
    if is_compiling():
        return torch.ops.raggedvit.ragged_layer_norm_shift(x, weight, bias, live_rows, shift, float(eps))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    s = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(x, weight, bias, live_rows, eps, out, (shift, s))
    return out, s


def _check(x, weight, bias, live_rows, out, check_lengths) -> None:
    """Validate the inputs shared by both functions (before any launch)."""
    if not isinstance(x, torch.Tensor) or not isinstance(live_rows, torch.Tensor):
        _fail("x and live_rows must be tensors", TypeError)
    if x.dtype not in _DTYPES or any(t is not None and t.dtype != x.dtype for t in (weight, bias)):
        _fail(f"x, weight and bias need one dtype among fp16/bf16/fp32, got {x.dtype}", TypeError)
    if x.dim() != 2 or x.stride(1) != 1:
        _fail(f"x must be (M, C) with last stride 1, got {tuple(x.shape)} strides {x.stride()}")
    M, C = x.shape
    if C > 8192:
        _fail(f"C = {C} > 8192")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (tuple(t.shape) != (C,) or not t.is_contiguous()):
            _fail(f"{name} must be contiguous ({C},), got {tuple(t.shape)}")
    check_live_rows("ragged_layer_norm", live_rows, M, check_lengths and not is_compiling())
    dev = x.get_device()
    if any(t is not None and t.get_device() != dev for t in (weight, bias, live_rows, out)):
        _fail("x, weight, bias, live_rows and out must be on one device")
    if dev < 0 and not launcher.interpreted:
        _fail("CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use torch.nn.functional.layer_norm")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.stride(1) != 1):
        _fail(f"out must be ({M}, {C}) {x.dtype} with last stride 1")


def _launch(x, weight, bias, live_rows, eps, out, shift=None) -> None:
    """Launch the kernel on checked inputs; ``shift``: None or ``(shift vector, its output)``."""
    M, C = x.shape
    if M == 0 or C == 0:
        return
    dev = x.get_device()
    block_c = max(16, 1 << (C - 1).bit_length())
    block_m = max(1, min(16, 4096 // block_c))
    num_warps = 4 if block_c * block_m <= 4096 else 8
    grid = -(-M // block_m)
    w = x if weight is None else weight
    b = x if bias is None else bias
    sv, s = shift if shift is not None else (x, out)
    ptrs = (x.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(), live_rows.data_ptr(), sv.data_ptr(),
            s.data_ptr())
    rest = (x.stride(0), out.stride(0), s.stride(0), float(eps), C, weight is not None, bias is not None,
            shift is not None, block_m, block_c)
    key = (x.dtype, dev, C, x.stride(0), out.stride(0), s.stride(0), float(eps), weight is not None,
           bias is not None, shift is not None) if all(p % 16 == 0 for p in ptrs[:4] + ptrs[5:]) and (
        ptrs[4] % 4 == 0) else None
    launcher.launch(key, dev, (grid, 1, 1), ptrs, (M,), lambda: (x, w, b, out, live_rows, sv, s, M, *rest),
                    num_warps=num_warps)


@torch.library.custom_op("raggedvit::ragged_layer_norm", mutates_args=())
def _ragged_layer_norm_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          live_rows: torch.Tensor, eps: float) -> torch.Tensor:
    return ragged_layer_norm(x, weight, bias, live_rows, eps=eps)


@_ragged_layer_norm_op.register_fake
def _(x, weight, bias, live_rows, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("raggedvit::ragged_layer_norm_shift", mutates_args=())
def _ragged_layer_norm_shift_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                live_rows: torch.Tensor, shift: torch.Tensor,
                                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return ragged_layer_norm_shift(x, weight, bias, live_rows, shift, eps=eps)


@_ragged_layer_norm_shift_op.register_fake
def _(x, weight, bias, live_rows, shift, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)
