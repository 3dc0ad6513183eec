"""Model integration: timm DeiT/ViT pruned on packed ragged or padded batches.

Imports :mod:`raggedvit.pruning` and :mod:`raggedvit.ops`; names no pruning method (they are objects of
:mod:`raggedvit.pruning`). :func:`prune` builds a :class:`PrunedViT`; :func:`calibrate_thresholds`
calibrates Threshold-L2; :func:`load_dynamicvit_checkpoint` loads official DynamicViT checkpoints.
"""

from ..pruning import METHODS, StagePlan
from .calibrate import calibrate_thresholds
from .checkpoint import load_dynamicvit_checkpoint
from .pruned import PrunedViT, check_model, prune
from .stats import PruneStats

__all__ = ["prune", "PrunedViT", "PruneStats", "StagePlan", "METHODS", "check_model", "calibrate_thresholds",
           "load_dynamicvit_checkpoint"]
