"""``ragged_attention``: the public varlen attention op (validation, launch, ``torch.library`` registration).

Three layers, as in flash-attn:

* :func:`ragged_attention` - the public function: checks its inputs (before any launch) and launches the
  Triton kernel through a :class:`~raggedvit.ops.launch.DirectLauncher`, so the host cost per call is a
  few microseconds; under ``torch.compile`` it calls the registered op instead.
* ``torch.ops.raggedvit.ragged_attention`` - a ``torch.library`` custom op with a fake (meta)
  implementation, so ``torch.compile(fullgraph=True)`` traces through callers.
* the kernel in :mod:`raggedvit.kernels.attention`.

Forward only (inference). See :func:`ragged_attention` for shapes, dtypes and limits.

Malformed metadata (the rule of every op in :mod:`raggedvit.ops`)
-----------------------------------------------------------------
Kernels never trust ragged metadata read from the device. Each gets the row counts of its tensors as host
ints (from their shapes, never read back) and clamps, in the kernel, every offset, length, count and index
it reads, so malformed metadata gives the defined result below, never an out-of-bounds access, and costs
no host sync:

* offsets ``cu_seqlens`` over ``R`` rows are read as ``c[i] = min(max(0, cu[0], ..., cu[i]), R)``: a
  negative start reads from row 0, an offset past the rows is truncated to ``R``, a decreasing offset
  gives an empty sequence (it is raised to the one before), so sequences never overlap;
* a row range ``[starts[b], ends[b])`` is read as ``[s, e)``, ``s = clamp(starts[b], 0, R)``,
  ``e = clamp(ends[b], s, R)``;
* lengths, counts and live row counts are clamped to ``[0, n]`` (``n``: what they count within: the
  positions ``L`` of a dense view, the output ``width``, the buffer rows ``M``); row indices
  (``dense_rows``) to ``[0, R - 1]``; position indices to ``[0, L - 1]``, or ``[0, L]`` where ``L`` names an
  appended token;
* a sequence longer than ``max_seqlen`` (the grid bound) is still computed over all its rows; an output
  narrower than a sequence (``width``, ``out_width``) keeps what fits.

Outputs stay fully defined: rows of :func:`ragged_attention` outside every sequence are zero. Pass
``check_lengths=True`` (every such op has it) to validate the metadata on the device first and get a
``ValueError`` naming the problem instead (one host sync; debugging only; see
:func:`raggedvit.ops.checks.check_ragged`).
"""

from __future__ import annotations

import torch
import triton

from ..kernels.attention import ragged_attention_fwd
from .checks import check_ragged
from .launch import DirectLauncher, current_device, hooks_installed, raw_stream

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128
MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions y (batch + 1) and z (heads)
_LOG2E = 1.4426950408889634

launcher = DirectLauncher(ragged_attention_fwd, "ragged_attention")
_INT32 = torch.int32
_is_compiling = torch.compiler.is_compiling


def _config(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, BLOCK_M, BLOCK_N, num_warps, num_stages) for a dtype and head dim. Never depends on lengths."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    if dtype == torch.float32:
        return block_d, 32, 32, 4, 2
    return block_d, 64, 64, 4, 2


def _variants() -> dict[torch.dtype, dict[int, tuple]]:
    """dtype -> head_dim -> (BLOCK_M, launch options, default qk scale, constexpr arguments)."""
    table: dict[torch.dtype, dict[int, tuple]] = {}
    for dtype in SUPPORTED_DTYPES:
        table[dtype] = {}
        for d in range(MIN_HEAD_DIM, MAX_HEAD_DIM + 1, 8):
            block_d, block_m, block_n, num_warps, num_stages = _config(dtype, d)
            tail = (d, block_d, block_m, block_n, dtype == torch.float32,
                    launcher.interpreted and dtype == torch.bfloat16)
            table[dtype][d] = (block_m, {"num_warps": num_warps, "num_stages": num_stages}, d**-0.5 * _LOG2E, tail)
    return table


VARIANTS = _variants()


def _fail(kind: type[Exception], msg: str) -> None:
    raise kind(f"ragged_attention: {msg}")


