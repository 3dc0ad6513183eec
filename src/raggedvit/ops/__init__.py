"""Ops: launchers, ``torch.library`` registration and the public attention functions."""

from .attention import check_cu_seqlens, ragged_attention, warmup
from .reference import ragged_attention_reference

__all__ = ["ragged_attention", "ragged_attention_reference", "check_cu_seqlens", "warmup"]
