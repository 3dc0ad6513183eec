"""Model integration: timm DeiT/ViT pruned on packed ragged or padded batches.

Imports :mod:`raggedvit.pruning` and :mod:`raggedvit.ops`. :func:`prune` builds a :class:`PrunedViT`;
:func:`calibrate_thresholds` calibrates Threshold-L2; :func:`load_dynamicvit_checkpoint` loads official
DynamicViT checkpoints.
"""

from .calibrate import calibrate_thresholds
from .checkpoint import load_dynamicvit_checkpoint
from .config import METHODS, PruningConfig, StagePlan
from .forward import PruneStats
from .pruned import PrunedViT, check_model, prune

__all__ = ["prune", "PrunedViT", "PruneStats", "PruningConfig", "StagePlan", "METHODS", "check_model",
           "calibrate_thresholds", "load_dynamicvit_checkpoint"]
