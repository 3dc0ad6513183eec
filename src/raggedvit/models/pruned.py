"""``raggedvit.prune``: a timm DeiT/ViT that prunes tokens on packed ragged (or padded) batches.

The returned :class:`PrunedViT` shares every parameter and submodule with the timm model it was built
from (registered under the same names, so ``state_dict`` keys are timm's; DynamicViT adds its predictors
under ``score_predictor.{i}``, the official checkpoint layout). timm itself is not patched: the original
model keeps working unchanged, and timm's ``_pos_embed`` and ``forward_head`` are called on it.
Inference only (no gradients through the selection; dropout and drop-path follow ``train()``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.backends import get_backend
from ..pruning import dynamicvit
from .config import LAYOUTS, PruningConfig, StagePlan, make_config, plan_stages
from .forward import PruneStats, attend_packed, attend_padded, live_rows_unsupported, run

__all__ = ["PrunedViT", "prune", "check_model"]


def check_model(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a timm ViT this library supports (DeiT-style: CLS token,
    optional distillation token, no register tokens, token pooling, fixed image size, pre-norm blocks with
    a fused qkv attention)."""
    try:
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError as e:  # pragma: no cover
        raise ValueError("prune: timm is required") from e
    if isinstance(model, PrunedViT):
        raise ValueError("prune: model is already pruned; pass the original timm model (model.backbone)")
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"prune: expected a timm VisionTransformer (e.g. deit_small_patch16_224), "
                         f"got {type(model).__name__}")
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("no class token")
    if getattr(model, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(model, "global_pool", None) != "token" or getattr(model, "attn_pool", None) is not None:
        problems.append(f"global_pool={getattr(model, 'global_pool', None)!r} (need 'token')")
    if getattr(model, "dynamic_img_size", False):
        problems.append("dynamic_img_size=True (the schedule needs a fixed token count)")
    for i, blk in enumerate(model.blocks):
        attn = getattr(blk, "attn", None)
        if type(blk) is not Block or not all(hasattr(attn, a) for a in ("qkv", "proj", "num_heads", "head_dim")):
            problems.append(f"block {i} is {type(blk).__name__} (need timm's pre-norm Block with fused qkv)")
            break
    if problems:
        raise ValueError(f"prune: unsupported {type(model).__name__}: {'; '.join(problems)}")


def _predictor_width(p: nn.Module) -> int | None:
    """Input width of a :class:`~raggedvit.pruning.dynamicvit.Predictor`; None for other modules (any
    ``nn.Module`` with its call signature is accepted)."""
    return p.in_conv[1].in_features if isinstance(p, dynamicvit.Predictor) else None


class PrunedViT(nn.Module):
    """A pruned view of a timm ViT. Build it with :func:`raggedvit.prune`.

    ``forward(images: (B, 3, H, W)) -> logits (B, num_classes)`` (timm's head convention: distilled models
    average the CLS and DIST heads in eval). After each forward, :attr:`last_stats` holds a
    :class:`~raggedvit.models.forward.PruneStats` (kept tokens per stage, surviving patches).

    Attributes:
        pruning_config: the validated :class:`~raggedvit.models.config.PruningConfig`.
        plan: host-side stage schedule (:class:`~raggedvit.models.config.StagePlan` per stage).
        layout: ``"packed"`` or ``"padded"``.
        attention: backend name (packed layout).
        backbone: the timm model this view shares its weights with.
    """

    def __init__(self, model: nn.Module, config: PruningConfig, plan: tuple[StagePlan, ...], layout: str,
                 attention: str, predictors: nn.ModuleList | None) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", model)  # not a submodule: its children are registered below
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
        for name, m in model.named_children():
            self.add_module(name, m)
        if predictors is not None:
            self.score_predictor = predictors
        self.pruning_config = config
        self.plan = plan
        self.layout = layout
        self.attention = attention
        self.live_rows: bool | str = False  # see prune(live_rows=...)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.num_patches = model.patch_embed.num_patches
        self.last_stats: PruneStats | None = None
        self._backend = get_backend(attention) if layout == "packed" else None
        self._checked_device: torch.device | None = None
        self.train(model.training)

    def train(self, mode: bool = True) -> PrunedViT:
        super().train(mode)
        self.backbone.training = mode  # timm's forward_head reads the model's own flag
        return self

    def _attend(self, device: torch.device):
        if self._backend is None:
            return attend_padded
        if device != self._checked_device:
            reason = self._backend.unavailable_reason(device)
            if reason is not None:
                raise RuntimeError(f"attention backend {self.attention!r} cannot run on {device}: {reason}")
            self._checked_device = device
        return attend_packed(self._backend)

    def forward_features(self, images: torch.Tensor, *, probe=None) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, P, C)`` final-normed prefix tokens (CLS, and DIST if distilled)."""
        live = self.live_rows
        if live and (self.training or torch.is_grad_enabled()):
            if live is True:
                raise RuntimeError("PrunedViT: live_rows=True runs forward-only kernels: call eval() and run under "
                                   "torch.no_grad() or torch.inference_mode()")
            live = False
        if live == "auto" and not _auto_applies(images):
            live = False
        prefix, stats = run(self.backbone, images, self.pruning_config, self.plan,
                            getattr(self, "score_predictor", None), packed=self.layout == "packed",
                            attend=self._attend(images.device), probe=probe,
                            live_rows=live)
        self.last_stats = stats
        return prefix

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's head on the prefix tokens ``(B, P, C)``."""
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        c = self.pruning_config
        return f"method={c.method!r}, variant={c.variant!r}, stages={c.stages}, layout={self.layout!r}, " \
               f"attention={self.attention!r}"


