"""One pruning stage: its host-side plan, what a method sees there, and the compaction that follows.

A method (:mod:`.method`) turns a :class:`StageInput` into a :class:`~.ragged.Selection`; :func:`run_stage`
calls it and compacts the buffer, so the model's forward only says *where* a stage runs. Methods that merge
tokens (ToMe) also return new values for the kept positions (:attr:`~.ragged.Selection.values`) and token
sizes (:attr:`~.ragged.Selection.size`); the sizes travel with the rows through every later compaction.
The packed layout on CUDA (or under the Triton interpreter) selects and compacts with the one-launch kernels of
:mod:`raggedvit.ops.select` / :mod:`raggedvit.ops.compact` (:attr:`StageInput.kernels`); the padded
baseline and CPU runs use the torch functions of each method's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..ops.checks import check_ragged
from ..ops.cls_attention import cls_attention_mean
from ..ops.compact import compact_packed
from ..ops.compact import launcher as compact_launcher
from ..ops.library import batch_max
from .ragged import (
    RaggedMeta,
    Selection,
    cached,
    compact,
    const,
    dense_view,
    identity_rows,
    ragged_meta,
    rows_from_dense,
    uniform_meta,
)
from .selection import candidates

if TYPE_CHECKING:
    from .method import Method

__all__ = ["PRE", "MID", "StagePlan", "StageInput", "run_stage", "compact_stage"]

PRE = "pre"  # the stage prunes a block's input, before its attention
MID = "mid"  # the stage prunes inside a block, between its attention and its MLP


@dataclass(frozen=True)
class StagePlan:
    """One pruning stage, all host ints (every buffer is sized from these: static shapes).

    Attributes:
        index: stage number ``s`` (0-based).
        block: block index; PRE stages prune before it, MID stages inside it.
        site: :data:`PRE` or :data:`MID`.
        width_in: bound on tokens per image entering the stage (prefix included).
        width_out: bound after it (exact for fixed variants).
        exact: every image holds exactly ``width_out`` tokens afterwards.
        keep: fixed variants: non-prefix tokens kept (an appended fused token excluded); None when adaptive.
        noop: fixed variants that keep everything (e.g. keep rate 1.0): the stage changes nothing.
    """

    index: int
    block: int
    site: str
    width_in: int
    width_out: int
    exact: bool
    keep: int | None
    noop: bool


@dataclass(frozen=True, eq=False)
class StageInput:
    """What a method sees at one stage.

    Attributes:
        plan: the stage's :class:`StagePlan`.
        x: ``(capacity, C)`` token rows at the site: the block input (PRE) or the block's post-attention
            residual stream (MID).
        meta: layout of ``x``.
        num_prefix: prefix tokens per image (CLS, DIST), never pruned.
        qkv: MID stages: the block's ``(q, k, v)``, each ``(capacity, H, D)``; None at PRE stages.
        scale: MID stages: the block's softmax scale.
        module: the method's module for this stage (DynamicViT's keep predictor), or None.
        size: ``(capacity,)`` fp32 token sizes of the rows of ``x`` once a method has merged tokens (ToMe);
            None: every token has size 1.
    """

    plan: StagePlan
    x: torch.Tensor
    meta: RaggedMeta
    num_prefix: int
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    scale: float | None = None
    module: torch.nn.Module | None = None
    size: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor | None:
        """``(B, L)`` live positions, or None when every position is live (no masking ops needed)."""
        return None if self.meta.uniform else self.meta.dense_valid

    @property
    def kernels(self) -> bool:
        """Select and compact with the Triton kernels: packed layout on CUDA or under the interpreter."""
        return uses_kernels(self.meta, self.x)

    def candidates(self) -> torch.Tensor:
        """``(B, L)`` bool prunable positions: live and past the prefix (cached for uniform batches)."""
        meta, P = self.meta, self.num_prefix
        if meta.uniform:
            key = ("candidates", meta.batch, meta.max_seqlen, P, meta.dense_valid.device)
            return cached(key, lambda: candidates(meta.dense_valid, P))
        return candidates(meta.dense_valid, P)

    def cls_mean(self, values: bool = False) -> torch.Tensor:
        """``(B, L)`` fp32 head-mean CLS attention row of every image (MID stages; one fused op on the GPU);
        ``values``: times each token's value norm over all heads (ATS's significance up to a factor per image)."""
        q, k, _ = self.qkv
        meta = self.meta
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
        return cls_attention_mean(q, k, starts, ends, meta.max_seqlen, scale=self.scale,
                                  v=self.qkv[2] if values else None)


def uses_kernels(meta: RaggedMeta, t: torch.Tensor) -> bool:
    """The one predicate for the Triton selection/compaction path (packed, CUDA or the interpreter)."""
    return not meta.padded and (t.is_cuda or compact_launcher.interpreted)


def run_stage(method: Method, plan: StagePlan, x: torch.Tensor, tok: torch.Tensor, meta: RaggedMeta,
              num_prefix: int, *, qkv=None, scale: float | None = None, module: torch.nn.Module | None = None,
              size: torch.Tensor | None = None, debug: bool = False, static_padding: bool = False):
    """``method``'s selection at ``plan``, then the compaction. Returns ``(x, tok, meta, kept, size)``: the new
    rows, dense token ids and layout, the ``(B,)`` int64 tokens per image after the stage and the
    ``(capacity,)`` fp32 token sizes of the new rows (None while no method has merged: ``size`` None and no
    :attr:`~.ragged.Selection.size`); the same objects back for a no-op stage. ``debug``: validate the
    selection and the new metadata on the device (syncs; ValueError naming the stage and the problem).
    ``static_padding``: padded layout: pad adaptive stages to the plan's width instead of the batch maximum
    (no device read; see :func:`compact_stage`)."""
    if plan.noop:
        return x, tok, meta, meta.lengths, size
    sel = method.select(StageInput(plan, x, meta, num_prefix, qkv, scale, module, size))
    op = f"stage {plan.index} (block {plan.block})"
    if debug:
        last = meta.max_seqlen if sel.extra is not None else meta.max_seqlen - 1
        check_ragged(op, meta.capacity, bounded=[("kept count", sel.count, num_prefix, sel.width),
                                                 ("selected position", sel.index, 0, last)])
    new_x, new_tok, new_meta = compact_stage(plan, sel, x, tok, meta, static_padding=static_padding)
    if debug and not new_meta.padded:
        check_ragged(op, new_meta.capacity, what="buffer rows", cu_seqlens=new_meta.cu_seqlens,
                     max_len=plan.width_out)
    if sel.size is not None or size is not None:
        size = compact_size(sel, size, meta, new_meta)
    return new_x, new_tok, new_meta, sel.count, size


def compact_stage(plan: StagePlan, sel: Selection, x: torch.Tensor, tok: torch.Tensor, meta: RaggedMeta, *,
                  static_padding: bool = False):
    """Compact the rows ``x`` (or the selection's merged :attr:`~.ragged.Selection.values`) and gather the
    dense token ids ``tok: (B, L (+1))`` (last column -1 when the selection may point at an appended token).
    Returns ``(x, tok, meta)``.

    The padded layout pads an adaptive stage's grid to the batch maximum (one device read), or with
    ``static_padding`` to the plan's width (static shapes: CUDA-graph capturable, more padded rows)."""
    width = None
    src, rows = x, meta.dense_rows
    if sel.values is not None:  # a merge: read the dense (B, L, C) values, flattened, through identity rows
        if sel.extra is not None:
            raise ValueError(f"stage {plan.index}: a selection takes either merged values or an appended token")
        src = sel.values.reshape(meta.batch * meta.max_seqlen, -1)
        rows = identity_rows(meta.batch, meta.max_seqlen, x.device)
    if uses_kernels(meta, x):  # one launch: rows, cu_seqlens, dense view, token ids
        if sel.width != plan.width_out:
            raise RuntimeError(f"stage {plan.index}: selection width {sel.width} != planned {plan.width_out}")
        extra = None if sel.extra is None else sel.extra.to(x.dtype)
        x, cu, rows, valid, tok = compact_packed(src, extra, rows, sel.index[:, :sel.width], sel.count, tok,
                                                 sel.width)
        B = meta.batch
        if sel.exact:  # every slot live: the cached uniform metadata (no masks downstream)
            return x, tok, uniform_meta(B, sel.width, x.device)
        return x, tok, ragged_meta(lengths=sel.count, cu_seqlens=cu, dense_rows=rows, dense_valid=valid,
                                   max_seqlen=sel.width)
    if meta.padded and not sel.exact and not static_padding:
        # padded baseline: pad to the batch maximum (one device read; an unbacked size under torch.compile)
        width = batch_max(sel.count, min(2, plan.width_out), plan.width_out)
    elif not meta.padded and sel.width != plan.width_out:
        raise RuntimeError(f"stage {plan.index}: selection width {sel.width} != planned {plan.width_out}")
    new, (x,) = compact(meta, sel, [(src, sel.extra)], padded_width=width,
                        dense_rows=None if src is x else rows)
    if sel.extra is not None:
        minus = cached(("tok_extra", meta.batch, tok.device), lambda: torch.full((meta.batch, 1), -1,
                                                                                dtype=tok.dtype, device=tok.device))
        tok = torch.cat([tok, minus], dim=1)
    tok = tok.gather(1, sel.index[:, : new.max_seqlen])
    return x, tok, new


def compact_size(sel: Selection, size: torch.Tensor | None, meta: RaggedMeta, new: RaggedMeta) -> torch.Tensor:
    """``(new.capacity,)`` fp32 token sizes of the compacted rows: the selection's merged sizes (or the current
    ``size`` rows, or 1 when both are None) at the kept positions; an appended token and the unused rows get 1."""
    B = meta.batch
    if sel.size is not None:
        dense = sel.size.float()
    elif size is not None:
        dense = dense_view(size, meta)
    else:
        dense = torch.ones(B, meta.max_seqlen, dtype=torch.float32, device=sel.count.device)
    if sel.extra is not None:  # position L: the appended token, size 1
        dense = torch.cat([dense, torch.ones(B, 1, dtype=dense.dtype, device=dense.device)], dim=1)
    kept = dense.gather(1, sel.index[:, :new.max_seqlen])
    if not new.uniform:
        kept = torch.where(new.dense_valid, kept, const(1.0, torch.float32, kept.device))
    return rows_from_dense(new, kept)

