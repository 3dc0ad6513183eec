"""DynamicViT (Rao et al., NeurIPS 2021): learned keep predictors before blocks 3, 6, 9 (PRE).

:class:`Predictor` matches the official ``PredictorLG`` (state-dict names ``in_conv.{0,1}``,
``out_conv.{0,2,4}``; its LayerNorm uses the default eps 1e-5). Keep rules on a dense ``(B, L)`` view:

* fixed (published): the ``K_s = int(num_patches * rho ** (s + 1))`` best patch tokens by keep score,
  in descending-score order (:func:`keep_counts`, :func:`select_topk`);
* adaptive: every patch token with ``p_keep > threshold`` (default 0.5), at least ``k_min`` and at most
  ``k_max``, in descending-score order (:func:`select_threshold`).

Predictors need training (there is no official DeiT-Tiny checkpoint): ``prune(model, "dynamicvit")``
without ``predictors=`` raises ValueError saying how to pass trained ones; random-init predictors (which
prune arbitrarily: speed measurements only) need ``random_predictors=True``.
:class:`DynamicViT` is the method object (``prune(model, DynamicViT(...))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.select import best_first_select
from .method import BoundedPruner, check_rate, keep_counts
from .ragged import Selection, const, dense_view
from .selection import candidate_scores, clamp_count, fixed_count, num_candidates, prefixed
from .stage import StageInput

__all__ = ["DynamicViT", "Predictor", "make_predictors", "keep_counts", "keep_scores", "select_topk",
           "select_threshold"]


class Predictor(nn.Module):
    """Per-token keep/drop log-probabilities from a token and its image's mean feature (``PredictorLG``).

    ``z = GELU(W1 LN(x))``; ``h = [z[:C/2], mean over the image's patch tokens of z[C/2:]]``;
    ``log_softmax(MLP(h))`` with output channel 0 = keep, 1 = drop.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 4:
            raise ValueError(f"Predictor: embed_dim must be a multiple of 4, got {embed_dim}")
        self.in_conv = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2), nn.GELU(),
            nn.Linear(embed_dim // 2, embed_dim // 4), nn.GELU(),
            nn.Linear(embed_dim // 4, 2), nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor, seg_ids: torch.Tensor, dense_rows: torch.Tensor,
                cand: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(R, 2)`` for every row of ``x: (R, C)`` (token-wise layers run on rows).

        Args:
            x: ``(R, C)`` token rows (packed or a flattened padded grid).
            seg_ids: ``(R,)`` int64 image of each row (``B`` for unused rows).
            dense_rows: ``(B, L)`` int64 row of each position (see :class:`~.ragged.RaggedMeta`).
            cand: ``(B, L)`` bool, the patch tokens that form each image's global mean.
        """
        z = self.in_conv(x)
        half = z.shape[-1] // 2
        # where, not a product: rows past the live total may hold garbage (NaN * 0 = NaN)
        zg = torch.where(cand[:, :, None], z[:, half:][dense_rows], const(0, z.dtype, z.device))  # (B, L, C/2)
        g = zg.sum(1) / cand.sum(1, keepdim=True).clamp(min=1)  # (B, C/2): plain mean over current patch tokens
        g = F.pad(g, (0, 0, 0, 1))[seg_ids]  # (R, C/2); unused rows (seg_ids = B) read zeros
        return self.out_conv(torch.cat([z[:, :half], g], dim=-1))


def make_predictors(embed_dim: int, num_stages: int = 3) -> nn.ModuleList:
    """``num_stages`` randomly initialised predictors (official key layout ``score_predictor.{i}``)."""
    return nn.ModuleList(Predictor(embed_dim) for _ in range(num_stages))


def keep_scores(log_probs: torch.Tensor) -> torch.Tensor:
    """Keep score ``log p_keep`` (channel 0) of predictor outputs ``(..., 2)``."""
    return log_probs[..., 0]


def select_topk(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, k: int) -> Selection:
    """Fixed count: prefix tokens, then the ``k`` best patch tokens by ``score: (B, L)``, best first.

    Every image must hold at least ``k`` patch tokens (true for uniform fixed-count schedules);
    ``valid=None``: every position is live.
    """
    key = candidate_scores(score, valid, num_prefix, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    index = prefixed(order[:, :k], num_prefix)
    return Selection(index, fixed_count(score.shape[0], num_prefix + k, score.device), num_prefix + k, True)


def select_threshold(score: torch.Tensor, valid: torch.Tensor | None, num_prefix: int, *, threshold: float = 0.5,
                     k_min: int = 1, k_max: int | None = None) -> Selection:
    """Adaptive count: patch tokens with ``p_keep = exp(score) > threshold``, best first.

    At least ``min(k_min, available)`` and at most ``k_max`` patch tokens per image. The output width is
    the host bound ``num_prefix + min(L - num_prefix, k_max)``.
    """
    width = score.shape[1] - num_prefix
    vals, order = torch.sort(candidate_scores(score, valid, num_prefix, float("-inf")), dim=1, descending=True,
                             stable=True)
    passing = (vals > math.log(threshold)).sum(1)  # the passing tokens are a best-first prefix
    num = clamp_count(passing, k_min, k_max, num_candidates(valid, num_prefix), width)
    bound = width if k_max is None else min(width, k_max)
    return Selection(prefixed(order[:, :bound], num_prefix), num + num_prefix, num_prefix + bound, False)


@dataclass(frozen=True, kw_only=True)
class DynamicViT(BoundedPruner):
    """DynamicViT before blocks ``stages``.

    Args:
        variant: ``"fixed"`` (default: DynamicViT's schedule, :func:`keep_counts`) or ``"adaptive"``.
        stages, keep_rate, k_min, k_max: see :class:`~.method.BoundedPruner`.
        keep_threshold: adaptive: keep ``p_keep > keep_threshold``, in (0, 1).
        predictors: trained keep predictors: an ``nn.ModuleList`` of one module per stage with
            :class:`Predictor`'s call signature, ``(x, seg_ids, dense_rows, cand) -> (R, 2)``
            log-probabilities, shared with the caller. Registered on the pruned model as ``score_predictor``
            (the official checkpoint layout: a checkpoint's ``score_predictor.{i}.*`` keys load into
            :func:`make_predictors` modules with ``load_state_dict``; ``raggedvit eval/demo --checkpoint`` does
            that). Required unless ``random_predictors=True``.
        random_predictors: with no ``predictors``, build randomly initialised ones instead of raising. They
            prune arbitrarily (accuracy is meaningless): for speed measurements, or to load an official
            checkpoint into afterwards (:func:`raggedvit.models.load_dynamicvit_checkpoint`).
    """

    name: ClassVar[str] = "dynamicvit"
    module_name: ClassVar[str] = "score_predictor"
    keep_threshold: float = 0.5
    predictors: nn.ModuleList | None = field(default=None, compare=False, repr=False)
    random_predictors: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if check_rate(self.name, "keep_threshold", self.keep_threshold) >= 1.0:
            raise ValueError(f"{self.name}: keep_threshold must be < 1 (p_keep > threshold)")
        if not isinstance(self.random_predictors, bool):
            raise ValueError(f"{self.name}: random_predictors must be True or False, got {self.random_predictors!r}")
        if self.random_predictors and self.predictors is not None:
            raise ValueError(f"{self.name}: give predictors= or random_predictors=True, not both")

    def modules(self, model: nn.Module) -> nn.ModuleList:
        """The predictors (random ones on ``model``'s device and dtype with ``random_predictors=True``);
        ValueError saying how to pass trained ones when there are none."""
        embed_dim, n = model.embed_dim, len(self.stages)
        p = self.predictors
        if p is None:
            if not self.random_predictors:
                raise ValueError(
                    f"{self.name}: needs trained keep predictors (random ones prune arbitrarily). Pass "
                    f"predictors=an nn.ModuleList of {n} raggedvit.pruning.dynamicvit.Predictor({embed_dim}) "
                    "modules loaded from a DynamicViT checkpoint's 'score_predictor.{i}.*' weights (from the "
                    "command line: --checkpoint PATH holding the timm keys and the score_predictor.* keys), or "
                    "random_predictors=True for speed measurements only")
            ref = next(model.parameters())
            return make_predictors(embed_dim, n).to(device=ref.device, dtype=ref.dtype)
        if not (isinstance(p, nn.ModuleList) and len(p) == n and all(
                isinstance(m, nn.Module) and _width(m) in (None, embed_dim) for m in p)):
            raise ValueError(f"{self.name}: predictors must be an nn.ModuleList of {n} Predictor({embed_dim})-like "
                             f"modules (one per stage), got {p!r:.200}")
        return p

    def select(self, inp: StageInput) -> Selection:
        plan, x, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
        rows = keep_scores(inp.module(x, meta.seg_ids, meta.dense_rows, inp.candidates()))
        k_max = self.stage_k_max(plan.index)
        if inp.kernels:
            rule = dict(k=plan.keep) if self.fixed else dict(threshold=math.log(self.keep_threshold),
                                                             k_min=self.k_min, k_max=k_max)
            index, count, _ = best_first_select(rows, x, meta.dense_rows, meta.lengths, P, plan.width_out, **rule)
            if self.fixed:
                count = fixed_count(meta.batch, plan.width_out, x.device)
            return Selection(index, count, plan.width_out, self.fixed)
        score = dense_view(rows, meta)
        if self.fixed:
            return select_topk(score, inp.valid, P, plan.keep)
        return select_threshold(score, inp.valid, P, threshold=self.keep_threshold, k_min=self.k_min, k_max=k_max)

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` keep log-probabilities of the stage's predictor."""
        meta = inp.meta
        return dense_view(keep_scores(inp.module(inp.x, meta.seg_ids, meta.dense_rows, inp.candidates())), meta)


def _width(p: nn.Module) -> int | None:
    """Input width of a :class:`Predictor`; None for other modules (any module with its call signature)."""
    return p.in_conv[1].in_features if isinstance(p, Predictor) else None
