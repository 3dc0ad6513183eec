"""Checks of the images given to a pruned or graphed model, at its boundary (before any kernel runs).

:func:`check_images` raises one clear error naming both sides (the images and what the model takes) for
the mistakes that otherwise surface deep inside: a tensor of the wrong rank, a channel count or image size
other than the model's, a dtype or device other than the weights'. An empty batch (``B == 0``) is valid
input: the caller returns :func:`empty_logits` (``(0, num_classes)``, as timm's own forward does) without
running the network. Host-side only: shapes, dtypes and devices, no device value is read.
"""

from __future__ import annotations

import torch
from torch import nn


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_images(images: torch.Tensor, *, weight: torch.Tensor | None, img_size: int | tuple[int, int],
                 in_chans: int, where: str) -> None:
    """Raise unless ``images`` is a ``(B, in_chans, H, W)`` tensor the model can take.

    Args:
        images: the input batch; ``B == 0`` passes (see :func:`empty_logits`).
        weight: a parameter of the model (e.g. the patch embedding's): ``images`` must have its dtype and
            device. None skips both checks (for a caller that converts, e.g. by copying into a buffer).
        img_size: ``(H, W)`` (or one int for square images) the model was built for.
        in_chans: channels the model takes.
        where: the caller's name, prefixed to every message (e.g. ``"PrunedViT"``).

    Raises, in this order: ``TypeError`` if ``images`` is not a tensor; ``ValueError`` if it is not 4-D, has
    another channel count or another ``H x W``; ``TypeError`` if its dtype differs from ``weight``'s;
    ``ValueError`` if its device differs. Each message names both sides, e.g. ``"images are 256x256 but the
    model takes 224x224"``.
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{where}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{where}: expected a (B, {in_chans}, {h}, {w}) tensor, got shape {tuple(images.shape)}")
    if images.shape[1] != in_chans:
        raise ValueError(f"{where}: images have {images.shape[1]} channels but the model takes {in_chans} "
                         f"(shape {tuple(images.shape)})")
    if tuple(images.shape[2:]) != (h, w):
        raise ValueError(f"{where}: images are {images.shape[2]}x{images.shape[3]} but the model takes {h}x{w}")
    if weight is not None:
        if images.dtype != weight.dtype:
            raise TypeError(f"{where}: images are {_name(images.dtype)} but the model's weights are "
                            f"{_name(weight.dtype)} (convert with images.to({weight.dtype}))")
        if images.device != weight.device:
            raise ValueError(f"{where}: images are on {images.device} but the model is on {weight.device}")


def input_spec(model: nn.Module) -> dict:
    """``check_images`` keyword arguments for a timm ViT or a :class:`~raggedvit.models.pruned.PrunedViT`
    (through its ``backbone``): the patch embedding's weight, image size and input channels."""
    pe = getattr(model, "backbone", model).patch_embed
    return {"weight": pe.proj.weight, "img_size": tuple(pe.img_size), "in_chans": pe.proj.in_channels}


def empty_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the forward of ``model`` (a timm ViT, or a PrunedViT through its ``backbone``) returns for an empty
    batch, as timm does: ``(0, num_classes)`` (``(0, num_features)`` for a head-less model) in the head's
    dtype, on the images' device. Launches nothing."""
    if images.shape[0] != 0:
        raise ValueError(f"empty_logits: images hold {images.shape[0]} images, not 0")
    m = getattr(model, "backbone", model)
    width = m.num_classes or m.num_features
    return torch.empty(0, width, dtype=next(m.parameters()).dtype, device=images.device)


__all__ = ["check_images", "empty_logits", "input_spec"]
