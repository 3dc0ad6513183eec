"""``raggedvit.prune``: a timm DeiT/ViT that prunes tokens on packed ragged (or padded) batches.

The returned :class:`PrunedViT` shares every parameter and submodule with the timm model it was built
from (registered under the same names, so ``state_dict`` keys are timm's; DynamicViT adds its predictors
under ``score_predictor.{i}``, the official checkpoint layout). timm itself is not patched: the original
model keeps working unchanged, and timm's ``_pos_embed`` and ``forward_head`` are called on it.
Inference only (no gradients through the selection; dropout and drop-path follow ``train()``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..ops.backends import get_backend, key_bias_backends
from ..pruning.method import Method
from ..pruning.registry import make_method
from ..pruning.stage import StagePlan
from .forward import attend_packed, attend_padded, run
from .inputs import check_images, empty_logits, input_spec
from .live_rows import live_rows_unsupported
from .stats import PruneStats

__all__ = ["PrunedViT", "prune", "check_model", "LAYOUTS"]

LAYOUTS = ("packed", "padded")
PADDINGS = ("max", "static")  # prune(layout="padded", padding=...)


def check_model(model: nn.Module) -> None:
    """Raise ValueError unless ``model`` is a timm ViT this library supports: a class token, optional
    distillation and register tokens (prefix tokens: never pruned), token pooling, a fixed image size, and
    pre-norm blocks with a fused qkv attention."""
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


class PrunedViT(nn.Module):
    """A pruned view of a timm ViT. Build it with :func:`raggedvit.prune`.

    ``forward(images: (B, 3, H, W)) -> logits (B, num_classes)`` (timm's head convention: distilled models
    average the CLS and DIST heads in eval). After each forward, :attr:`last_stats` holds a
    :class:`~raggedvit.models.stats.PruneStats` (kept tokens per stage, surviving patches).

    ``torch.compile(pruned, fullgraph=True)`` works for every method, variant and layout (the kernels are
    ``torch.ops.raggedvit.*`` custom ops): :attr:`last_stats` is still set after each call of the compiled
    model (its tensors are extra outputs of the graph; with ``mode="reduce-overhead"`` they live in the
    CUDA-graph pool, valid until the next call). ``torch.export`` (:mod:`raggedvit.models.export`) records no
    stats (:attr:`last_stats` is left as it was; an exported program returns the logits only).

    Attributes:
        method: the :class:`~raggedvit.pruning.Method`, its model-dependent defaults resolved.
        plan: host-side stage schedule (:class:`~raggedvit.pruning.StagePlan` per stage).
        layout: ``"packed"`` or ``"padded"``.
        attention: backend name (packed layout).
        backbone: the timm model this view shares its weights with.
    """

    def __init__(self, model: nn.Module, method: Method, plan: tuple[StagePlan, ...], layout: str,
                 attention: str, modules: nn.Module | None) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", model)  # not a submodule: its children are registered below
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
        for name, m in model.named_children():
            self.add_module(name, m)
        # what timm's _pos_embed reads besides those: run() calls it on this module, so that torch.export sees
        # cls_token / pos_embed as the parameters they are (read through the unregistered backbone, it lifts
        # them as constants: frozen copies in the program that do not follow the model's weights)
        for name in ("cls_token", "reg_token", "dist_token", "pos_embed", "dynamic_img_size", "no_embed_class"):
            if hasattr(model, name) and name not in self._parameters:
                object.__setattr__(self, name, getattr(model, name))
        if modules is not None:  # the method's own modules (state-dict keys under method.module_name)
            self.add_module(method.module_name, modules)
        self.method = method
        self.plan = plan
        self.layout = layout
        self.attention = attention
        self.live_rows: bool | str = False  # see prune(live_rows=...)
        self.debug = False  # see prune(debug=...)
        self.padding = "max"  # see prune(padding=...)
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
            return partial(attend_padded, static_width=True) if self.padding == "static" else attend_padded
        if device != self._checked_device:
            reason = self._backend.unavailable_reason(device)
            if reason is not None:
                raise RuntimeError(f"attention backend {self.attention!r} cannot run on {device}: {reason}")
            self._checked_device = device
        return attend_packed(self._backend)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images -> ``(B, P, C)`` final-normed prefix tokens (CLS, and DIST if distilled).

        Raises ValueError / TypeError (before any kernel runs) for images the model cannot take: see
        :func:`~raggedvit.models.inputs.check_images`; an empty batch is an error here (see :meth:`forward`)."""
        check_images(images, **input_spec(self), where="PrunedViT")
        if images.shape[0] == 0:
            raise ValueError("PrunedViT.forward_features: empty batch (forward() returns (0, num_classes) logits)")
        live = self.live_rows
        if live and (self.training or torch.is_grad_enabled()):
            if live is True:
                raise RuntimeError("PrunedViT: live_rows=True runs forward-only kernels: call eval() and run under "
                                   "torch.no_grad() or torch.inference_mode()")
            live = False
        if live == "auto" and not _auto_applies(images):
            live = False
        name = self.method.module_name
        prefix, stats = run(self.backbone, images, self.method, self.plan, getattr(self, name) if name else None,
                            packed=self.layout == "packed", attend=self._attend(images.device), live_rows=live,
                            debug=self.debug, static_padding=self.layout == "padded" and self.padding == "static",
                            params=self)
        self.last_stats = None if _exporting() else stats  # an exported program returns the logits only
        return prefix

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's head on the prefix tokens ``(B, P, C)``."""
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, num_classes)``; an empty batch gives ``(0, num_classes)`` (as timm)."""
        if isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] == 0:
            check_images(images, **input_spec(self), where="PrunedViT")
            return empty_logits(self, images)
        return self.forward_head(self.forward_features(images))

    def extra_repr(self) -> str:
        pad = f", padding={self.padding!r}" if self.layout == "padded" else ""
        return f"method={self.method!r}, layout={self.layout!r}{pad}, attention={self.attention!r}"


def _exporting() -> bool:
    """True while ``torch.export`` traces. Reads the flag behind ``torch.compiler.is_exporting()``: torch 2.11's
    dynamo folds that call to True under ``torch.compile`` too (False on a torch without either)."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return flag if isinstance(flag, bool) else getattr(torch.compiler, "is_exporting", bool)()


