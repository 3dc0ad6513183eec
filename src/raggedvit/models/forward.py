"""The pruned DeiT forward shared by both layouts: timm submodules on token rows, stages, compaction.

Token rows live in one ``(capacity, C)`` buffer described by a :class:`~raggedvit.pruning.RaggedMeta`:
*packed* (``cu_seqlens``, varlen attention backend, static capacities, no host sync: CUDA-graph ready) or
*padded* (a ``(B, L)`` grid, SDPA with a key-padding mask, adaptive stages pad to the batch maximum, which
reads one device value per stage: this is the baseline). Token-wise layers (LayerNorm, qkv, proj, MLP)
always run on the buffer rows; timm's own submodules are called by name, never copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.cls_attention import cls_attention_mean
from ..ops.compact import compact_packed
from ..ops.compact import launcher as compact_launcher
from ..ops.layernorm import ragged_layer_norm
from ..ops.linear import ragged_linear
from ..ops.select import ats_select, best_first_select, l2_select
from ..pruning import ats, dynamicvit, evit, threshold_l2
from ..pruning.ragged import RaggedMeta, Selection, cached, compact, dense_view, uniform_meta
from ..pruning.selection import candidates, fixed_count
from .config import PruningConfig, StagePlan

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, RaggedMeta, float], torch.Tensor]
Probe = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True, eq=False)
class PruneStats:
    """What the last forward of a pruned model kept (device tensors, stored without a sync).

    Treat the tensors as read-only: fixed-count stages return shared cached constants (kept counts, metadata).
    :attr:`kept_patch_mask` and :attr:`token_index` are computed on access (a few small ops, outside the
    forward and any captured graph) from the final buffer's token ids, so they always describe the last
    forward or graph replay.

    Attributes:
        stage_blocks: block index of every pruning stage (host ints).
        kept: per stage, ``(B,)`` int64 tokens per image after the stage, prefix tokens (CLS, DIST) and an
            EViT fused token included.
        stage_max_seqlen: per stage, the host bound on tokens per image after it (buffer sizing).
        final_meta: layout of the final buffer (``cu_seqlens`` for packed).
        token_ids: ``(B, final_meta.max_seqlen)`` int32 original token index of every position of the final
            buffer's dense view (prefix tokens included: CLS = 0; -1 = fused token; positions past an image's
            length hold any value).
        num_prefix: prefix tokens per image (host int).
    """

    stage_blocks: tuple[int, ...]
    kept: tuple[torch.Tensor, ...]
    stage_max_seqlen: tuple[int, ...]
    final_meta: RaggedMeta
    token_ids: torch.Tensor
    num_prefix: int
    num_patches: int

    @property
    def kept_patch_mask(self) -> torch.Tensor:
        """``(B, num_patches)`` bool, original patches still present in the last block (an EViT fused token is
        not a patch)."""
        meta, P, n = self.final_meta, self.num_prefix, self.num_patches
        t = self.token_ids.long()
        live = meta.dense_valid & (t >= P)
        mask = torch.zeros(meta.batch, n + 1, dtype=torch.bool, device=t.device)
        mask.scatter_(1, torch.where(live, t - P, n), live)
        return mask[:, :n]

    @property
    def token_index(self) -> torch.Tensor:
        """``(capacity,)`` int32 original token index of every row of the final buffer (prefix tokens
        included: CLS = 0; -1 = fused token or unused row)."""
        meta, tok = self.final_meta, self.token_ids
        if meta.dense_identity:  # row b * L + l = position l of image b
            return torch.where(meta.dense_valid, tok, -1).view(-1)
        # packed: scatter the live positions to their rows, -1 elsewhere (the last row collects the rest)
        dest = torch.where(meta.dense_valid, meta.dense_rows, meta.capacity).view(-1)
        index = tok.new_full((meta.capacity + 1,), -1).index_copy_(0, dest, tok.reshape(-1))
        return index[: meta.capacity]


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
    x = images.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B * gh * gw, C * ph * pw)
    out = F.linear(x, proj.weight.reshape(proj.out_channels, -1), proj.bias)
    return pe.norm(out.view(B, gh * gw, proj.out_channels))


def attend_packed(backend) -> Attend:
    """Packed attention through a :mod:`raggedvit.ops.backends` backend."""
    def attend(q, k, v, meta: RaggedMeta, scale: float) -> torch.Tensor:
        return backend(q, k, v, meta.cu_seqlens, meta.max_seqlen, scale=scale)
    return attend


def attend_padded(q, k, v, meta: RaggedMeta, scale: float) -> torch.Tensor:
    """Padded attention: SDPA on the ``(B, L)`` grid, boolean key-padding mask unless no row is padded."""
    B, L = meta.batch, meta.max_seqlen
    H, D = q.shape[1], q.shape[2]
    qb, kb, vb = (t.reshape(B, L, H, D).transpose(1, 2) for t in (q, k, v))
    mask = None if meta.uniform else meta.dense_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(B * L, H, D)


def _kernels(meta: RaggedMeta, t: torch.Tensor, probe=None) -> bool:
    """Select and compact with the Triton kernels of :mod:`raggedvit.ops.select` / :mod:`~raggedvit.ops.compact`:
    packed layout, CUDA tensors (or the Triton interpreter), no calibration probe (which needs dense scores)."""
    return probe is None and not meta.padded and (t.is_cuda or compact_launcher.interpreted)


class LiveRows:
    """The token-wise layers of a plain pre-norm block on the live rows of a packed buffer: LayerNorm
    (:func:`~raggedvit.ops.layernorm.ragged_layer_norm`), qkv, proj + residual, fc1 + GELU, fc2 + residual
    (:func:`~raggedvit.ops.linear.ragged_linear`). ``live``: the live row count on the device
    (``cu_seqlens[-1:]``); rows past it are neither read nor written."""

    __slots__ = ("live",)

    def __init__(self, live: torch.Tensor) -> None:
        self.live = live

    def norm(self, mod: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return ragged_layer_norm(x, mod.weight, mod.bias, self.live, eps=mod.eps)

    def linear(self, mod: torch.nn.Linear, x: torch.Tensor, gelu: bool = False,
               residual: torch.Tensor | None = None) -> torch.Tensor:
        return ragged_linear(x, mod.weight, mod.bias, self.live, gelu=gelu, residual=residual)


def fusable_mlp(mlp) -> bool:
    """timm ``Mlp`` whose forward is ``fc2(gelu(fc1(x)))`` in eval (exact GELU, no norm, no dropout)."""
    act, norm = getattr(mlp, "act", None), getattr(mlp, "norm", None)
    return (isinstance(getattr(mlp, "fc1", None), torch.nn.Linear) and isinstance(getattr(mlp, "fc2", None),
            torch.nn.Linear) and isinstance(act, torch.nn.GELU) and act.approximate == "none"
            and (norm is None or isinstance(norm, torch.nn.Identity)))


def live_rows_unsupported(blk) -> str | None:
    """Why :class:`LiveRows` cannot run timm block ``blk`` (None if it can): it needs a plain pre-norm block,
    ``x + proj(attn(LN(x)))`` then ``x + fc2(gelu(fc1(LN(x))))``, without layer scale or attention gates."""
    attn = getattr(blk, "attn", None)
    checks = {
        "norm1/norm2 are not nn.LayerNorm over the last dim": all(
            isinstance(getattr(blk, n, None), torch.nn.LayerNorm) and len(getattr(blk, n).normalized_shape) == 1
            for n in ("norm1", "norm2")),
        "layer scale (ls1/ls2) is used": all(isinstance(getattr(blk, n, None), torch.nn.Identity)
                                             for n in ("ls1", "ls2")),
        "attn.proj is not nn.Linear or attn has a norm/gate": isinstance(getattr(attn, "proj", None), torch.nn.Linear)
        and isinstance(getattr(attn, "qkv", None), torch.nn.Linear)
        and isinstance(getattr(attn, "norm", torch.nn.Identity()), torch.nn.Identity)
        and getattr(attn, "gate", None) is None,
        "the MLP is not fc2(GELU(fc1(x)))": fusable_mlp(getattr(blk, "mlp", None)),
    }
    bad = [why for why, ok in checks.items() if not ok]
    return "; ".join(bad) or None


AUTO_MIN_ROWS = 1024  # live_rows="auto": buffers with unused rows (adaptive stages) from this many rows
AUTO_MIN_ROWS_FULL = 32768  # ... and buffers without (fixed stages, before pruning), where only the fusion pays


def _live_rows(mode: bool | str, meta: RaggedMeta) -> LiveRows | None:
    """:class:`LiveRows` for a packed stage buffer, or None for timm's modules. ``mode``: True, False or
    ``"auto"`` (by buffer size: on an H100 the Triton kernels lose to cuBLAS on small buffers, while on
    large ones skipping the unused rows and fusing GELU and the residual adds win; see ``bench e2e``)."""
    if mode is True or (mode == "auto" and meta.capacity >= (AUTO_MIN_ROWS_FULL if meta.uniform else AUTO_MIN_ROWS)):
        return LiveRows(meta.cu_seqlens[-1:])
    return None


def _mlp_half(blk, y: torch.Tensor, rows: LiveRows | None) -> torch.Tensor:
    """``y + drop_path2(ls2(mlp(norm2(y))))`` on rows (fused kernels on the live rows when ``rows`` is set)."""
    if rows is None:
        return y + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(y))))
    mlp = blk.mlp
    return rows.linear(mlp.fc2, rows.linear(mlp.fc1, rows.norm(blk.norm2, y), gelu=True), residual=y)


def _attention_half(blk, x: torch.Tensor, meta: RaggedMeta, attend: Attend, rows: LiveRows | None = None):
    """``y = x + drop_path1(ls1(attn(norm1(x))))`` on rows; also returns q, k, v ``(R, H, D)``.

    ``rows``: None (timm's modules) or :class:`LiveRows` (fused kernels on the live rows)."""
    attn = blk.attn
    h = blk.norm1(x) if rows is None else rows.norm(blk.norm1, x)
    R = x.shape[0]
    H, D = attn.num_heads, attn.head_dim
    q, k, v = (attn.qkv(h) if rows is None else rows.linear(attn.qkv, h)).view(R, 3, H, D).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = float(getattr(attn, "scale", D ** -0.5))
    o = attend(q, k, v, meta, scale).reshape(R, H * D)
    if rows is not None:
        return rows.linear(attn.proj, o, residual=x), q, k, v, scale
    o = attn.norm(o) if hasattr(attn, "norm") else o
    gate = getattr(attn, "gate", None)
    if gate is not None:
        o = o * gate(h).sigmoid()
    o = attn.proj_drop(attn.proj(o))
    return x + blk.drop_path1(blk.ls1(o)), q, k, v, scale


def _candidates(meta: RaggedMeta, P: int) -> torch.Tensor:
    """``(B, L)`` candidate mask (cached for uniform batches)."""
    if meta.uniform:
        key = ("candidates", meta.batch, meta.max_seqlen, P, meta.dense_valid.device)
        return cached(key, lambda: candidates(meta.dense_valid, P))
    return candidates(meta.dense_valid, P)


def _select_pre(plan: StagePlan, cfg: PruningConfig, x, meta, predictors, P: int, probe):
    valid = None if meta.uniform else meta.dense_valid  # None: every position live, no masking ops
    fixed = cfg.variant == "fixed"
    k_max = cfg.stage_k_max(plan.index)
    if cfg.method == "dynamicvit":
        cand = _candidates(meta, P)
        logp = predictors[plan.index](x, meta.seg_ids, meta.dense_rows, cand)
        if _kernels(meta, x, probe):
            rule = dict(k=plan.keep) if fixed else dict(threshold=math.log(cfg.keep_threshold), k_min=cfg.k_min,
                                                        k_max=k_max)
            index, count, _ = best_first_select(dynamicvit.keep_scores(logp), x, meta.dense_rows, meta.lengths, P,
                                                plan.width_out, **rule)
            if fixed:
                count = fixed_count(meta.batch, plan.width_out, x.device)
            return Selection(index, count, plan.width_out, fixed)
        score = dense_view(dynamicvit.keep_scores(logp), meta)
        if probe is not None:
            probe(plan.index, score, cand)
        if fixed:
            return dynamicvit.select_topk(score, valid, P, plan.keep)
        return dynamicvit.select_threshold(score, valid, P, threshold=cfg.keep_threshold, k_min=cfg.k_min,
                                           k_max=k_max)
    if _kernels(meta, x, probe):
        if fixed:
            index, _ = l2_select(x, meta.dense_rows, meta.lengths, P, plan.width_out, k=plan.keep)
            return Selection(index, fixed_count(meta.batch, plan.width_out, x.device), plan.width_out, True)
        t = None if cfg.thresholds is None else cfg.thresholds[plan.index]
        width = P + min(meta.max_seqlen - P, meta.max_seqlen if k_max is None else k_max)
        index, count = l2_select(x, meta.dense_rows, meta.lengths, P, width, threshold=t,
                                 alpha=cfg.alpha if t is None else None, k_min=cfg.k_min, k_max=k_max)
        return Selection(index, count, width, False)
    score = dense_view(threshold_l2.l2_scores(x), meta)
    if probe is not None:
        probe(plan.index, score, _candidates(meta, P))
    if fixed:
        return threshold_l2.select_topk(score, valid, P, plan.keep)
    t = None if cfg.thresholds is None else cfg.thresholds[plan.index]
    return threshold_l2.select_threshold(score, valid, P, threshold=t, alpha=cfg.alpha if t is None else None,
                                         k_min=cfg.k_min, k_max=k_max)


def _cls_mean(q, k, meta: RaggedMeta, scale: float) -> torch.Tensor:
    """``(B, L)`` fp32 head-mean CLS attention row of every sequence (one fused op on the GPU)."""
    if meta.padded:
        B, L, device = meta.batch, meta.max_seqlen, meta.lengths.device
        starts = cached(("row_starts", B, L, device),
                        lambda: torch.arange(0, B * L, L, dtype=torch.int32, device=device))
        if meta.uniform:
            ends = cached(("row_ends", B, L, device), lambda: starts + L)
        else:
            ends = (starts + meta.lengths).int()
    else:
        starts, ends = meta.cu_seqlens[:-1], meta.cu_seqlens[1:]
    return cls_attention_mean(q, k, starts, ends, meta.max_seqlen, scale=scale)


def _select_mid(plan: StagePlan, cfg: PruningConfig, y, q, k, v, scale, meta, P: int, probe):
    valid = None if meta.uniform else meta.dense_valid
    score = _cls_mean(q, k, meta, scale)  # head mean; ATS's head sum is a constant multiple of it
    fixed = cfg.variant == "fixed"
    k_max = cfg.stage_k_max(plan.index)
    if cfg.method == "evit":
        if _kernels(meta, y, probe):
            opts = dict(k=plan.keep) if fixed else dict(mass=cfg.mass, k_min=cfg.k_min, k_max=k_max)
            index, count, extra = best_first_select(score, y, meta.dense_rows, meta.lengths, P, plan.width_out,
                                                    fuse=cfg.fuse, **opts)
            if fixed:
                count = fixed_count(meta.batch, plan.width_out, y.device)
            return Selection(index, count, plan.width_out, fixed, extra)
        if probe is not None:
            probe(plan.index, score, _candidates(meta, P))
        y_dense = dense_view(y, meta) if cfg.fuse else None
        if fixed:
            return evit.select_topk(score, valid, P, plan.keep, fuse=cfg.fuse, y_dense=y_dense)
        return evit.select_mass(score, valid, P, mass=cfg.mass, fuse=cfg.fuse, y_dense=y_dense, k_min=cfg.k_min,
                                k_max=k_max)
    # ATS significance up to a positive per-image factor (normalisation cancels in the min-max CDF)
    v_norm = threshold_l2.l2_scores(v.reshape(v.shape[0], -1))
    if _kernels(meta, y, probe):
        if fixed:
            index, _, _ = best_first_select(score, y, meta.dense_rows, meta.lengths, P, plan.width_out, k=plan.keep,
                                            row_weight=v_norm, ascending=True)
            return Selection(index, fixed_count(meta.batch, plan.width_out, y.device), plan.width_out, True)
        index, count = ats_select(score, v_norm, meta.dense_rows, meta.lengths, P, plan.width_out, cfg.num_samples)
        return Selection(index, count, plan.width_out, False)
    sig = score * dense_view(v_norm, meta)
    if probe is not None:
        cand = _candidates(meta, P)
        s = sig.masked_fill(~cand, 0.0)
        probe(plan.index, s / s.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny), cand)
    if fixed:
        return ats.select_topk(sig, valid, P, plan.keep)
    return ats.select_sampling(sig, valid, P, num_samples=cfg.num_samples)


