"""The oracle: timm's own blocks run on dense ``(B, n)`` token tensors at given per-stage counts.

No scoring, no selection, no metadata (the patch embedding is raggedvit's, as in the pruned forward:
:func:`raggedvit.models.forward.patch_embed`): at a stage the token tensor is simply cut to its first ``n``
tokens (one contiguous copy), PRE stages before the block, MID stages (EViT, ATS) between the block's
attention and its MLP, exactly where the pruned model changes its token count. Captured in a CUDA graph
this is the practical ceiling of a pruned model built from timm blocks (``docs/anchors.md``): a pipeline
that reaches it pays nothing for pruning.

For adaptive methods every image keeps a different number of tokens; the oracle then runs every image at
the batch's mean kept count per stage (rounded), i.e. the same total token count as the ragged batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.forward import patch_embed

__all__ = ["OracleViT", "oracle_widths"]


def oracle_widths(kept: Sequence[Sequence[int]], num_prefix: int) -> tuple[int, ...]:
    """Per stage, the rounded mean of per-image kept counts (prefix included), at least ``num_prefix + 1``."""
    return tuple(max(num_prefix + 1, round(sum(k) / max(1, len(k)))) for k in kept)


class OracleViT(nn.Module):
    """timm ViT forward with the token tensor cut to ``widths[s]`` tokens at ``stage_blocks[s]``.

    Args:
        model: a timm ``VisionTransformer`` (shared, not copied).
        stage_blocks: block index of every stage, increasing.
        mid: MID stages (cut between attention and MLP of the block) rather than PRE (cut before it).
        widths: tokens per image after every stage (prefix included, non-increasing).
    """

    def __init__(self, model: nn.Module, stage_blocks: Sequence[int], mid: bool, widths: Sequence[int]) -> None:
        super().__init__()
        if len(stage_blocks) != len(widths):
            raise ValueError(f"OracleViT: {len(stage_blocks)} stages but {len(widths)} widths")
        object.__setattr__(self, "backbone", model)  # not registered: the oracle owns no weights
        self.cuts = dict(zip(stage_blocks, widths))
        self.mid = mid
        self.widths = tuple(widths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        m = self.backbone
        x = m.norm_pre(m.patch_drop(m._pos_embed(patch_embed(m.patch_embed, images))))
        for i, blk in enumerate(m.blocks):
            w = self.cuts.get(i)
            if w is None:
                x = blk(x)
                continue
            if not self.mid:
                x = blk(x[:, :w].contiguous())
                continue
            y = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x))))
            y = y[:, :w].contiguous()
            x = y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
        return m.forward_head(m.norm(x))
