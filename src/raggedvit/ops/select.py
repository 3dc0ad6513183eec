"""Selections in a few launches: ``l2_select`` (Threshold-L2), ``best_first_select`` (EViT with its fused
token, DynamicViT, fixed-count ATS) and ``ats_select`` (ATS sampling).

The torch paths (:mod:`raggedvit.pruning.threshold_l2`, ``.evit``, ``.dynamicvit``) spend a dozen small ops per
stage (norms, dense gathers, masks, sorts, cumsums, clamps, a batched matmul for the fused token); each op
here does the same selection in one Triton launch (plus the norms for Threshold-L2), ranking by pairwise
comparisons (stable tie rule) instead of sorting. See :mod:`raggedvit.kernels.select`.

Malformed ``lengths`` or ``dense_rows`` (and a ``width`` too small for the rule) are clamped in the kernels
(lengths to ``[0, L]``, rows to the buffer, the count to ``width``; see :mod:`raggedvit.ops.attention`); every
op's ``check_lengths=True`` turns them into a ``ValueError`` instead (one host sync, debugging only).

Each op is also registered as ``torch.ops.raggedvit.<name>`` with a fake implementation and called that way
under ``torch.compile`` / ``torch.export`` (see :mod:`raggedvit.ops.library`).
"""

from __future__ import annotations

import torch

from ..kernels.select import (
    ats_rank_fwd,
    ats_sample_fwd,
    best_first_rank_fwd,
    best_first_select_fwd,
    l2_select_fwd,
)
from .checks import check_ragged
from .launch import DirectLauncher
from .library import check_compilable, is_compiling

launcher = DirectLauncher(l2_select_fwd, "l2_select")
best_first_launcher = DirectLauncher(best_first_select_fwd, "best_first_select")
best_first_rank_launcher = DirectLauncher(best_first_rank_fwd, "best_first_rank")
ats_launchers = (DirectLauncher(ats_rank_fwd, "ats_rank"), DirectLauncher(ats_sample_fwd, "ats_sample"))
_BIG = 1 << 30
ATS_MAX_TOKENS = 8192  # = raggedvit.pruning.ats.MAX_TOKENS


def ats_cdf_bits(num_samples: int) -> int:
    """Fraction bits of the integer ATS significances: :func:`raggedvit.pruning.ats.cdf_bits` (ops does not
    import pruning; a test checks that both agree)."""
    return min(40, 61 - (ATS_MAX_TOKENS - 1).bit_length() - max(num_samples - 1, 1).bit_length())


def _launch(lau: DirectLauncher, dev: int, grid: tuple[int, int], tensors: tuple, ints: tuple, flags: tuple,
            dtype: torch.dtype) -> None:
    """Launch on ``grid``; the direct path once the key (dtype, device, constexprs, alignment) is cached."""
    ptrs = tuple(t.data_ptr() for t in tensors)
    key = (dtype, dev, flags) if not any(p & 15 for p in ptrs) else None
    lau.launch(key, dev, (*grid, 1), ptrs, ints, lambda: (*tensors, *ints, *flags), num_warps=8)


_PAIRS = 4096  # comparison tile size (see _blocks)


def _check_meta(op: str, dense_rows: torch.Tensor, lengths: torch.Tensor, num_prefix: int, width: int,
                rows: int, check_lengths: bool) -> tuple[int, int]:
    """Host checks shared by the selections (shapes, ``0 <= num_prefix <= width``, a non-empty buffer) and,
    with ``check_lengths``, the device validation of ``lengths`` and ``dense_rows``. Returns ``(B, L)``."""
    if dense_rows.dim() != 2 or lengths.dim() != 1 or lengths.shape[0] != dense_rows.shape[0]:
        raise ValueError(f"{op}: need dense_rows (B, L) and lengths (B,), got {tuple(dense_rows.shape)} and "
                         f"{tuple(lengths.shape)}")
    for name, v in (("num_prefix", num_prefix), ("width", width)):
        if type(v) is not int or v < 0:
            raise TypeError(f"{op}: {name} must be a Python int >= 0, got {v!r}")
    if num_prefix > width:
        raise ValueError(f"{op}: num_prefix {num_prefix} > width {width} (the prefix is always kept)")
    batch, L = dense_rows.shape
    if batch and L and rows == 0:
        raise ValueError(f"{op}: the token buffer has no rows for {batch} sequences of {L} positions")
    if check_lengths:
        check_ragged(op, rows, bounded=(("lengths", lengths, 0, L), ("dense_rows", dense_rows, 0, rows - 1)))
    return batch, L