def _apply(plan: StagePlan, sel, x, tok, meta: RaggedMeta):
    """Compact the rows ``x`` and gather the dense token ids ``tok: (B, L (+1))`` (last column -1 when the
    selection may point at an appended token)."""
    width = None
    if _kernels(meta, x):  # one launch: rows, cu_seqlens, dense view, token ids
        if sel.width != plan.width_out:
            raise RuntimeError(f"stage {plan.index}: selection width {sel.width} != planned {plan.width_out}")
        extra = None if sel.extra is None else sel.extra.to(x.dtype)
        x, cu, rows, valid, tok = compact_packed(x, extra, meta.dense_rows, sel.index[:, :sel.width], sel.count, tok,
                                                 sel.width)
        B = meta.batch
        if sel.exact:  # every slot live: the cached uniform metadata (no masks downstream)
            return x, tok, uniform_meta(B, sel.width, x.device)
        return x, tok, RaggedMeta(B, sel.width, B * sel.width, sel.count, cu, rows, valid, False)
    if meta.padded and not sel.exact:
        width = int(sel.count.max())  # padded baseline: pad to the batch maximum (one device read)
    elif not meta.padded and sel.width != plan.width_out:
        raise RuntimeError(f"stage {plan.index}: selection width {sel.width} != planned {plan.width_out}")
    new, (x,) = compact(meta, sel, [(x, sel.extra)], padded_width=width)
    if sel.extra is not None:
        minus = cached(("tok_extra", meta.batch, tok.device), lambda: torch.full((meta.batch, 1), -1,
                                                                                dtype=tok.dtype, device=tok.device))
        tok = torch.cat([tok, minus], dim=1)
    tok = tok.gather(1, sel.index[:, : new.max_seqlen])
    return x, tok, new


