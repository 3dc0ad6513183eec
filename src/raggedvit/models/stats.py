"""What the last forward of a pruned model kept: :class:`PruneStats`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pruning.ragged import RaggedMeta

__all__ = ["PruneStats"]


@dataclass(frozen=True, eq=False)
class PruneStats:
    """What the last forward of a pruned model kept (device tensors, stored without a sync).

    Treat the tensors as read-only: fixed-count stages return shared cached constants (kept counts, metadata).
    :attr:`kept_patch_mask` and :attr:`token_index` are computed on access (a few small ops, outside the
    forward and any captured graph) from the final buffer's token ids, so they always describe the last
    forward or graph replay.

    Attributes:
        stage_blocks: block index of every pruning stage (host ints).
        kept: per stage, ``(B,)`` int64 tokens per image after the stage, prefix tokens (CLS, DIST) and an
            EViT fused token included.
        stage_max_seqlen: per stage, the host bound on tokens per image after it (buffer sizing).
        final_meta: layout of the final buffer (``cu_seqlens`` for packed).
        token_ids: ``(B, final_meta.max_seqlen)`` int32 original token index of every position of the final
            buffer's dense view (prefix tokens included: CLS = 0; -1 = fused token; positions past an image's
            length hold any value).
        num_prefix: prefix tokens per image (host int).
    """

    stage_blocks: tuple[int, ...]
    kept: tuple[torch.Tensor, ...]
    stage_max_seqlen: tuple[int, ...]
    final_meta: RaggedMeta
    token_ids: torch.Tensor
    num_prefix: int
    num_patches: int

    @property
    def kept_patch_mask(self) -> torch.Tensor:
        """``(B, num_patches)`` bool, original patches still present in the last block (an EViT fused token is
        not a patch)."""
        meta, P, n = self.final_meta, self.num_prefix, self.num_patches
        t = self.token_ids.long()
        live = meta.dense_valid & (t >= P)
        mask = torch.zeros(meta.batch, n + 1, dtype=torch.bool, device=t.device)
        mask.scatter_(1, torch.where(live, t - P, n), live)
        return mask[:, :n]

    @property
    def token_index(self) -> torch.Tensor:
        """``(capacity,)`` int32 original token index of every row of the final buffer (prefix tokens
        included: CLS = 0; -1 = fused token or unused row)."""
        meta, tok = self.final_meta, self.token_ids
        if meta.dense_identity:  # row b * L + l = position l of image b
            return torch.where(meta.dense_valid, tok, -1).view(-1)
        # packed: scatter the live positions to their rows, -1 elsewhere (the last row collects the rest)
        dest = torch.where(meta.dense_valid, meta.dense_rows, meta.capacity).view(-1)
        index = tok.new_full((meta.capacity + 1,), -1).index_copy_(0, dest, tok.reshape(-1))
        return index[: meta.capacity]
