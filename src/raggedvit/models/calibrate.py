"""Threshold-L2 calibration: per-stage absolute thresholds that keep a target fraction of tokens.

Stage by stage (spec section 4.2): run the model with the thresholds found so far (later stages keep
everything), pool the L2 scores the method reports (:meth:`~raggedvit.pruning.ThresholdL2.scores`) for the
patch tokens still present at stage ``s`` over the calibration images, and set ``T_s`` to their
``(1 - keep_rate)`` quantile. Offline tool: reads values back to the host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..pruning.ragged import Selection
from ..pruning.stage import StageInput
from ..pruning.threshold_l2 import CALIBRATION_KEEP_RATE, ThresholdL2, quantile_threshold
from .pruned import prune

__all__ = ["calibrate_thresholds"]


@dataclass(frozen=True, kw_only=True)
class _Recording(ThresholdL2):
    """:class:`ThresholdL2` that also keeps, at stage ``record``, the scores of the candidates (host fp32)."""

    record: int = 0
    pooled: list = field(default_factory=list, compare=False, repr=False)

    def select(self, inp: StageInput) -> Selection:
        if inp.plan.index == self.record:
            self.pooled.append(self.scores(inp)[inp.candidates()].float().cpu())
        return super().select(inp)


def _batches(images, batch_size: int, device: torch.device) -> Iterable[torch.Tensor]:
    chunks = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    for batch in chunks:
        if isinstance(batch, (tuple, list)):  # (images, labels) from a DataLoader
            batch = batch[0]
        yield batch.to(device)


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, images, *, keep_rate: float | tuple[float, ...] = CALIBRATION_KEEP_RATE,
                         stages: tuple[int, ...] = (3, 6, 9), batch_size: int = 64, k_min: int = 1,
                         k_max: int | None = None) -> tuple[float, ...]:
    """Absolute Threshold-L2 thresholds, one per stage, for ``prune(model, "threshold_l2", thresholds=...)``.

    Args:
        model: the timm model (not a pruned view).
        images: ``(N, 3, H, W)`` calibration images (split into ``batch_size`` chunks) or an iterable of
            image batches or ``(images, labels)`` pairs (e.g. a DataLoader); iterated once per stage and moved
            to the model's device.
        keep_rate: per-stage keep fraction of the tokens present at that stage (a float or one per stage);
            default :data:`~raggedvit.pruning.threshold_l2.CALIBRATION_KEEP_RATE` (0.85: loses at most 1 point of
            top-1 on the trained ViT-Tiny, where 0.7 loses 4.6).
        stages, k_min, k_max: as for :class:`~raggedvit.pruning.ThresholdL2`.

    Returns:
        ``tuple`` of host floats, one per stage.
    """
    rates = (keep_rate,) * len(stages) if isinstance(keep_rate, (int, float)) else tuple(keep_rate)
    if len(rates) != len(stages):
        raise ValueError(f"calibrate_thresholds: {len(stages)} stages but {len(rates)} keep rates")
    device = next(model.parameters()).device
    found: list[float] = []
    for s in range(len(stages)):
        thresholds = tuple(found) + (0.0,) * (len(stages) - s)  # norms are >= 0: later stages keep all
        method = _Recording(stages=stages, thresholds=thresholds, k_min=k_min, k_max=k_max, record=s)
        pruned = prune(model, method, layout="padded").eval()
        for batch in _batches(images, batch_size, device):
            pruned.forward_features(batch)
        found.append(quantile_threshold(torch.cat(method.pooled), rates[s]))
    return tuple(found)
