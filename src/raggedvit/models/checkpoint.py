"""Loading official DynamicViT checkpoints (``raoyongming/DynamicViT`` layout) into a pruned model.

The official ``.pth`` is a dict whose ``"model"`` entry holds timm-named backbone keys (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.k.*``, ``norm``, ``head``) plus ``score_predictor.{i}.in_conv.{0,1}`` and
``score_predictor.{i}.out_conv.{0,2,4}``. A :class:`~raggedvit.models.pruned.PrunedViT` built with
``method="dynamicvit"`` has exactly these keys, so loading is a plain ``load_state_dict``. The backbone
weights are shared with the timm model the pruned view was built from, so they change there too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..pruning.dynamicvit import DynamicViT
from .pruned import PrunedViT

__all__ = ["load_dynamicvit_checkpoint"]


def load_dynamicvit_checkpoint(pruned: PrunedViT, checkpoint: str | os.PathLike | Mapping, *,
                               strict: bool = True):
    """Load backbone + predictor weights from an official DynamicViT checkpoint.

    Args:
        pruned: a model from ``prune(model, "dynamicvit", random_predictors=True, ...)`` (predictors to be
            overwritten) with as many stages as the checkpoint.
        checkpoint: a path to the ``.pth`` (loaded on CPU with ``weights_only=True``) or an already loaded
            dict (``{"model": state_dict}`` or the state dict itself). A ``module.`` prefix (DDP) is removed.
        strict: as ``nn.Module.load_state_dict``.

    Returns:
        ``load_state_dict``'s ``(missing_keys, unexpected_keys)``.
    """
    if not isinstance(pruned, PrunedViT) or not isinstance(pruned.method, DynamicViT):
        raise ValueError("load_dynamicvit_checkpoint: need a model from prune(model, 'dynamicvit')")
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        state = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    n_pred = len({k.split(".")[1] for k in state if k.startswith("score_predictor.")})
    if n_pred and n_pred != len(pruned.score_predictor):
        raise ValueError(f"load_dynamicvit_checkpoint: checkpoint has {n_pred} predictors, the model "
                         f"{len(pruned.score_predictor)} stages")
    return pruned.load_state_dict(state, strict=strict)
