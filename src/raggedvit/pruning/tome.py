"""ToMe, Token Merging (Bolya et al., ICLR 2023): merge similar tokens inside every block (MID), and an
adaptive per-image variant for ragged batches.

Published algorithm (``facebookresearch/ToMe``: ``tome/merge.py``, ``tome/patch/timm.py``), per image and
block, between the attention and the MLP:

* metric: the block's keys averaged over heads, L2-normalised (cosine similarity);
* bipartite soft matching: the tokens alternate between set A (even positions) and set B (odd positions);
  every A token finds its most similar B token (``node_max``, ``node_idx``), and the ``r`` A tokens with the
  highest ``node_max`` are merged into their B token. Prefix tokens (CLS, DIST, registers: the first
  ``num_prefix`` positions) are protected: never merged away (their A rows are ``-inf``) and never merge
  targets (their B columns are ``-inf``); for CLS and DIST this is exactly ToMe's ``class_token`` /
  ``distill_token`` rule;
* size-weighted merge (``merge_wavg``): every token carries a size (how many patches it stands for, 1 at
  the start); a merged token is ``sum(size * x) / sum(size)`` and its size the sum of the sizes;
* output order: the prefix tokens, the unmerged A tokens in position order, then the B tokens in position
  order (ToMe's ``cat([unm, dst])``; the next block's A/B alternation depends on it);
* proportional attention: every later attention adds ``log(size)`` of each key to its logits
  (:attr:`ToMe.prop_attn`; the forward passes it as the attention's per-key bias).

Tie rule (ToMe leaves it to ``max`` and an unstable ``argsort``): a token's best match is its lowest-index
B token among equal similarities, and among equal ``node_max`` the lower A position merges first (a stable
sort), in both layouts and on every device.

``r`` follows ToMe's ``model.r``: an int (the same ``r`` in every block), ToMe's ``(r, inflection)`` schedule
(``r`` int with ``inflect``), or one int per block. As ToMe, a block merges at most half of its non-prefix
tokens: an int schedule is clamped to that in later blocks (``(t - num_prefix) // 2`` for ``t`` tokens);
an explicit per-block value over it, or an int ``r`` over it already in block 0, is an error at bind.

Adaptive variant ("ToMe-threshold", raggedvit's): in every block each image merges those A tokens whose
best cosine similarity exceeds ``threshold``, at least ``r_min`` and at most ``r`` (and at most half of its
non-prefix tokens), so every image keeps as many tokens as it needs. Counts differ per image: the packed
buffer keeps the host bound ``width_in - r_min`` (no host sync, CUDA-graph capturable), the A/B alternation
runs over each image's own live tokens and padding never matches.

The matching and the merge run on the dense ``(B, L, ...)`` view, in both layouts: three Triton kernels
(:func:`~raggedvit.ops.tome.tome_merge`) on CUDA and under the Triton interpreter, else (CPU)
:func:`bipartite_merge`'s torch ops (the reference: gathers, one batched matmul, two sorts, ``scatter_add``);
the compaction is the library's usual one (Triton on the packed layout).
:class:`ToMe` is the method object (``prune(model, "tome", r=8)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..ops.tome import launcher as merge_launcher
from ..ops.tome import tome_merge
from .method import VARIANTS, Method, check_int
from .ragged import Selection, arange, cached, const, dense_view
from .selection import fixed_count
from .stage import MID, StageInput, StagePlan

__all__ = ["ToMe", "DEFAULT_R", "parse_r", "bipartite_merge", "match"]

# False: bipartite_merge's torch ops on every device (A/B and debugging). The kernels are faster at every batch size
# on the H200 (ViT-Tiny r=4 fp16 forward in a CUDA graph, b1 801 vs 1,547 us, b64 1,843 vs 2,885, b256 5,757 vs
# 6,969: tome-ab-tf32x3-nvidia-h200-20261130.log).
MERGE_KERNEL = True
# With the kernels: hand them the block's per-head keys, which the matching adds over the heads as it loads them
# (one launch less per block than torch.mean first); False: the fp32 head mean, as the torch path computes it.
# The cosine similarity of the head sum is that of the head mean up to rounding (both layouts run the same).
FOLD_HEADS = True
DEFAULT_R = {"fixed": 4, "adaptive": 16}  # r=None: per variant (trained ViT-Tiny study, docs/methods-tome.md)


def _fail(msg: str) -> None:
    raise ValueError(f"tome: {msg}")


def parse_r(depth: int, r: int | tuple[int, ...], inflect: float = 0.0) -> tuple[int, ...]:
    """ToMe's ``parse_r``: tokens to merge in each of ``depth`` blocks.

    ``r`` int: ``int(lo + (hi - lo) / (depth - 1) * i)`` with ``lo = int(r * (1 - inflect))``, ``hi = 2 r - lo``
    (``inflect`` 0: the same ``r`` everywhere; -1: ToMe's decreasing schedule); a tuple: one value per block,
    padded with zeros to ``depth``.

    >>> parse_r(4, 8)
    (8, 8, 8, 8)
    >>> parse_r(4, 8, -1.0)
    (16, 10, 5, 0)
    """
    if isinstance(r, tuple):
        return r + (0,) * (depth - len(r))
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return tuple(int(lo + step * i) for i in range(depth))


@dataclass(frozen=True, kw_only=True)
class ToMe(Method):
    """ToMe inside every block (between attention and MLP).

    Args:
        variant: ``"fixed"`` (default: ToMe, ``r`` tokens merged per block and image) or ``"adaptive"``
            (per image: the A tokens with best similarity above ``threshold``, between ``r_min`` and ``r``).
        r: tokens merged per block (adaptive: at most): an int for every block (ToMe's ``model.r``), or one
            int per block (ToMe's list form; missing blocks merge nothing); None: the variant's default
            (:data:`DEFAULT_R`: fixed 4, adaptive 16, chosen on the trained ViT-Tiny for <= 1 point of top-1,
            see ``docs/methods-tome.md``). Bound to a model, the method holds the resolved per-block tuple.
        inflect: with an int ``r``: ToMe's ``(r, inflection)`` schedule, in ``[-1, 1]`` (0: constant; -1:
            decreasing).
        threshold: adaptive: cosine similarity (of the head-mean keys) above which an A token merges.
        r_min: adaptive: tokens merged at least per block and image (capped by ``r`` and by what the image
            holds); the buffer width of a block shrinks by it.
        prop_attn: proportional attention (ToMe's default for off-the-shelf models): attention adds
            ``log(size)`` of every key to its logits.
    """

    name: ClassVar[str] = "tome"
    site: ClassVar[str] = MID
    variant: str = "fixed"
    r: int | tuple[int, ...] | None = None
    inflect: float = 0.0
    threshold: float = 0.9
    r_min: int = 0
    prop_attn: bool = True

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            _fail(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        r = self.r
        if r is None:
            pass
        elif isinstance(r, (tuple, list)):
            if not r or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r):
                _fail(f"r must be an int >= 0 or a non-empty sequence of ints >= 0 (one per block), got {r!r}")
            object.__setattr__(self, "r", tuple(r))
        else:
            check_int(self.name, "r", r, 0)
        inflect = self.inflect
        if isinstance(inflect, bool) or not isinstance(inflect, (int, float)) or not -1.0 <= inflect <= 1.0:
            _fail(f"inflect must be a number in [-1, 1], got {inflect!r}")
        if inflect and isinstance(self.r, tuple):
            _fail("inflect applies to an int r (ToMe's (r, inflection) schedule), not to a per-block r")
        object.__setattr__(self, "inflect", float(inflect))
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not -1.0 <= t <= 1.0:
            _fail(f"threshold must be a cosine similarity in [-1, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))
        check_int(self.name, "r_min", self.r_min, 0)
        if not isinstance(self.prop_attn, bool):
            _fail(f"prop_attn must be a bool, got {self.prop_attn!r}")

    @property
    def fixed(self) -> bool:
        return self.variant == "fixed"

    @property
    def proportional_attention(self) -> bool:
        return self.prop_attn

    def schedule(self, depth: int) -> tuple[int, ...]:
        """Tokens to merge (adaptive: at most) in each block, before the per-block clamp of :meth:`bind`."""
        r = DEFAULT_R[self.variant] if self.r is None else self.r
        if isinstance(r, tuple) and len(r) > depth:
            _fail(f"r has {len(r)} values for a model of {depth} blocks")
        return parse_r(depth, r, self.inflect)

    def bind(self, *, depth: int, num_prefix: int, num_patches: int) -> tuple[Method, tuple[StagePlan, ...]]:
        explicit = isinstance(self.r, tuple)
        plans, resolved = [], []
        width = num_prefix + num_patches
        for block, r in enumerate(self.schedule(depth)):
            most = (width - num_prefix) // 2  # ToMe: at most half of the non-prefix tokens per block
            if r > most and (explicit or block == 0):
                what = f"r[{block}] = {r}" if explicit else f"r = {r}"
                _fail(f"{what} is more than block {block} can merge: {width} tokens enter it, so at most "
                      f"({width} - {num_prefix}) // 2 = {most} (half of the non-prefix tokens)")
            r = min(r, most)
            resolved.append(r)
            if r == 0:
                continue
            if self.fixed:
                out, exact, keep = width - r, True, width - r - num_prefix
            else:
                out, exact, keep = width - min(self.r_min, r), False, None
            plans.append(StagePlan(len(plans), block, MID, width, out, exact, keep, False))
            width = out
        return replace(self, r=tuple(resolved), inflect=0.0), tuple(plans)

    def _stage_rule(self, plan: StagePlan) -> dict:
        r = self.r[plan.block] if isinstance(self.r, tuple) else self.r
        if self.fixed:
            return dict(r=r)
        return dict(r=r, threshold=self.threshold, r_min=min(self.r_min, r))

    def select(self, inp: StageInput) -> Selection:
        plan, meta = inp.plan, inp.meta
        k = inp.qkv[1]  # (R, H, D)
        x = dense_view(inp.x, meta)
        size = None if inp.size is None else dense_view(inp.size, meta)
        lengths = None if meta.uniform else meta.lengths
        width = min(plan.width_out, meta.max_seqlen)
        kernel = x.is_cuda or merge_launcher.interpreted
        if MERGE_KERNEL and kernel:  # both layouts
            # (B, L, H, D) per-head keys, added in the kernel (FOLD_HEADS), or (B, L, D) their fp32 mean
            metric = dense_view(k if FOLD_HEADS else torch.mean(k, dim=1, dtype=torch.float32), meta)
            index, count, values, new_size = tome_merge(metric, x, size, lengths, inp.num_prefix,
                                                        **self._stage_rule(plan))
            return Selection(index, count, width, self.fixed and lengths is None, values=values, size=new_size)
        metric = dense_view(torch.mean(k, dim=1, dtype=torch.float32), meta)  # (B, L, D): keys, head mean
        return bipartite_merge(metric, x, size, lengths, inp.num_prefix, width=width, fresh=not meta.dense_identity,
                               **self._stage_rule(plan))

    def scores(self, inp: StageInput) -> torch.Tensor:
        """``(B, L)`` best cosine similarity of every A token (even position) to a B token; -inf elsewhere."""
        meta = inp.meta
        metric = dense_view(torch.mean(inp.qkv[1], dim=1, dtype=torch.float32), meta)
        node_max, _ = match(metric, None if meta.uniform else meta.lengths, inp.num_prefix)
        out = torch.full(node_max.shape[:1] + (meta.max_seqlen,), -math.inf, device=node_max.device)
        out[:, 0::2] = node_max
        return out


def _positions_ok(L: int, lengths: torch.Tensor | None, num_prefix: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A rows, B columns)`` that may match: non-prefix positions below the length. Uniform batches:
    cached ``(La,)`` / ``(Lb,)``; else ``(B, La)`` / ``(B, Lb)``."""
    def build():
        pos = arange(L, device)
        return pos[0::2] >= num_prefix, pos[1::2] >= num_prefix
    row_ok, col_ok = cached(("tome_ok", L, num_prefix, torch.device(device)), build)
    if lengths is None:
        return row_ok, col_ok
    pos = arange(L, device)
    return row_ok & (pos[0::2] < lengths[:, None]), col_ok & (pos[1::2] < lengths[:, None])


def match(metric: torch.Tensor, lengths: torch.Tensor | None, num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching scores: ``(node_max, node_idx)``, each ``(B, La)``: every A token's (even
    position ``2 i``) best cosine similarity to a B token (odd position ``2 j + 1``) and that ``j`` (the lowest
    on ties). Rows that may not merge (prefix, padding, or no B candidate) are ``-inf``.

    ``metric``: ``(B, L, D)`` (any values past a length); ``lengths``: ``(B,)`` or None (every image holds ``L``).
    """
    L = metric.shape[1]
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True)
    scores = m[:, 0::2] @ m[:, 1::2].transpose(1, 2)  # (B, La, Lb)
    row_ok, col_ok = _positions_ok(L, lengths, num_prefix, metric.device)
    ok = row_ok[..., :, None] & col_ok[..., None, :]
    scores = torch.where(ok, scores, const(-math.inf, torch.float32, scores.device))
    return scores.max(dim=-1)  # first maximum on ties: the lowest B index


def _order_keys(L: int, num_prefix: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept key, dropped key)`` per position ``l`` (``(L,)`` int64, cached): sorting by them gives ToMe's
    output order: prefix (``l``), unmerged A tokens (``L + l``), B tokens (``2 L + l``), then the dropped
    ones (``3 L + l``)."""
    def build():
        pos = arange(L, device)
        group = torch.where(pos < num_prefix, 0, torch.where(pos % 2 == 0, 1, 2))
        return pos + group * L, pos + 3 * L
    return cached(("tome_keys", L, num_prefix, torch.device(device)), build)


def bipartite_merge(metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor | None, lengths: torch.Tensor | None,
                    num_prefix: int, *, r: int, width: int, threshold: float | None = None, r_min: int = 0,
                    fresh: bool = False) -> Selection:
    """One ToMe merge of every image of a dense batch, as a :class:`~.ragged.Selection` with merged values.

    Args:
        metric: ``(B, L, D)`` matching features (the block's head-mean keys).
        x: ``(B, L, C)`` tokens (the block's post-attention residual stream).
        size: ``(B, L)`` fp32 token sizes, or None (all 1).
        lengths: ``(B,)`` int64 tokens per image, or None when every image holds ``L`` (no masking ops).
        num_prefix: protected prefix tokens.
        r: host int. Fixed (``threshold`` None): every image merges ``min(r, (len - P) // 2)`` tokens, exactly
            ``r`` when ``lengths`` is None (the caller checked ``r <= (L - P) // 2``). Adaptive: at most ``r``.
        width: host bound on the tokens kept per image (the selection's width).
        threshold: adaptive: merge the A tokens whose best similarity exceeds it, at least ``r_min`` (and at
            most ``r`` and ``(len - P) // 2``).
        fresh: ``x`` is a private copy that may be written (a gathered dense view).

    Returns:
        A selection whose ``index`` is ToMe's output order, ``values`` the merged tokens (the weighted mean
        ``sum(size * x) / sum(size)`` at every B position, fp32 accumulation, ``x.dtype``) and ``size`` the
        summed sizes. ``exact`` for the fixed rule on a uniform batch.
    """
    B, L, C = x.shape
    device = x.device
    P = num_prefix
    node_max, node_idx = match(metric, lengths, P)
    vals, order = torch.sort(node_max, dim=1, descending=True, stable=True)  # ties: lower A position first
    most = (L - P) // 2 if lengths is None else torch.div((lengths - P).clamp(min=0), 2, rounding_mode="floor")
    if threshold is None:
        n = None if lengths is None else most.clamp(max=r)
    else:
        n = (vals[:, :min(r, (L - P) // 2)] > threshold).sum(1).clamp(min=r_min)
        n = n.clamp(max=most) if lengths is None else torch.minimum(n, most)
    R = min(r, (L - P) // 2)  # the most any image of this batch may merge (the padded grid may be narrower)
    src_a = order[:, :R]  # (B, R) A indices, best first; the first n[b] merge
    src_pos = src_a * 2
    dst_b = node_idx.gather(1, src_a)  # (B, R) B indices they merge into
    live = None if n is None else arange(R, device)[None, :] < n[:, None]

    # output order: sort per-position keys (unique, so the order is deterministic)
    drop = torch.zeros(B, L, dtype=torch.bool, device=device)
    drop = drop.scatter_(1, src_pos, True) if live is None else drop.scatter_(1, src_pos, live)
    if lengths is not None:
        drop |= arange(L, device)[None, :] >= lengths[:, None]
    kept_key, drop_key = _order_keys(L, P, device)
    index = torch.sort(torch.where(drop, drop_key, kept_key), dim=1).indices
    if n is None:
        count = fixed_count(B, L - R, device)
    else:
        count = (L if lengths is None else lengths) - n

    # size-weighted merge into the B tokens (fp32), ToMe's merge_wavg
    zero = const(0.0, torch.float32, device)
    src_x = x.gather(1, src_pos[:, :, None].expand(B, R, C)).float()
    xb = x[:, 1::2]
    if size is None:
        num = xb.to(torch.float32, copy=True)
        src_s = torch.ones(B, R, device=device) if live is None else live.float()
        den = torch.ones(B, xb.shape[1], device=device)
        new_size = torch.ones(B, L, device=device)
    else:
        sb = size[:, 1::2]
        num = xb.float() * sb[:, :, None]
        src_s = size.gather(1, src_pos)
        if live is not None:
            src_s = torch.where(live, src_s, zero)
        src_x = src_x * src_s[:, :, None]
        den = sb.clone()
        new_size = size.clone()
    if live is not None:
        src_x = torch.where(live[:, :, None], src_x, zero)  # rows past n may hold anything (0 * NaN is NaN)
    num.scatter_add_(1, dst_b[:, :, None].expand(B, R, C), src_x)
    den.scatter_add_(1, dst_b, src_s)
    values = x if fresh else x.clone()
    values[:, 1::2] = (num / den[:, :, None]).to(x.dtype)
    new_size[:, 1::2] = den
    return Selection(index, count, width, n is None, values=values, size=new_size)
