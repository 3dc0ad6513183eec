"""raggedvit: token pruning for Vision Transformers that pays off in wall-clock time.

Layers (lower never imports upper): ``kernels`` (Triton) -> ``ops`` (launchers, ``torch.library`` ops,
public attention functions) -> ``pruning`` (pure tensor functions on packed ragged batches) -> ``models``
(timm integration) -> ``bench`` and ``cli``.
"""

from .models import prune
from .ops import (
                  check_cu_seqlens,
                  ragged_attention,
                  ragged_attention_reference,
                  ragged_layer_norm,
                  ragged_linear,
                  warmup,
)

__version__ = "0.1.0"

__all__ = ["prune", "ragged_attention", "ragged_attention_reference", "check_cu_seqlens", "warmup", "ragged_linear",
           "ragged_layer_norm", "__version__"]
