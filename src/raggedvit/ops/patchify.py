"""``patchify``: the patch matrix of a non-overlapping patch embedding in one kernel.

A ``Conv2d`` whose stride equals its kernel size is a GEMM of the flattened patches with the flattened
kernel (:func:`raggedvit.models.forward.patch_embed`). Flattening the patches with ``reshape`` / ``permute``
/ ``reshape`` makes PyTorch's generic strided copy walk a 6-D index: on an H200 it took 130 us at batch 256
(ViT at 224 px, fp16) where Inductor's fused copy of the same permute took 41.5 us
(``benchmarks/results/profile-forward-padded-compiled-nvidia-h200-20261130-2057.log``). This op writes the
same matrix with one Triton kernel (:mod:`raggedvit.kernels.patchify`). Registered as
``torch.ops.raggedvit.patchify`` for ``torch.compile``.
"""

from __future__ import annotations

import torch
import triton

from ..kernels.patchify import patchify_fwd
from .launch import DirectLauncher
from .library import is_compiling

launcher = DirectLauncher(patchify_fwd, "patchify")
# launch configuration: pixel runs per block, warps. H200, batch 256 x 3 x 224 x 224 fp16: 44.9 us (torch's
# reshape / permute copy 127.4 us, torch.compile's 61.9 us; 51.5 us at 64 runs, 4 warps; before the kernel
# specialized on the image strides, 110.6 us: no vector loads), patchify-sweep-nvidia-h200-20261130-2350
CONFIG = dict(block_r=256, num_warps=8)


def patchify_reference(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """:func:`patchify` in torch ops (``reshape`` / ``permute`` / ``reshape``)."""
    B, C, H, W = images.shape
    gh, gw = H // ph, W // pw
    return images.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B * gh * gw, C * ph * pw)


def patchify(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """The ``(B * H / ph * W / pw, C * ph * pw)`` patch matrix of ``images``.

    Args:
        images: ``(B, C, H, W)``, any strides and dtype; ``H`` and ``W`` multiples of ``ph`` and ``pw``.
        ph, pw: patch height and width.

    Returns:
        A new contiguous tensor: row ``(b * GH + gh) * GW + gw`` is patch ``(gh, gw)`` of image ``b``, flattened
        in ``(channel, row, column)`` order (``conv.weight.reshape(out_channels, -1)``'s order), equal to
        :func:`patchify_reference`. CUDA tensors, or CPU tensors under the Triton interpreter.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"patchify: images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    B, C, H, W = images.shape
    if ph <= 0 or pw <= 0 or H % ph or W % pw:
        raise ValueError(f"patchify: image size {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    dev = images.get_device()
    if dev < 0 and not launcher.interpreted:
        raise ValueError("patchify: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "patchify_reference")
    if is_compiling():
        return torch.ops.raggedvit.patchify(images, ph, pw)
    gh, gw = H // ph, W // pw
    out = torch.empty(B * gh * gw, C * ph * pw, dtype=images.dtype, device=images.device)
    if out.numel() == 0:
        return out
    sb, sc, sh, sw = images.stride()
    block_r, warps = CONFIG["block_r"], CONFIG["num_warps"]
    rest = (sb, sc, sh, sw, C, ph, pw, gh, gw, triton.next_power_of_2(pw), block_r)
    key = (images.dtype, dev, C, ph, pw, gh, gw, images.stride(), block_r, warps) \
        if images.data_ptr() % 16 == 0 else None
    launcher.launch(key, dev, (B * gh, 1, 1), (images.data_ptr(), out.data_ptr()), (),
                    lambda: (images, out, *rest), num_warps=warps)
    return out


@torch.library.custom_op("raggedvit::patchify", mutates_args=())
def _patchify_op(images: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    return patchify(images, ph, pw)


@_patchify_op.register_fake
def _(images, ph, pw):
    B, C, H, W = images.shape
    return images.new_empty((B * (H // ph) * (W // pw), C * ph * pw))
