"""Ops: launchers, ``torch.library`` registration, the public attention functions and the live-row
token-wise ops (LayerNorm, Linear + GELU / residual), ToMe's merge (three kernels) and the patch matrix of the
patch embedding."""

from .attention import check_cu_seqlens, ragged_attention, warmup
from .layernorm import ragged_layer_norm
from .linear import ragged_linear
from .patchify import patchify
from .reference import ragged_attention_reference
from .tome import tome_merge

__all__ = ["ragged_attention", "ragged_attention_reference", "check_cu_seqlens", "warmup", "ragged_linear",
           "ragged_layer_norm", "tome_merge", "patchify"]