def _check_inputs(q, k, v, cu_seqlens, max_seqlen, scale, out, key_bias=None) -> None:
    """Every check the launch relies on. Raises ``TypeError``/``ValueError`` naming the argument."""
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, torch.Tensor):
            _fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if type(max_seqlen) is not int:  # bool and numpy/tensor scalars are rejected on purpose
        _fail(TypeError, f"max_seqlen must be a Python int (a host-side bound), got {type(max_seqlen).__name__}")
    if max_seqlen < 1:
        _fail(ValueError, f"max_seqlen must be >= 1, got {max_seqlen}")
    if scale is not None and not isinstance(scale, (int, float)):
        _fail(TypeError, f"scale must be a float or None, got {type(scale).__name__}")
    if q.dtype not in SUPPORTED_DTYPES:
        _fail(TypeError, f"q has dtype {q.dtype}; supported: float16, bfloat16, float32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        _fail(TypeError, f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if cu_seqlens.dtype != torch.int32:
        _fail(TypeError, f"cu_seqlens must be int32, got {cu_seqlens.dtype} (convert once per batch with .int())")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        _fail(ValueError, f"q, k, v must be (total_tokens, heads, head_dim), got {tuple(q.shape)}, "
              f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape != k.shape or q.shape != v.shape:
        _fail(ValueError, f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    head_dim = q.shape[2]
    if not (MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM and head_dim % 8 == 0):
        _fail(ValueError, f"head_dim {head_dim} unsupported: need a multiple of 8 in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}]")
    if not 1 <= q.shape[1] <= MAX_GRID_YZ:
        _fail(ValueError, f"q has {q.shape[1]} heads; supported: 1 to {MAX_GRID_YZ}")
    if q.stride(2) != 1 or k.stride(2) != 1 or v.stride(2) != 1:
        _fail(ValueError, "q, k, v need stride 1 in the last (head_dim) dimension")
    if cu_seqlens.dim() != 1:
        _fail(ValueError, f"cu_seqlens must be 1-D (batch + 1,), got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.shape[0] < 2:
        _fail(ValueError, "cu_seqlens needs at least 2 entries (an empty batch has nothing to attend)")
    if cu_seqlens.shape[0] > MAX_GRID_YZ:
        _fail(ValueError, f"batch {cu_seqlens.shape[0] - 1} is over the {MAX_GRID_YZ - 1} sequences of one launch")
    if cu_seqlens.stride(0) != 1:
        _fail(ValueError, "cu_seqlens must be contiguous")
    dev = q.get_device()
    if k.get_device() != dev or v.get_device() != dev or cu_seqlens.get_device() != dev:
        _fail(ValueError, f"q, k, v, cu_seqlens must be on one device, got {q.device}, {k.device}, {v.device}, "
              f"{cu_seqlens.device}")
    if dev < 0 and not launcher.interpreted:
        _fail(ValueError, "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 before import); "
              "on CPU use raggedvit.ragged_attention_reference")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            _fail(TypeError, f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if out.shape != q.shape or out.dtype != q.dtype or out.get_device() != dev or out.stride(2) != 1:
            _fail(ValueError, f"out must match q's shape {tuple(q.shape)}, dtype and device with last stride 1, "
                  f"got {tuple(out.shape)} {out.dtype} on {out.device}")
    if key_bias is not None:
        if not isinstance(key_bias, torch.Tensor):
            _fail(TypeError, f"key_bias must be a torch.Tensor or None, got {type(key_bias).__name__}")
        if key_bias.dtype != torch.float32:
            _fail(TypeError, f"key_bias must be float32, got {key_bias.dtype}")
        if key_bias.dim() != 1 or key_bias.shape[0] != q.shape[0] or key_bias.stride(0) != 1:
            _fail(ValueError, f"key_bias must be a contiguous ({q.shape[0]},) tensor (one value per row of q), got "
                  f"shape {tuple(key_bias.shape)}")
        if key_bias.get_device() != dev:
            _fail(ValueError, f"key_bias must be on q's device {q.device}, got {key_bias.device}")


def check_cu_seqlens(cu_seqlens: torch.Tensor, total_rows: int, max_seqlen: int | None = None) -> None:
    """Validate the *contents* of ``cu_seqlens`` on its device (one host sync: debugging only).

    Raises ``ValueError`` naming the first problem: ``cu_seqlens[0] != 0`` (a negative start is named so),
    decreasing offsets, an offset past ``total_rows``, a sequence longer than ``max_seqlen`` (when given);
    ``TypeError``/``ValueError`` for a non-integer or non-1-D tensor. Well-formed offsets are what the kernel
    computes unchanged; see the module docstring for what it does with malformed ones.
    """
    check_ragged("ragged_attention", total_rows, what="rows of q", cu_seqlens=cu_seqlens, max_len=max_seqlen)


def _launch(q, k, v, out, cu_seqlens, max_seqlen: int, scale: float | None, variant: tuple,
            sq: tuple, sk: tuple, sv: tuple, so: tuple, dev: int, key_bias: torch.Tensor | None = None) -> None:
    """Launch on validated inputs: direct when the launch key is cached, else through Triton's JIT.

    Kernel arguments are ordered per-call first (pointers, row count), then what is constant per launch key
    (strides, scale, constexprs), so a direct launch reuses one cached tuple for the latter. Without
    ``key_bias`` the kernel's bias pointer is ``cu_seqlens`` (never read: ``HAS_BIAS`` is False).
    """
    block_m, options, default_scale, tail = variant
    qp, kp, vp, op, cp = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), cu_seqlens.data_ptr()
    has_bias = key_bias is not None
    bias = key_bias if has_bias else cu_seqlens
    bp = bias.data_ptr()
    shape = q.shape
    gx, gy, gz = min((max_seqlen + block_m - 1) // block_m, 65535), cu_seqlens.shape[0], shape[1]
    # Triton specializes on strides (divisibility by 16, == 1) and 16-byte pointer alignment. Strides do not
    # depend on the token count, so keying on their values keeps the key set small.
    scale = None if scale is None else float(scale)  # part of the key: one cached launch per model scale
    key = None
    if ((qp | kp | vp | op | cp | bp) & 15) == 0:
        key = (q.dtype, shape[2], dev, sq, sk, sv, so, scale)
        if has_bias:
            key = (*key, "key_bias")
    entry = launcher.cache.get(key) if key is not None else None
    if entry is not None and launcher.usable(dev):
        call, prefix, constant = entry  # pointers as ints: the launcher then skips cuPointerGetAttribute
        call(gx, gy, gz, raw_stream(dev), *prefix, qp, kp, vp, op, cp, bp, shape[0], *constant)
        launcher.direct_launches += 1
        return
    qk_scale = default_scale if scale is None else float(scale) * _LOG2E
    constant = (sq[0], sq[1], sk[0], sk[1], sv[0], sv[1], so[0], so[1], qk_scale, *tail, has_bias)
    launcher.launch_jit(key, dev, (gx, gy, gz),
                        (q, k, v, out, cu_seqlens, bias, shape[0], *constant), n_per_call=7, **options)


def _forward(q, k, v, cu_seqlens, max_seqlen: int, scale: float | None, out=None,
             key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Allocate (unless ``out``) and launch; inputs already validated."""
    if out is None:
        out = torch.empty_like(q)
    if q.shape[0] == 0:
        return out
    _launch(q, k, v, out, cu_seqlens, max_seqlen, scale, VARIANTS[q.dtype][q.shape[2]], q.stride(), k.stride(),
            v.stride(), out.stride(), q.get_device(), key_bias)
    return out


@torch.library.custom_op("raggedvit::ragged_attention", mutates_args=())
def _ragged_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: float | None, key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, scale, None, key_bias)
    return _forward(q, k, v, cu_seqlens, max_seqlen, scale, key_bias=key_bias)


@_ragged_attention_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale, key_bias=None):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def ragged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    key_bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    check_lengths: bool = False,
) -> torch.Tensor:
    """Bidirectional (non-causal) softmax attention over packed variable-length sequences.

    Sequence ``b`` owns rows ``cu_seqlens[b]:cu_seqlens[b + 1]`` of ``q``, ``k`` and ``v``; each query
    attends to every key of its own sequence and to nothing else. The same packing as
    ``flash_attn_varlen_func`` with ``cu_seqlens_q == cu_seqlens_k`` and ``causal=False``.

    Args:
        q, k, v: ``(total_tokens, heads, head_dim)``, float16, bfloat16 or float32, on one CUDA device
            (CPU only under ``TRITON_INTERPRET=1``). Last stride 1; the other strides are free, so
            ``qkv.unbind(1)`` of a fused ``(total_tokens, 3, heads, head_dim)`` tensor works without copies.
            head_dim: a multiple of 8 in [16, 128] (32, 64, 72, 80, 96, 128, ...).
        cu_seqlens: int32 ``(batch + 1,)`` on the same device, ``cu_seqlens[0] == 0``, non-decreasing,
            ``cu_seqlens[-1] <= total_tokens``; ``batch <= 65534``. Zero-length sequences are allowed (repeat
            an offset). Malformed offsets are clamped (negative start: from row 0; past the rows: truncated;
            decreasing: an empty sequence), never read out of bounds: see the module docstring.
        max_seqlen: Python int >= 1, an upper bound on the sequence lengths, known on the host (e.g. 197,
            or the bound a pruning schedule implies). It sizes the grid only: a longer sequence is still
            computed exactly, just with less parallelism. Never read back from the device by this library.
        scale: softmax scale; default ``head_dim ** -0.5``.
        key_bias: optional float32 ``(total_tokens,)`` contiguous tensor on q's device, added to the logit of
            every key row in natural-log units after the scale: ``softmax(q k^T * scale + key_bias[key])``
            (ToMe's proportional attention passes ``log(token size)``). Must be finite on the live rows.
        out: optional preallocated output (same shape, dtype and device as ``q``, last stride 1).
        check_lengths: validate the contents of ``cu_seqlens`` on the device first and raise ``ValueError``
            naming the problem (negative start, decreasing, past the rows, longer than ``max_seqlen``)
            before anything is launched; one host sync (debugging only). See :func:`check_cu_seqlens`.

    Returns:
        ``(total_tokens, heads, head_dim)`` in ``q.dtype``. Rows outside every (clamped) sequence, i.e. at
        and past ``cu_seqlens[-1]`` for well-formed offsets, are zero.

    Accumulation is fp32; fp32 inputs use IEEE fp32 dot products (no TF32). The call does not
    synchronize with the device, allocates only the output, and can be captured in a CUDA graph (run one
    eager call per dtype/head dim first so the kernel is compiled outside capture; see
    :func:`raggedvit.warmup`). Forward only: there is no backward.

    Raises:
        TypeError, ValueError: on bad arguments, naming the argument, before anything is launched.
    """
    if _is_compiling():
        if out is not None or check_lengths:
            _fail(ValueError, "out= and check_lengths= are not supported under torch.compile")
        return torch.ops.raggedvit.ragged_attention(q, k, v, cu_seqlens, max_seqlen, scale, key_bias)
    # Common case first: every check of _check_inputs in one short-circuit chain, attributes read once.
    variant = None
    try:
        dt, shape, cs = q.dtype, q.shape, cu_seqlens.shape
        sq, sk, sv = q.stride(), k.stride(), v.stride()
        dev = q.get_device()
        table = VARIANTS.get(dt)
        if (
            table is not None and out is None and key_bias is None and not check_lengths and type(max_seqlen) is int
            and max_seqlen >= 1
            and k.dtype is dt and v.dtype is dt and cu_seqlens.dtype is _INT32
            and len(shape) == 3 and shape == k.shape and shape == v.shape and shape[0] > 0
            and 0 < shape[1] <= MAX_GRID_YZ and sq[2] == 1 and sk[2] == 1 and sv[2] == 1
            and (scale is None or type(scale) is float) and k.get_device() == dev and v.get_device() == dev
            and cu_seqlens.get_device() == dev and dev >= 0
            and len(cs) == 1 and 2 <= cs[0] <= MAX_GRID_YZ and cu_seqlens.stride(0) == 1
        ):
            variant = table.get(shape[2])
    except (AttributeError, TypeError, IndexError, RuntimeError):  # not tensors etc.: _check_inputs says what
        variant = None
    if variant is not None:
        out = torch.empty_like(q)  # dense strides in q's dimension order (contiguous for fused-qkv views)
        so = out.stride()
        # The direct launch, inlined (the common case); _launch does the same plus the JIT path.
        qp, kp, vp, op, cp = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), cu_seqlens.data_ptr()
        if not (qp | kp | vp | op | cp) & 15:
            entry = launcher.cache.get((dt, shape[2], dev, sq, sk, sv, so, scale))
            if entry is not None and (launcher._single_device or dev == current_device()) and not hooks_installed():
                call, prefix, constant = entry
                call(min((max_seqlen + variant[0] - 1) // variant[0], 65535), cs[0], shape[1], raw_stream(dev),
                     *prefix, qp, kp, vp, op, cp, cp, shape[0], *constant)  # cp: the unread bias pointer
                launcher.direct_launches += 1
                return out
        _launch(q, k, v, out, cu_seqlens, max_seqlen, scale, variant, sq, sk, sv, so, dev)
        return out
    _check_inputs(q, k, v, cu_seqlens, max_seqlen, scale, out, key_bias)  # a precise error, or accepts (CPU...)
    if check_lengths:
        check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    return _forward(q, k, v, cu_seqlens, max_seqlen, scale, out, key_bias)


def warmup(
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    head_dims=(64,),
    device: torch.device | str | None = None,
    heads: int = 1,
    fused_qkv: bool = True,
) -> int:
    """Compile the kernel variants for ``dtypes`` x ``head_dims`` before CUDA-graph capture.

    Runs one tiny call per variant on ``device`` (default: the current CUDA device), for both a
    contiguous layout and, with ``fused_qkv``, views of a fused ``(T, 3, heads, head_dim)`` tensor.
    Returns the number of launch keys held for direct launches.
    """
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    cu = torch.tensor([0, 3, 5], dtype=torch.int32, device=device)
    for dtype in dtypes:
        for d in head_dims:
            x = torch.randn(5, 3, heads, d, dtype=dtype, device=device)
            layouts = [(x[:, 0].contiguous(), x[:, 1].contiguous(), x[:, 2].contiguous())]
            if fused_qkv:
                layouts.append(x.unbind(1))
            for q, k, v in layouts:
                ragged_attention(q, k, v, cu, 3)
    return len(launcher.cache)


__all__ = ["ragged_attention", "check_cu_seqlens", "warmup", "SUPPORTED_DTYPES", "launcher"]
