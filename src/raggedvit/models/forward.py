"""The pruned DeiT forward shared by both layouts: timm submodules on token rows, stages, compaction.

Token rows live in one ``(capacity, C)`` buffer described by a :class:`~raggedvit.pruning.RaggedMeta`:
*packed* (``cu_seqlens``, varlen attention backend, static capacities, no host sync: CUDA-graph ready) or
*padded* (a ``(B, L)`` grid, SDPA with a key-padding mask, adaptive stages pad to the batch maximum, which
reads one device value per stage: this is the baseline). Token-wise layers (LayerNorm, qkv, proj, MLP)
always run on the buffer rows; timm's own submodules are called by name, never copied.

Methods that merge tokens (ToMe) make the forward track token sizes: a ``(capacity,)`` fp32 row tensor that
every stage compacts with the rows (:func:`~raggedvit.pruning.stage.run_stage`). With proportional attention
(:attr:`~raggedvit.pruning.method.Method.proportional_attention`) its log is the per-key logit bias of every
later attention call. Other methods never create it: no size, no bias, no extra op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..ops.library import is_compiling
from ..ops.patchify import patchify, patchify_reference
from ..pruning.method import Method
from ..pruning.ragged import RaggedMeta, cached, dense_view, uniform_meta
from ..pruning.stage import MID, PRE, StagePlan, run_stage
from .live_rows import LiveRows, live_rows_for
from .stats import PruneStats

FAST_EMBED = True  # patch_embed's patchify kernel (CUDA) and embed_tokens' one-buffer add; False: torch / timm
# attention="triton": stages without unused rows (fixed budgets, every stage before the first pruning) and at
# least UNIFORM_SDPA_MIN_ROWS rows are a dense (B, L) grid, attended by SDPA (cuDNN on the H200); False: the
# Triton kernel there too. H200, ViT-Tiny fp16, whole forward in the CUDA graph, SDPA against the kernel on those
# stages: 1-5 % faster at batch 256, even or up to 3 % slower at 64, 2-10 % slower at 1 / 8
# (benchmarks/results/live-rows-ab-uniform-nvidia-h200-20261201-0210.*)
UNIFORM_SDPA = True
UNIFORM_SDPA_MIN_ROWS = 16384
Attend = Callable[..., torch.Tensor]
"""``attend(q, k, v, meta, scale[, bias]) -> (rows, H, D)``; ``bias``: ``(capacity,)`` fp32 per-key logit bias
(natural log units, after the scale), passed only when there is one."""


def patch_embed(pe, images: torch.Tensor) -> torch.Tensor:
    """timm ``PatchEmbed`` of ``images`` as one copy and one GEMM when its conv has stride == kernel size.

    A non-overlapping patch conv is a matrix product of the flattened patches with the flattened kernel.
    On an H100 (DeiT-S, fp16, CUDA graph) cuDNN's algorithm for the conv took 48 us at batch 1 and 1,709 us
    at batch 256, copy + cuBLAS GEMM 6 and 182 us (``benchmarks/results/patch-embed-*.log``). Anything else
    (padding, dynamic sizes, other output formats, an image size other than the model's) goes through ``pe``
    itself."""
    proj = getattr(pe, "proj", None)
    B, C, H, W = images.shape
    if not (isinstance(proj, torch.nn.Conv2d) and getattr(pe, "flatten", False) and proj.groups == 1
            and proj.kernel_size == proj.stride and proj.padding == (0, 0) and proj.dilation == (1, 1)
            and not getattr(pe, "dynamic_img_pad", False) and pe.img_size is not None
            and (H, W) == tuple(pe.img_size) and H % proj.stride[0] == 0 and W % proj.stride[1] == 0):
        return pe(images)
    ph, pw = proj.kernel_size
    gh, gw = H // ph, W // pw
    fast = FAST_EMBED and images.is_cuda and not is_compiling()
    x = patchify(images, ph, pw) if fast else patchify_reference(images, ph, pw)
    out = F.linear(x, proj.weight.reshape(proj.out_channels, -1), proj.bias)
    return pe.norm(out.view(B, gh * gw, proj.out_channels))


def embed_tokens(model, params, x: torch.Tensor) -> torch.Tensor:
    """timm's ``_pos_embed`` of ``model``'s class on ``params``: ``(B, N, C)`` patch tokens -> ``(B, P + N, C)``
    with the prefix tokens (class, registers) and the position embedding.

    timm concatenates and then adds (two passes over the tokens, and its ``cat`` kernel is slow: 46 us at
    batch 256 on an H200 for ViT-Tiny, the add 22 us). For a plain ``VisionTransformer`` (fixed image size, a
    position embedding, ``pos_drop`` inactive) this adds the position embedding straight into a new buffer,
    patches and prefix each in one kernel: the same values, bit for bit. Anything else (another class's
    ``_pos_embed``, dynamic image size, no position embedding, training-mode dropout, ``torch.compile``,
    which fuses timm's version anyway) goes through timm's own method."""
    if not FAST_EMBED:
        return type(model)._pos_embed(params, x)
    drop = getattr(model, "pos_drop", None)
    pos = getattr(params, "pos_embed", None)
    if (type(model)._pos_embed is not VisionTransformer._pos_embed or pos is None or is_compiling()
            or getattr(params, "dynamic_img_size", False) or x.dim() != 3 or pos.dtype != x.dtype
            or not (isinstance(drop, nn.Identity) or (isinstance(drop, nn.Dropout) and (not drop.training
                                                                                        or drop.p == 0)))):
        return type(model)._pos_embed(params, x)
    B, N, C = x.shape
    prefix = [t for t in (getattr(params, "cls_token", None), getattr(params, "reg_token", None)) if t is not None]
    P = sum(t.shape[1] for t in prefix)
    if pos.shape[1] != N + (0 if params.no_embed_class else P):
        return type(model)._pos_embed(params, x)
    out = x.new_empty(B, P + N, C)
    torch.add(x, pos[:, pos.shape[1] - N:], out=out[:, P:])
    if P:
        pre = (prefix[0] if len(prefix) == 1 else torch.cat(prefix, dim=1)).expand(B, -1, -1)
        if params.no_embed_class:
            out[:, :P] = pre
        else:
            torch.add(pre, pos[:, :P], out=out[:, :P])
    return out


def attend_packed(backend) -> Attend:
    """Packed attention through a :mod:`raggedvit.ops.backends` backend (a ``bias`` goes to its ``key_bias``:
    backends without one raise). For the ``triton`` backend, a stage without unused rows and without a bias
    is a dense ``(B, L)`` grid (rows ``b * L + l``) and, from ``UNIFORM_SDPA_MIN_ROWS`` rows on, runs SDPA
    instead (:func:`attend_padded`, no mask; ``UNIFORM_SDPA``); other backends always run as asked."""
    dense_ok = backend.name == "triton"

    def attend(q, k, v, meta: RaggedMeta, scale: float, bias: torch.Tensor | None = None) -> torch.Tensor:
        if (dense_ok and UNIFORM_SDPA and meta.uniform and bias is None
                and meta.batch * meta.max_seqlen >= UNIFORM_SDPA_MIN_ROWS):
            return attend_padded(q, k, v, meta, scale, static_width=True)
        return backend(q, k, v, meta.cu_seqlens, meta.max_seqlen, scale=scale, key_bias=bias)
    return attend


def attend_padded(q, k, v, meta: RaggedMeta, scale: float, bias: torch.Tensor | None = None, *,
                  static_width: bool = False) -> torch.Tensor:
    """Padded attention: SDPA on the ``(B, L)`` grid, boolean key-padding mask unless no row is padded; with a
    per-key ``bias`` (``(B * L,)`` fp32) a float mask: the bias on live keys, ``-inf`` on padding.

    ``static_width``: every grid width is a host constant (``padding="static"``). Otherwise, under
    ``torch.compile``, widths after an adaptive stage are read from the device (the batch maximum), SDPA's
    kernel choice cannot guard on them in torch 2.11, and the attention runs as plain torch ops (fp32)."""
    B, L = meta.batch, meta.max_seqlen
    H, D = q.shape[1], q.shape[2]
    qb, kb, vb = (t.reshape(B, L, H, D).transpose(1, 2) for t in (q, k, v))
    mask = None if meta.uniform else meta.dense_valid[:, None, None, :]
    if bias is not None:
        fmask = bias.view(B, 1, 1, L).to(q.dtype)
        mask = fmask if mask is None else fmask.masked_fill(~mask, float("-inf"))
    if is_compiling() and not static_width:
        s = (qb.float() @ kb.float().transpose(-2, -1)) * scale
        s = s.masked_fill(~mask, float("-inf")) if mask is not None and mask.dtype == torch.bool else (
            s if mask is None else s + mask.float())
        out = (s.softmax(-1) @ vb.float()).to(q.dtype)
    else:
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B * L, H, D)


def _mlp_half(blk, y: torch.Tensor, rows: LiveRows | None) -> torch.Tensor:
    """``y + drop_path2(ls2(mlp(norm2(y))))`` on rows (fused kernels on the live rows when ``rows`` is set)."""
    if rows is None:
        return y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
    mlp = blk.mlp
    h, res = rows.pre_norm(blk.norm2, y, mlp.fc2)
    return rows.residual_linear(mlp.fc2, rows.linear(mlp.fc1, h, gelu=True), res)


def _attention_half(blk, x: torch.Tensor, meta: RaggedMeta, attend: Attend, rows: LiveRows | None = None,
                    bias: torch.Tensor | None = None):
    """``y = x + drop_path1(ls1(attn(norm1(x))))`` on rows; also returns q, k, v ``(R, H, D)``.

    ``rows``: None (timm's modules) or :class:`LiveRows` (fused kernels on the live rows). ``bias``: per-key
    logit bias of the attention (log token sizes), or None."""
    attn = blk.attn
    h, res = (blk.norm1(x), None) if rows is None else rows.pre_norm(blk.norm1, x, attn.proj)
    R = x.shape[0]
    H, D = attn.num_heads, attn.head_dim
    q, k, v = (attn.qkv(h) if rows is None else rows.linear(attn.qkv, h)).view(R, 3, H, D).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = float(getattr(attn, "scale", D ** -0.5))
    o = (attend(q, k, v, meta, scale) if bias is None else attend(q, k, v, meta, scale, bias)).reshape(R, H * D)
    if rows is not None:
        return rows.residual_linear(attn.proj, o, res), q, k, v, scale
    o = attn.norm(o) if hasattr(attn, "norm") else o
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    o = attn.proj_drop(attn.proj(o))
    return x + blk.drop_path1(blk.ls1(o)), q, k, v, scale


def run(model, images: torch.Tensor, method: Method, plans: tuple[StagePlan, ...], modules, *, packed: bool,
        attend: Attend, live_rows: bool | str = False, debug: bool = False,
        static_padding: bool = False, params: nn.Module | None = None) -> tuple[torch.Tensor, PruneStats]:
    """Pruned forward up to the final norm. Returns ``(prefix, stats)``, ``prefix: (B, P, C)`` final-normed
    prefix tokens (what timm's ``forward_head`` reads).

    Each block runs as timm's ``Block.forward`` on token rows; the method's stage (if the block has one) runs
    at its site (:data:`~raggedvit.pruning.stage.PRE`: before the block, :data:`~raggedvit.pruning.stage.MID`:
    between attention and MLP, seeing q, k, v). ``modules``: the method's per-stage modules or None.
    ``live_rows`` (packed only, inference, blocks that :func:`~.live_rows.live_rows_unsupported` accepts):
    True, False or ``"auto"``: whether a stage's token-wise layers run as :class:`~.live_rows.LiveRows`
    kernels on the live rows only (see :func:`~.live_rows.live_rows_for`). ``debug``: validate each stage's
    selection and metadata on the device (see :func:`~raggedvit.pruning.stage.run_stage`; syncs).
    ``static_padding`` (padded only): adaptive stages pad to their planned width, not the batch maximum.
    ``params``: the module the token and position embeddings are read from (:func:`embed_tokens`, timm's
    ``_pos_embed`` of ``model``'s class, runs on it; default ``model``): a :class:`~.pruned.PrunedViT`, which
    registers them."""
    P = model.num_prefix_tokens
    x = embed_tokens(model, model if params is None else params, patch_embed(model.patch_embed, images))
    x = model.norm_pre(model.patch_drop(x))
    B, N0, C = x.shape
    x = x.reshape(B * N0, C)
    meta = uniform_meta(B, N0, x.device, packed=packed)
    tok = cached(("tok0", B, N0, x.device), lambda: torch.arange(N0, dtype=torch.int32, device=x.device).repeat(
        B, 1))  # (B, L) original token id of every dense position
    stages = {p.block: p for p in plans}
    live_rows = live_rows if packed else False
    rows, rows_meta = None, None  # LiveRows (or None: timm's modules) of the buffer described by rows_meta
    prop_attn = method.proportional_attention
    size = bias = None  # token sizes (capacity,) fp32 once a stage merged tokens; log(size) for attention
    kept = []
    for i, blk in enumerate(model.blocks):
        plan = stages.get(i)
        module = None if plan is None or modules is None else modules[plan.index]
        if plan is not None and plan.site == PRE:
            x, tok, meta, count, size = run_stage(method, plan, x, tok, meta, P, module=module, size=size,
                                                  debug=debug, static_padding=static_padding)
            bias = size.log() if prop_attn and size is not None else None
            kept.append(count)
        if live_rows and rows_meta is not meta:
            rows, rows_meta = live_rows_for(live_rows, meta), meta
        y, q, k, v, scale = _attention_half(blk, x, meta, attend, rows, bias)
        if plan is not None and plan.site == MID:
            y, tok, meta, count, size = run_stage(method, plan, y, tok, meta, P, qkv=(q, k, v), scale=scale,
                                                  module=module, size=size, debug=debug,
                                                  static_padding=static_padding)
            bias = size.log() if prop_attn and size is not None else None
            kept.append(count)
            if live_rows and rows_meta is not meta:
                rows, rows_meta = live_rows_for(live_rows, meta), meta
        x = _mlp_half(blk, y, rows)
    prefix = model.norm(dense_view(x, meta)[:, :P] if meta.dense_identity else x[meta.dense_rows[:, :P]])
    stats = PruneStats(tuple(p.block for p in plans), tuple(kept), tuple(p.width_out for p in plans), meta, tok, P,
                       N0 - P)
    return prefix, stats