def _auto_applies(images: torch.Tensor) -> bool:
    """``live_rows="auto"`` is a speed policy: CUDA only (under the Triton interpreter the kernels are slow)."""
    return images.is_cuda


def prune(model: nn.Module, method: str, *, layout: str = "packed", attention: str = "triton",
          live_rows: bool | str = "auto", **options) -> PrunedViT:
    """Token-pruned view of a timm DeiT/ViT that shares its weights.

    Args:
        model: a timm ``VisionTransformer`` / ``VisionTransformerDistilled`` (``deit_{tiny,small,base}_patch16_224``,
            ``deit_base_patch16_384``, the ``_distilled`` variants with CLS + DIST prefix tokens, ...).
        method: ``"none"``, ``"threshold_l2"``, ``"dynamicvit"``, ``"evit"`` or ``"ats"``.
        layout: ``"packed"``: token rows ``(total, C)`` + ``cu_seqlens`` through the whole network, static
            capacities, no host sync (CUDA-graph ready); ``"padded"``: the baseline, kept tokens in a
            ``(B, max_kept, C)`` grid padded to the batch maximum, SDPA with a key-padding mask.
        attention: packed layout only: a backend name of :func:`raggedvit.ops.backends.get_backend`
            (``"triton"``, ``"reference"``, ...). Ignored by the padded layout (always SDPA).
        live_rows: packed layout, inference: run the token-wise layers of a stage as Triton kernels that read
            the live row count on the device and touch only the live rows of the static buffer
            (:class:`~raggedvit.models.forward.LiveRows`: LayerNorm, qkv, proj + residual, fc1 + GELU,
            fc2 + residual) instead of timm's modules on every buffer row. ``True``: every stage (needs plain
            pre-norm blocks, i.e. DeiT/ViT without layer scale, CUDA or the Triton interpreter, eval mode and
            no autograd: errors otherwise); ``False``: never; ``"auto"`` (default): on CUDA, in eval under
            ``torch.no_grad()``/``inference_mode()``, for supported blocks, on the stages whose buffer is large
            enough to gain: >= 1024 rows with unused rows (adaptive stages), >= 32768 rows otherwise.
        **options: keyword-only method options (defaults from the spec):

            * all methods but ``"none"``: ``variant`` (``"fixed"`` or ``"adaptive"``; default ``"fixed"``
              for dynamicvit/evit, ``"adaptive"`` for ats/threshold_l2), ``stages`` (block indices,
              default ``(3, 6, 9)``, ATS ``(3, ..., 11)``), ``keep_rate`` in (0, 1] (default 0.7; ATS
              fixed 0.9 per stage).
            * ``dynamicvit``: ``keep_threshold=0.5`` (adaptive: keep ``p_keep > threshold``), ``k_min=1``,
              ``k_max=None``, ``predictors`` (an ``nn.ModuleList`` of one module per stage with the call signature
              of :class:`~raggedvit.pruning.dynamicvit.Predictor`, ``(x, seg_ids, dense_rows, cand) -> (R, 2)``
              log-probabilities, to share; default random init; see :func:`load_dynamicvit_checkpoint`).
            * ``evit``: ``fuse=True``, ``mass`` (adaptive attention-mass fraction, default ``keep_rate``),
              ``k_min=1``, ``k_max=None``.
            * ``k_max`` (adaptive variants of dynamicvit, evit, threshold_l2): an int for every stage, or a
              tuple with one int (or None) per stage; it also caps that stage's buffer (``StagePlan.width_out``),
              so a per-stage cap shrinks the packed buffers of adaptive stages.
            * ``ats``: ``num_samples`` (default ``num_patches``: 196 at 224 px).
            * ``threshold_l2``: ``thresholds`` (absolute, one per stage: see
              :func:`calibrate_thresholds`) or ``alpha=1.0`` (relative: ``alpha`` x the image's mean
              norm), ``k_min=1``, ``k_max=None``. Fixed variant: top-k with DynamicViT's schedule.

    Returns:
        :class:`PrunedViT`. Per-stage kept counts of the last forward: ``pruned.last_stats``.

    Raises:
        ValueError: unknown method, layout, backend or option, an option out of range, or an unsupported
            model; all before any forward.
    """
    check_model(model)
    if layout not in LAYOUTS:
        raise ValueError(f"prune: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    get_backend(attention)  # ValueError listing the valid backends
    num_patches = model.patch_embed.num_patches
    config, predictors = make_config(method, depth=len(model.blocks), num_patches=num_patches, **options)
    plan = plan_stages(config, model.num_prefix_tokens, num_patches)
    if method == "dynamicvit":
        embed_dim = model.embed_dim
        if predictors is None:
            predictors = dynamicvit.make_predictors(embed_dim, len(config.stages))
            ref = next(model.parameters())
            predictors.to(device=ref.device, dtype=ref.dtype)
        elif not (isinstance(predictors, nn.ModuleList) and len(predictors) == len(config.stages) and all(
                isinstance(p, nn.Module) and _predictor_width(p) in (None, embed_dim) for p in predictors)):
            raise ValueError(f"prune: predictors must be an nn.ModuleList of {len(config.stages)} "
                             f"Predictor({embed_dim})-like modules (one per stage), got {predictors!r:.200}")
    if not (isinstance(live_rows, bool) or live_rows == "auto"):
        raise ValueError(f"prune: live_rows must be True, False or 'auto', got {live_rows!r}")
    if live_rows == "auto" and (layout != "packed" or any(live_rows_unsupported(b) for b in model.blocks)):
        live_rows = False
    if live_rows is True:
        if layout != "packed":
            raise ValueError("prune: live_rows=True needs layout='packed'")
        for i, blk in enumerate(model.blocks):
            why = live_rows_unsupported(blk)
            if why is not None:
                raise ValueError(f"prune: live_rows=True cannot run block {i}: {why}")
    pruned = PrunedViT(model, config, plan, layout, attention, predictors)
    pruned.live_rows = live_rows
    return pruned