def _blocks(L: int) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_J): all positions of an image, and comparison tiles of ``_PAIRS`` pairs (with 16K-pair
    tiles on 4 warps the kernels spilled registers: 135 us per launch at batch 1 on an H100)."""
    block_l = max(16, 1 << (L - 1).bit_length())
    return block_l, max(4, min(64, _PAIRS // block_l))


def l2_select(x: torch.Tensor, dense_rows: torch.Tensor, lengths: torch.Tensor, num_prefix: int, width: int, *,
              k: int | None = None, threshold: float | None = None, alpha: float | None = None, k_min: int = 1,
              k_max: int | None = None, check_lengths: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Threshold-L2 keep decisions of a ragged batch.

    Args:
        x: ``(rows, C)`` token buffer, last stride 1 (the block input, pre-LayerNorm).
        dense_rows: ``(B, L)`` int64 row of every position (last stride 1); ``lengths``: ``(B,)`` int64.
        num_prefix: prefix tokens ``P`` (always kept, never scored).
        width: host bound on the output count (``P + k`` for the fixed rule).
        k: fixed rule: keep the ``k`` best candidates. Otherwise exactly one of ``threshold`` (absolute) and
            ``alpha`` (times the image's mean candidate norm), with ``k_min`` / ``k_max`` clamps.
        check_lengths: validate ``lengths`` (``[0, L]``) and ``dense_rows`` (rows of ``x``) on the device
            first; ``ValueError`` naming the first bad value (one host sync; debugging only).

    Returns:
        ``(index, count)``: int64 ``(B, width)`` kept positions in original order (prefix first, filler 0
        past ``count``) and int64 ``(B,)`` ``P + kept``. Same decisions as
        :func:`raggedvit.pruning.threshold_l2.select_topk` / ``select_threshold`` (the same norm op; the
        relative threshold's mean may differ in the last fp32 bit). Two launches (norms, selection), no host
        sync; CUDA tensors, or CPU tensors under the Triton interpreter.
    """
    fixed = k is not None
    if not fixed and (threshold is None) == (alpha is None):
        raise ValueError("l2_select: give k=, or exactly one of threshold= and alpha=")
    compiling = is_compiling()
    if compiling:
        check_compilable("l2_select", None, check_lengths)
    dev = x.get_device()
    if dev < 0 and not launcher.interpreted:
        raise ValueError("l2_select: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "raggedvit.pruning.threshold_l2")
    if x.dim() != 2 or x.stride(1) != 1 or dense_rows.stride(1) != 1 or dense_rows.dtype != torch.int64 \
            or lengths.dtype != torch.int64 or not lengths.is_contiguous():
        raise ValueError("l2_select: x (rows, C) and dense_rows need last stride 1; dense_rows, lengths int64")
    batch, L = _check_meta("l2_select", dense_rows, lengths, num_prefix, width, x.shape[0], check_lengths)
    if compiling:
        return torch.ops.raggedvit.l2_select(x, dense_rows, lengths, num_prefix, width, k, _opt_float(threshold),
                                             _opt_float(alpha), k_min, k_max)
    index = torch.empty(batch, width, dtype=torch.int64, device=x.device)
    count = torch.empty(batch, dtype=torch.int64, device=x.device)
    if batch == 0:
        return index, count
    norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)  # one parallel launch over the rows
    block_l, block_j = _blocks(max(L, width))  # every output slot is written
    if launcher.interpreted:  # the interpreter runs each tile in Python: one tile (integer ranks, same result)
        block_j = block_l
    ints = (batch, L, width, num_prefix, x.shape[0], dense_rows.stride(0), k or 0, k_min,
            _BIG if k_max is None else k_max, float(threshold or 0.0), float(alpha or 0.0))
    _launch(launcher, dev, (batch, 1), (norms, dense_rows, lengths, index, count), ints,
            (fixed, alpha is not None, block_l, block_j), x.dtype)
    return index, count


