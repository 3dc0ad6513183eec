"""Analytic FLOPs of a (pruned) timm ViT forward from the tokens each block processes.

Counted (2 FLOPs per multiply-add, the matmuls only; LayerNorm, softmax, GELU, residual adds and the
pruning methods' own scoring/selection are not counted), per image and block, with ``n_a`` tokens in the
attention half and ``n_m`` in the MLP half (``n_a == n_m`` except in the block of a MID stage, EViT/ATS,
where the MLP already runs on the reduced set):

* qkv ``2 * n_a * C * 3C``, attention ``2 * n_a^2 * C`` (``q k^T``) + ``2 * n_a^2 * C`` (``p v``),
  proj ``2 * n_a * C * C``;
* MLP ``2 * n_m * C * hidden * 2``;
* plus patch embedding ``2 * num_patches * (in_chans * patch^2) * C`` and the head ``2 * C * classes``
  per prefix token the head reads (distilled models: two heads).

Dense DeiT-S/16 at 224 px gives 9.2 GFLOPs (= 4.6 GMACs, the published figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ViTDims", "vit_dims", "tokens_per_block", "vit_flops", "mean_gflops"]


@dataclass(frozen=True)
class ViTDims:
    """Sizes that the FLOP count depends on (host ints)."""

    embed_dim: int
    depth: int
    mlp_hidden: int
    patch_dim: int
    num_patches: int
    num_prefix: int
    num_classes: int
    num_heads_out: int = 1


def vit_dims(model) -> ViTDims:
    """:class:`ViTDims` of a timm ``VisionTransformer`` (or a pruned view of one: its ``backbone``)."""
    model = getattr(model, "backbone", model)
    proj = model.patch_embed.proj
    patch_dim = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    heads = 2 if getattr(model, "head_dist", None) is not None else 1
    return ViTDims(model.embed_dim, len(model.blocks), model.blocks[0].mlp.fc1.out_features, patch_dim,
                   model.patch_embed.num_patches, model.num_prefix_tokens, model.num_classes, heads)


def tokens_per_block(depth: int, n0: Sequence[int], stages: Sequence[tuple[int, bool, Sequence[int]]]
                     ) -> tuple[list[list[int]], list[list[int]]]:
    """Tokens per image in the attention and MLP half of every block.

    Args:
        depth: number of blocks.
        n0: tokens per image entering block 0 (prefix included), one entry per image.
        stages: ``(block, mid, counts)`` per pruning stage in block order; ``counts`` = tokens per image after
            the stage (prefix and any fused token included). PRE stages (``mid=False``) apply before the block,
            MID stages between its attention and its MLP.

    Returns:
        ``(attn, mlp)``: ``depth`` lists of per-image token counts.
    """
    cur = list(n0)
    by_block = {b: (mid, list(c)) for b, mid, c in stages}
    attn, mlp = [], []
    for i in range(depth):
        st = by_block.get(i)
        if st is not None and not st[0]:
            cur = st[1]
        attn.append(list(cur))
        if st is not None and st[0]:
            cur = st[1]
        mlp.append(list(cur))
    return attn, mlp


def vit_flops(dims: ViTDims, attn: Sequence[Sequence[int]], mlp: Sequence[Sequence[int]]) -> list[float]:
    """FLOPs per image of a forward whose blocks see ``attn[b][i]`` / ``mlp[b][i]`` tokens (see module doc)."""
    C, hid = dims.embed_dim, dims.mlp_hidden
    batch = len(attn[0]) if attn else 0
    base = 2.0 * dims.num_patches * dims.patch_dim * C + 2.0 * C * dims.num_classes * dims.num_heads_out
    out = [base] * batch
    for a_blk, m_blk in zip(attn, mlp):
        for i in range(batch):
            na, nm = a_blk[i], m_blk[i]
            out[i] += 8.0 * na * C * C + 4.0 * na * na * C + 4.0 * nm * C * hid
    return out


def mean_gflops(dims: ViTDims, stages: Sequence[tuple[int, bool, Sequence[int]]], batch: int) -> float:
    """Mean GFLOPs per image for ``batch`` images starting at the full token count, pruned by ``stages``."""
    attn, mlp = tokens_per_block(dims.depth, [dims.num_prefix + dims.num_patches] * batch, stages)
    f = vit_flops(dims, attn, mlp)
    return sum(f) / max(1, len(f)) / 1e9