def _auto_applies(images: torch.Tensor) -> bool:
    """``live_rows="auto"`` is a speed policy: CUDA only (under the Triton interpreter the kernels are slow)."""
    return images.is_cuda


def prune(model: nn.Module, method: str | Method, *, layout: str = "packed", attention: str = "triton",
          live_rows: bool | str = "auto", debug: bool = False, padding: str = "max", **options) -> PrunedViT:
    """Token-pruned view of a timm DeiT/ViT that shares its weights.

    ``method`` is a method object (``prune(model, M(keep_rate=0.5))``) or a name of the registry
    :data:`raggedvit.pruning.METHODS` with the method class's fields as keywords (``prune(model, M.name,
    keep_rate=0.5)``: the same model). The classes document their options.

    Args:
        model: a timm ``VisionTransformer`` / ``VisionTransformerDistilled`` (``deit_{tiny,small,base}_patch16_224``,
            ``deit_base_patch16_384``, the ``_distilled`` variants with CLS + DIST prefix tokens, ...).
        method: a :class:`~raggedvit.pruning.Method` object or a registered name.
        layout: ``"packed"``: token rows ``(total, C)`` + ``cu_seqlens`` through the whole network, static
            capacities, no host sync (CUDA-graph ready); ``"padded"``: the baseline, kept tokens in a
            ``(B, max_kept, C)`` grid padded to the batch maximum, SDPA with a key-padding mask.
        padding: padded layout only: the grid width after an adaptive stage. ``"max"`` (default): the batch
            maximum of the kept counts (one device read per adaptive stage: no CUDA graph); ``"static"``: the
            stage's static capacity (its bound on kept tokens; no host sync, CUDA-graph capturable, more padded
            rows). Fixed stages are exact either way.
        attention: packed layout only: a backend name of :func:`raggedvit.ops.backends.get_backend`
            (``"triton"``, ``"reference"``, ...). Ignored by the padded layout (always SDPA).
        live_rows: packed layout, inference: run the token-wise layers of a stage as Triton kernels that read
            the live row count on the device and touch only the live rows of the static buffer
            (:class:`~raggedvit.models.live_rows.LiveRows`: LayerNorm, qkv, proj + residual, fc1 + GELU,
            fc2 + residual) instead of timm's modules on every buffer row. ``True``: every stage (needs plain
            pre-norm blocks, i.e. DeiT/ViT without layer scale, CUDA or the Triton interpreter, eval mode and
            no autograd: errors otherwise); ``False``: never; ``"auto"`` (default): on CUDA, in eval under
            ``torch.no_grad()``/``inference_mode()``, for supported blocks: the LayerNorm kernel on every buffer
            (PyTorch's is slow for narrow models in half precision), the GEMM kernels on the buffers large
            enough to gain (qkv / proj on buffers of >= 1024 rows with unused rows: adaptive stages; fc1 + GELU
            on every buffer), cuBLAS on the others and for fc2 + residual everywhere (it wins there on an H200,
            ViT-Tiny).
        debug: validate every stage's ragged metadata on the device and raise ValueError naming what is
            wrong (:func:`raggedvit.ops.checks.check_ragged`); syncs once per stage, so not for timing or
            CUDA graphs.
        **options: fields of the method's class (with a method object: fields to replace).

    Returns:
        :class:`PrunedViT`. Per-stage kept counts of the last forward: ``pruned.last_stats``.

    Raises:
        ValueError: unknown method, layout, backend or option, an option out of range, or an unsupported
            model; all before any forward.
    """
    check_model(model)
    if layout not in LAYOUTS:
        raise ValueError(f"prune: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if padding not in PADDINGS:
        raise ValueError(f"prune: unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
    get_backend(attention)  # ValueError listing the valid backends
    try:
        method = make_method(method, **options)
        method, plan = method.bind(depth=len(model.blocks), num_prefix=model.num_prefix_tokens,
                                   num_patches=model.patch_embed.num_patches)
        modules = method.modules(model)
    except ValueError as e:
        raise ValueError(f"prune: {e}") from None
    if layout == "packed" and method.proportional_attention and not get_backend(attention).key_bias:
        raise ValueError(f"prune: {method.name} uses proportional attention (a per-key logit bias), which attention "
                         f"backend {attention!r} does not take; use one of {', '.join(key_bias_backends())} "
                         f"(or prop_attn=False)")
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
    pruned = PrunedViT(model, method, plan, layout, attention, modules)
    if not isinstance(debug, bool):
        raise ValueError(f"prune: debug must be True or False, got {debug!r}")
    pruned.live_rows = live_rows
    pruned.debug = debug
    pruned.padding = padding
    return pruned