def run(model, images: torch.Tensor, cfg: PruningConfig, plans: tuple[StagePlan, ...], predictors, *,
        packed: bool, attend: Attend, probe: Probe | None = None,
        live_rows: bool | str = False) -> tuple[torch.Tensor, PruneStats]:
    """Pruned forward up to the final norm. Returns ``(prefix, stats)``, ``prefix: (B, P, C)`` final-normed
    prefix tokens (what timm's ``forward_head`` reads). ``probe(stage, scores (B, L), candidates (B, L))`` sees
    each stage's scores (calibration; ``None`` in normal use). ``live_rows`` (packed only, inference, blocks
    that :func:`live_rows_unsupported` accepts): True, False or ``"auto"``: whether the token-wise layers of
    a stage run as :class:`LiveRows` kernels, on the live rows only (see :func:`_live_rows`).
    The packed layout on CUDA (or under the Triton interpreter) selects and compacts with the one-launch
    kernels of :mod:`raggedvit.ops.select` / :mod:`raggedvit.ops.compact`; the padded baseline, CPU runs and
    calibration probes use the torch functions of :mod:`raggedvit.pruning`."""
    P = model.num_prefix_tokens
    x = model.norm_pre(model.patch_drop(model._pos_embed(patch_embed(model.patch_embed, images))))
    B, N0, C = x.shape
    x = x.reshape(B * N0, C)
    meta = uniform_meta(B, N0, x.device, packed=packed)
    tok = cached(("tok0", B, N0, x.device), lambda: torch.arange(N0, dtype=torch.int32, device=x.device).repeat(
        B, 1))  # (B, L) original token id of every dense position
    by_block = {p.block: p for p in plans}
    kept = []
    live_rows = live_rows if packed else False
    rows = None
    for i, blk in enumerate(model.blocks):
        plan = by_block.get(i)
        if plan is not None and not plan.mid:
            if plan.noop:
                kept.append(meta.lengths)
            else:
                sel = _select_pre(plan, cfg, x, meta, predictors, P, probe)
                x, tok, meta = _apply(plan, sel, x, tok, meta)
                kept.append(sel.count)
                rows = None
        if live_rows and rows is None:
            rows = _live_rows(live_rows, meta)
        y, q, k, v, scale = _attention_half(blk, x, meta, attend, rows)
        if plan is not None and plan.mid:
            if plan.noop:
                kept.append(meta.lengths)
            else:
                sel = _select_mid(plan, cfg, y, q, k, v, scale, meta, P, probe)
                y, tok, meta = _apply(plan, sel, y, tok, meta)
                kept.append(sel.count)
                rows = _live_rows(live_rows, meta) if live_rows else None
        x = _mlp_half(blk, y, rows)
    prefix = model.norm(dense_view(x, meta)[:, :P] if meta.dense_identity else x[meta.dense_rows[:, :P]])
    stats = PruneStats(tuple(p.block for p in plans), tuple(kept), tuple(p.width_out for p in plans), meta, tok, P,
                       N0 - P)
    return prefix, stats
