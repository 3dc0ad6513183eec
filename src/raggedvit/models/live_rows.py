"""Live-row token-wise layers: a plain pre-norm block's LayerNorm, qkv, proj + residual, fc1 + GELU (and
fc2 + residual, on cuBLAS by default) as Triton kernels that read the live row count on the device and touch
only the live rows of a static packed buffer (``prune(live_rows=...)``)."""

from __future__ import annotations

import torch

from ..ops.layernorm import ragged_layer_norm, ragged_layer_norm_shift
from ..ops.linear import ragged_linear
from ..pruning.ragged import RaggedMeta

__all__ = ["LiveRows", "fusable_mlp", "live_rows_unsupported", "live_rows_for", "AUTO_MIN_ROWS", "AUTO_MIN_ROWS_FULL",
           "RESIDUAL_IN_NORM", "TRITON_GELU", "CUBLAS_NARROWING", "CUBLAS_NARROWING_RAGGED"]


class LiveRows:
    """The token-wise layers of a plain pre-norm block on the live rows of a packed buffer: LayerNorm
    (:func:`~raggedvit.ops.layernorm.ragged_layer_norm`), qkv, proj + residual, fc1 + GELU, fc2 + residual
    (:func:`~raggedvit.ops.linear.ragged_linear`; fc2 on cuBLAS, see below). ``live``: the live row count on
    the device (``cu_seqlens[-1:]``); rows past it are neither read nor written by the Triton kernels (cuBLAS
    computes them too: they hold unspecified values, which no later layer reads as tokens).

    ``gemm=False``: only the LayerNorm runs as a kernel; the linear layers are cuBLAS (on every buffer row),
    for buffers where cuBLAS beats the Triton GEMM; fc2 (a narrowing layer) is cuBLAS on every buffer
    (``CUBLAS_NARROWING``). PyTorch's own LayerNorm kernel is slow for narrow models
    in half precision (H200, ViT-Tiny fp16, batch 64: 18 us per call against a few us), so the kernel pays
    on every buffer. There, the residual adds ride on the LayerNorm before them: :meth:`pre_norm` also writes
    the residual stream plus the bias of the layer that adds to it, and :meth:`residual_linear` lets cuBLAS
    accumulate its product into that (one GEMM, no add kernel); fc1 + GELU stays one Triton kernel
    (``TRITON_GELU``). Rows past the live count then hold unspecified values (as every cuBLAS output row
    there does)."""

    __slots__ = ("live", "gemm", "narrow_cublas")

    def __init__(self, live: torch.Tensor, gemm: bool = True, narrow_cublas: bool | None = None) -> None:
        self.live = live
        self.gemm = gemm
        self.narrow_cublas = CUBLAS_NARROWING if narrow_cublas is None else narrow_cublas

    def triton(self, mod: torch.nn.Linear) -> bool:
        """Whether ``mod`` runs as the Triton GEMM on this buffer: with ``gemm``, except narrowing layers
        (more inputs than outputs: fc2) when ``narrow_cublas`` (``CUBLAS_NARROWING``)."""
        return self.gemm and not (self.narrow_cublas and mod.in_features > mod.out_features)

    def norm(self, mod: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return ragged_layer_norm(x, mod.weight, mod.bias, self.live, eps=mod.eps)

    def pre_norm(self, mod: torch.nn.LayerNorm, x: torch.Tensor,
                 then: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mod(x), res)``: a pre-norm, and the residual that :meth:`residual_linear` of ``then`` (the layer
        whose output is added to ``x``) takes: ``x`` for the Triton GEMMs (they add it in their epilogue),
        ``x + then.bias`` from the same LayerNorm kernel for cuBLAS."""
        if self.triton(then) or then.bias is None or not RESIDUAL_IN_NORM:
            return self.norm(mod, x), x
        return ragged_layer_norm_shift(x, mod.weight, mod.bias, self.live, then.bias, eps=mod.eps)

    def residual_linear(self, mod: torch.nn.Linear, a: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """``x + mod(a)``, given ``res`` from :meth:`pre_norm` with ``then=mod``."""
        if self.triton(mod):
            return ragged_linear(a, mod.weight, mod.bias, self.live, residual=res)
        if mod.bias is None or not RESIDUAL_IN_NORM:  # res is the residual stream itself: not overwritten
            return torch.addmm(res, a, mod.weight.t()) if mod.bias is None else res + mod(a)
        return res.addmm_(a, mod.weight.t())  # res: x + bias, this layer's own buffer; accumulated in place

    def linear(self, mod: torch.nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.triton(mod) or (gelu and TRITON_GELU):  # cuBLAS + a GELU kernel, or one Triton kernel
            return ragged_linear(x, mod.weight, mod.bias, self.live, gelu=gelu)
        y = mod(x)
        return torch.nn.functional.gelu(y) if gelu else y


def fusable_mlp(mlp) -> bool:
    """timm ``Mlp`` whose forward is ``fc2(gelu(fc1(x)))`` in eval (exact GELU, no norm, no dropout)."""
    act, norm = getattr(mlp, "act", None), getattr(mlp, "norm", None)
    return (isinstance(getattr(mlp, "fc1", None), torch.nn.Linear) and isinstance(getattr(mlp, "fc2", None),
            torch.nn.Linear) and isinstance(act, torch.nn.GELU) and act.approximate == "none"
            and (norm is None or isinstance(norm, torch.nn.Identity)))


def live_rows_unsupported(blk) -> str | None:
    """Why :class:`LiveRows` cannot run timm block ``blk`` (None if it can): it needs a plain pre-norm block,
    ``x + proj(attn(LN(x)))`` then ``x + fc2(gelu(fc1(LN(x))))``, without layer scale or attention gates."""
    attn = getattr(blk, "attn", None)
    checks = {
        "norm1/norm2 are not nn.LayerNorm over the last dim": all(
            isinstance(getattr(blk, n, None), torch.nn.LayerNorm) and len(getattr(blk, n).normalized_shape) == 1
            for n in ("norm1", "norm2")),
        "layer scale (ls1/ls2) is used": all(isinstance(getattr(blk, n, None), torch.nn.Identity)
                                             for n in ("ls1", "ls2")),
        "attn.proj is not nn.Linear or attn has a norm/gate": isinstance(getattr(attn, "proj", None), torch.nn.Linear)
        and isinstance(getattr(attn, "qkv", None), torch.nn.Linear)
        and isinstance(getattr(attn, "norm", torch.nn.Identity()), torch.nn.Identity)
        and getattr(attn, "gate", None) is None,
        "the MLP is not fc2(GELU(fc1(x)))": fusable_mlp(getattr(blk, "mlp", None)),
    }
    bad = [why for why, ok in checks.items() if not ok]
    return "; ".join(bad) or None


RESIDUAL_IN_NORM = True  # cuBLAS buffers: the residual's bias add in the LayerNorm, cuBLAS accumulates into it
TRITON_GELU = True  # cuBLAS buffers: fc1 + GELU still as one Triton kernel (no separate GELU launch)
# narrowing layers (fc2: K = 4 C, N = C) on cuBLAS on every buffer, accumulating into the residual that the
# LayerNorm wrote: on an H200 at ViT-Tiny width, Triton fc1 + GELU then this took 114.5 / 35.6 us against
# 138.8 / 44.9 us for both on Triton at 256 / 64 x 197 rows, all live (mlp-sweep-nvidia-h200-20261130-211420;
# measured at this width only)
CUBLAS_NARROWING = True
# ... also on buffers with unused rows (adaptive stages), where cuBLAS computes every row of the buffer and the
# Triton GEMM only the live ones (False: the Triton GEMM there, 0.7-3.9 % slower per forward for the adaptive
# defaults at batch 8-256 on an H200: live-rows-ab-fc2-ragged-nvidia-h200-20261201-0609; live_rows_ab.py
# auto-fc2-triton-ragged)
CUBLAS_NARROWING_RAGGED = True

AUTO_MIN_ROWS = 1024  # live_rows="auto": buffers with unused rows (adaptive stages) from this many rows
# ... and buffers without (fixed stages, before pruning); None: never. There the Triton GEMMs skip nothing, and
# since cuBLAS buffers fuse the residual (RESIDUAL_IN_NORM) and GELU (TRITON_GELU) too, qkv / proj on cuBLAS
# took 3 % less device time per forward for EViT fixed at batch 256 x 197 rows on an H200 (2,607 vs 2,687 us;
# 1-2 % for the adaptive methods' first stage; live-rows-ab-gemm-nvidia-h200-20261130-2343)
AUTO_MIN_ROWS_FULL: int | None = None


def live_rows_for(mode: bool | str, meta: RaggedMeta) -> LiveRows | None:
    """:class:`LiveRows` for a packed stage buffer, or None for timm's modules. ``mode``: True, False or
    ``"auto"``: the LayerNorm kernel always, the Triton GEMMs for qkv / proj on buffers with unused rows from
    ``AUTO_MIN_ROWS`` rows (they skip the unused rows; cuBLAS wins on small buffers) and on buffers without
    from ``AUTO_MIN_ROWS_FULL`` (default never: cuBLAS was faster there); fc1 + GELU as one Triton kernel on
    every buffer (``TRITON_GELU``), fc2 on cuBLAS (``CUBLAS_NARROWING``; on buffers with unused rows only
    under ``CUBLAS_NARROWING_RAGGED`` too)."""
    if mode is True:
        return LiveRows(meta.cu_seqlens[-1:])
    if mode == "auto":
        least = AUTO_MIN_ROWS_FULL if meta.uniform else AUTO_MIN_ROWS
        gemm = least is not None and meta.capacity >= least
        narrow = CUBLAS_NARROWING and (meta.uniform or CUBLAS_NARROWING_RAGGED)
        return LiveRows(meta.cu_seqlens[-1:], gemm=gemm, narrow_cublas=narrow)
    return None