def best_first_select(score: torch.Tensor, y: torch.Tensor, dense_rows: torch.Tensor, lengths: torch.Tensor,
                      num_prefix: int, width: int, *, k: int | None = None, mass: float | None = None,
                      threshold: float | None = None, fuse: bool = False, k_min: int = 1,
                      k_max: int | None = None, row_weight: torch.Tensor | None = None,
                      ascending: bool = False, check_lengths: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Best-first keep decisions (EViT, DynamicViT) of a ragged batch, and EViT's fused token.

    Args:
        score: scores (fp32, or fp16/bf16 read as fp32): ``(B, L)`` per position with last stride 1 (EViT's
            head-mean CLS attention), or ``(rows,)`` per buffer row, any stride (DynamicViT's keep
            log-probability, a column of the predictor output), read through ``dense_rows``.
        y: ``(rows, C)`` token buffer (the fused token's values; any buffer when not fusing), last stride 1.
        dense_rows: ``(B, L)`` int64 row of every position (last stride 1); ``lengths``: ``(B,)`` int64.
        num_prefix: prefix tokens ``P`` (always kept first).
        width: host bound on the output count (the width of the matching :mod:`raggedvit.pruning` function).
        k / mass / threshold: exactly one rule: the ``k`` best; the shortest best-first prefix holding
            ``mass`` of the score total (EViT-mass); every candidate with ``score > threshold``. The last two
            are clamped to ``[k_min, k_max]`` and the candidates available.
        fuse: append the fused token (index ``L``) when something was dropped (EViT).
        row_weight: fp32 ``(rows,)`` factor per buffer row (contiguous) multiplied into the score (ATS: the
            value norm).
        ascending: write the kept tokens worst first (ATS's order) instead of best first.
        check_lengths: validate ``lengths`` (``[0, L]``) and ``dense_rows`` (the buffer rows) on the device
            first; ``ValueError`` naming the first bad value (one host sync; debugging only).

    Returns:
        ``(index, count, extra)``: int64 ``(B, width)`` (prefix, kept best first, the fused token, filler 0),
        int64 ``(B,)`` and ``(B, C)`` fused tokens in ``y.dtype`` (None without ``fuse``). Same decisions as
        :func:`raggedvit.pruning.evit.select_topk` / ``select_mass`` and
        :func:`raggedvit.pruning.dynamicvit.select_topk` / ``select_threshold`` and
        :func:`raggedvit.pruning.ats.select_topk` (with ``row_weight``, ``ascending``), up to fp32 rounding
        of the attention-mass sums. No host sync; CUDA tensors, or CPU tensors under the Triton interpreter.
    """
    rules = [r for r, v in ((0, k), (1, mass), (2, threshold)) if v is not None]
    if len(rules) != 1:
        raise ValueError("best_first_select: give exactly one of k=, mass= and threshold=")
    compiling = is_compiling()
    if compiling:
        check_compilable("best_first_select", None, check_lengths)
    dev = y.get_device()
    if dev < 0 and not best_first_launcher.interpreted:
        raise ValueError("best_first_select: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "raggedvit.pruning.evit / dynamicvit")
    by_row = score.dim() == 1
    if score.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not (by_row or score.stride(1) == 1) \
            or y.stride(1) != 1 or dense_rows.stride(1) != 1 or dense_rows.dtype != torch.int64 \
            or lengths.dtype != torch.int64 or not lengths.is_contiguous() or (row_weight is not None and (
                row_weight.dtype != torch.float32 or not row_weight.is_contiguous())):
        raise ValueError("best_first_select: float scores, int64 dense_rows and lengths, last strides 1, "
                         "contiguous fp32 row_weight")
    if y.dim() != 2 or (row_weight is not None and row_weight.dim() != 1) or not (
            by_row or (score.dim() == 2 and score.shape[0] == dense_rows.shape[0]
                       and score.shape[1] >= dense_rows.shape[1])):
        raise ValueError(f"best_first_select: need y (rows, C), row_weight (rows,) and score (rows,) or (B, >= L) "
                         f"for dense_rows (B, L) = {tuple(dense_rows.shape)}, got y {tuple(y.shape)}, score "
                         f"{tuple(score.shape)}")
    # the rows every tensor read through dense_rows has (row indices are clamped below it)
    indexed = [t.shape[0] for t, used in ((score, by_row), (row_weight, row_weight is not None), (y, fuse)) if used]
    rows = min(indexed, default=1)
    batch, L = _check_meta("best_first_select", dense_rows, lengths, num_prefix, width, rows, check_lengths)
    if compiling:
        # a strided column (DynamicViT's keep log-probability) reaches the op as a contiguous copy: the op's
        # fake and Inductor's fallback then see one plain layout (rows, ) whatever produced the score
        index, count, extra = torch.ops.raggedvit.best_first_select(
            score.contiguous(), y, dense_rows, lengths, num_prefix, width, k, _opt_float(mass), _opt_float(threshold),
            fuse, k_min, k_max, row_weight, ascending)
        return index, count, extra if fuse else None
    C = y.shape[1]
    index = torch.empty(batch, width, dtype=torch.int64, device=y.device)
    count = torch.empty(batch, dtype=torch.int64, device=y.device)
    extra = torch.empty(batch, C, dtype=y.dtype, device=y.device) if fuse else None
    if batch == 0:
        return index, count, extra
    block_l = max(16, 1 << (max(L, width) - 1).bit_length())  # every output slot is written
    # the interpreter runs each program in Python: one program per image (integer ranks; each row's fp32 sum
    # of better scores is reduced over the same positions: the same result)
    block_i = block_l if best_first_rank_launcher.interpreted else max(1, min(64, _PAIRS // block_l))
    block_c = max(8, min(64, 4096 // block_l))
    rank = torch.empty(batch, L, dtype=torch.int32, device=y.device)
    before = torch.empty(batch, L, dtype=torch.float32, device=y.device) if rules[0] == 1 else rank
    weight = score if row_weight is None else row_weight
    _launch(best_first_rank_launcher, dev, (batch, -(-L // block_i)),
            (score, weight, dense_rows, lengths, rank, before),
            (L, num_prefix, rows, score.stride(0), dense_rows.stride(0)),
            (rules[0] == 1, by_row, row_weight is not None, block_i, block_l), (y.dtype, score.dtype))
    ints = (batch, L, width, C, num_prefix, rows, score.stride(0), y.stride(0), dense_rows.stride(0),
            k or 0, k_min, _BIG if k_max is None else k_max, float(mass or 0.0), float(threshold or 0.0))
    tensors = (score, weight, y, dense_rows, lengths, rank, before, index, count, extra if fuse else count)
    # small batches split the fused token's channels over programs to fill the GPU
    grid = (batch, max(1, min(-(-C // block_c), 128 // batch)) if fuse else 1)
    flags = (rules[0], by_row, row_weight is not None, ascending, fuse, block_l, block_c)
    _launch(best_first_launcher, dev, grid, tensors, ints, flags, (y.dtype, score.dtype))
    return index, count, extra


def ats_select(score: torch.Tensor, v_norm: torch.Tensor | None, dense_rows: torch.Tensor, lengths: torch.Tensor,
               num_prefix: int, width: int, num_samples: int, *, check_lengths: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """ATS inverse-transform sampling (:func:`raggedvit.pruning.ats.select_sampling`) in two launches: the
    significance ranks (a grid of (image, position slice) programs, quadratic fp32 / int32 tiles), then the
    integer CDF, the sample hits (O(1) per candidate) and the output slots (one program per image, linear).

    Args:
        score: ``(B, L)`` fp32 head-mean CLS attention (last stride 1); ``v_norm``: fp32 ``(rows,)`` value
            norm per buffer row (contiguous): the significance is their product; or None: ``score`` is the
            significance (e.g. :func:`raggedvit.ops.cls_attention.cls_attention_mean` with ``v``).
        dense_rows: ``(B, L)`` int64 row of every position (last stride 1); ``lengths``: ``(B,)`` int64.
        num_prefix: prefix tokens ``P`` (kept first); ``width``: ``P + min(L - P, num_samples)``.
        num_samples: sample points ``M``.
        check_lengths: validate ``lengths`` (``[0, L]``) and ``dense_rows`` (rows of ``v_norm``) on the device
            first; ``ValueError`` naming the first bad value (one host sync; debugging only).

    Returns:
        ``(index, count)``: int64 ``(B, width)`` (prefix, kept tokens by ascending significance, filler 0) and
        int64 ``(B,)``. The same decisions as the torch function, always: both compute the same integer CDF
        and integer sample points (:func:`raggedvit.pruning.ats.fixed_point`). No host sync.
    """
    compiling = is_compiling()
    if compiling:
        check_compilable("ats_select", None, check_lengths)
    dev = score.get_device()
    if dev < 0 and not ats_launchers[0].interpreted:
        raise ValueError("ats_select: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1); use "
                         "raggedvit.pruning.ats")
    weighted = v_norm is not None
    if score.dtype != torch.float32 or (weighted and (v_norm.dtype != torch.float32 or not v_norm.is_contiguous())) \
            or score.stride(1) != 1 or dense_rows.stride(1) != 1 or dense_rows.dtype != torch.int64 \
            or lengths.dtype != torch.int64 or not lengths.is_contiguous() or num_samples < 1:
        raise ValueError("ats_select: fp32 score (last stride 1) and v_norm, int64 dense_rows and lengths, "
                         "num_samples >= 1")
    if (weighted and v_norm.dim() != 1) or score.dim() != 2 or score.shape[0] != dense_rows.shape[0] \
            or score.shape[1] < dense_rows.shape[1]:
        raise ValueError(f"ats_select: need score (B, >= L) and v_norm (rows,) for dense_rows (B, L) = "
                         f"{tuple(dense_rows.shape)}, got {tuple(score.shape)} and "
                         f"{None if v_norm is None else tuple(v_norm.shape)}")
    rows = v_norm.shape[0] if weighted else dense_rows.numel()  # without v_norm no row is read
    batch, L = _check_meta("ats_select", dense_rows, lengths, num_prefix, width, rows, check_lengths)
    bits = ats_cdf_bits(num_samples)
    if L > ATS_MAX_TOKENS or bits < 16:
        raise ValueError(f"ats_select: needs L <= {ATS_MAX_TOKENS} and num_samples <= 2**32, got L={L}, "
                         f"num_samples={num_samples}")
    if compiling:
        return torch.ops.raggedvit.ats_select(score, v_norm, dense_rows, lengths, num_prefix, width, num_samples)
    device = score.device
    index = torch.empty(batch, width, dtype=torch.int64, device=device)
    count = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return index, count
    qs = torch.empty(batch, L, dtype=torch.int64, device=device)  # integer significance by rank
    ps = torch.empty(batch, L, dtype=torch.int32, device=device)  # position by rank
    block_l = max(16, 1 << (L - 1).bit_length())
    # the interpreter runs each program in Python: one program per image (the same integers, ~4x faster)
    block_i = block_l if ats_launchers[0].interpreted else max(1, min(64, _PAIRS // block_l))
    rank_k, sample_k = ats_launchers
    weight = v_norm if weighted else score  # not read without v_norm
    _launch(rank_k, dev, (batch, -(-L // block_i)), (score, weight, dense_rows, lengths, qs, ps),
            (L, num_prefix, rows, score.stride(0), dense_rows.stride(0), bits), (weighted, block_i, block_l),
            score.dtype)
    _launch(sample_k, dev, (batch, 1), (qs, ps, lengths, index, count), (L, width, num_prefix, num_samples),
            (block_l,), score.dtype)
    return index, count


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


# ---------------------------------------------------------------------------------------- torch.library ops
Tensor = torch.Tensor


@torch.library.custom_op("raggedvit::l2_select", mutates_args=())
def _l2_select_op(x: Tensor, dense_rows: Tensor, lengths: Tensor, num_prefix: int, width: int, k: int | None,
                  threshold: float | None, alpha: float | None, k_min: int, k_max: int | None
                  ) -> tuple[Tensor, Tensor]:
    return l2_select(x, dense_rows, lengths, num_prefix, width, k=k, threshold=threshold, alpha=alpha, k_min=k_min,
                     k_max=k_max)


@_l2_select_op.register_fake
def _(x, dense_rows, lengths, num_prefix, width, k, threshold, alpha, k_min, k_max):
    batch = dense_rows.shape[0]
    return x.new_empty((batch, width), dtype=torch.int64), x.new_empty((batch,), dtype=torch.int64)


@torch.library.custom_op("raggedvit::best_first_select", mutates_args=())
def _best_first_select_op(score: Tensor, y: Tensor, dense_rows: Tensor, lengths: Tensor, num_prefix: int, width: int,
                          k: int | None, mass: float | None, threshold: float | None, fuse: bool, k_min: int,
                          k_max: int | None, row_weight: Tensor | None, ascending: bool
                          ) -> tuple[Tensor, Tensor, Tensor]:
    index, count, extra = best_first_select(score, y, dense_rows, lengths, num_prefix, width, k=k, mass=mass,
                                            threshold=threshold, fuse=fuse, k_min=k_min, k_max=k_max,
                                            row_weight=row_weight, ascending=ascending)
    return index, count, y.new_empty((0,)) if extra is None else extra  # an op returns tensors: empty = none


@_best_first_select_op.register_fake
def _(score, y, dense_rows, lengths, num_prefix, width, k, mass, threshold, fuse, k_min, k_max, row_weight,
      ascending):
    batch = dense_rows.shape[0]
    extra = y.new_empty((batch, y.shape[1])) if fuse else y.new_empty((0,))
    return y.new_empty((batch, width), dtype=torch.int64), y.new_empty((batch,), dtype=torch.int64), extra


@torch.library.custom_op("raggedvit::ats_select", mutates_args=())
def _ats_select_op(score: Tensor, v_norm: Tensor | None, dense_rows: Tensor, lengths: Tensor, num_prefix: int,
                   width: int, num_samples: int) -> tuple[Tensor, Tensor]:
    return ats_select(score, v_norm, dense_rows, lengths, num_prefix, width, num_samples)


@_ats_select_op.register_fake
def _(score, v_norm, dense_rows, lengths, num_prefix, width, num_samples):
    batch = dense_rows.shape[0]
    return score.new_empty((batch, width), dtype=torch.int64), score.new_empty((batch,), dtype=torch.int64)
