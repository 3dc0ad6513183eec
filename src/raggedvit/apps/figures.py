"""Pictures of which patches a pruning method kept: one PNG per image, one panel per method.

Dropped patches (``patch x patch`` pixels of the model input, e.g. 16 x 16) are greyed out; kept ones are
shown as they are. Drawn with matplotlib's object API (no pyplot, no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

GREY = 0.55
GREY_MIX = 0.85  # share of grey in a dropped patch (the image stays faintly visible)


@dataclass(frozen=True)
class Panel:
    """One panel: a title and the kept-patch mask ``(num_patches,)`` bool, or None for "all patches kept"."""

    title: str
    kept: torch.Tensor | None
    good: bool | None = None  # colour the title: True green, False red, None black


def grey_out(image: np.ndarray, kept: torch.Tensor | None, grid: tuple[int, int]) -> np.ndarray:
    """``image (H, W, 3)`` float in [0, 1] with the patches not in ``kept`` (row-major ``grid``) greyed out."""
    if kept is None:
        return image
    gh, gw = grid
    h, w = image.shape[:2]
    if kept.numel() != gh * gw:
        raise ValueError(f"grey_out: mask has {kept.numel()} patches, grid {gh}x{gw} has {gh * gw}")
    mask = kept.detach().cpu().bool().view(gh, gw).numpy()
    full = np.repeat(np.repeat(mask, h // gh, axis=0), w // gw, axis=1)  # (H, W) True where kept
    out = image.copy()
    out[~full] = GREY_MIX * GREY + (1 - GREY_MIX) * image[~full]
    return out


def save_kept_figure(path: str | Path, image: torch.Tensor, panels: list[Panel], grid: tuple[int, int],
                     title: str = "") -> Path:
    """Write a PNG with one panel per entry of ``panels`` over ``image (3, H, W)`` in [0, 1]; returns the path.

    Thin lines mark the patch grid so the 16 x 16 cells are visible.
    """
    from matplotlib.figure import Figure

    img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    cols = min(len(panels), 5)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.9 * cols, 3.25 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    gh, gw = grid
    h, w = img.shape[:2]
    for ax, panel in zip(axes, panels):
        ax.imshow(grey_out(img, panel.kept, grid), interpolation="nearest")
        for i in range(1, gh):
            ax.axhline(i * h / gh - 0.5, color="white", linewidth=0.25, alpha=0.35)
        for j in range(1, gw):
            ax.axvline(j * w / gw - 0.5, color="white", linewidth=0.25, alpha=0.35)
        color = {True: "darkgreen", False: "firebrick", None: "black"}[panel.good]
        ax.set_title(panel.title, fontsize=8, color=color)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
