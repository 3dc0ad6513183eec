"""Attention backends behind one interface, for the pipelines and the benchmarks.

Every backend takes the packed varlen inputs of :func:`raggedvit.ragged_attention`
(``q, k, v: (total_tokens, heads, head_dim)``, int32 ``cu_seqlens`` ``(batch + 1,)`` on the device, host
int ``max_seqlen``: an upper bound on every length) and returns ``(total_tokens, heads, head_dim)``.

=================== ===== ===== ====== ===========================================================
name                graph sync  tail=0 what runs
=================== ===== ===== ====== ===========================================================
triton              yes   no    yes    raggedvit's Triton kernel, direct launch
reference           yes   no    yes    pure PyTorch gather + masked softmax (any device)
padded_sdpa         yes   no    yes    pad with index arithmetic, SDPA + boolean key-padding mask, unpad
nested_sdpa         no    yes   yes    NestedTensor (jagged) + SDPA, wrapping included
fa2_varlen          yes   no    no     ``aten._flash_attention_forward``, host ``max_seqlen``
fa2_varlen_item     no    yes   no     same, ``max_seqlen`` read back with ``.item()``
varlen_attn         no    no    no     ``torch.nn.attention.varlen.varlen_attn``
=================== ===== ===== ====== ===========================================================

"graph": a CUDA graph captured around one call stays correct when the lengths in ``cu_seqlens`` change
(within ``max_seqlen``); "sync": the call waits for the device; "tail=0": rows at and past
``cu_seqlens[-1]`` are zero (otherwise they are whatever the kernel's ``empty`` output held).

A per-key logit bias (``key_bias``: ``(total_tokens,)`` fp32, added after the scale; ToMe's proportional
attention passes ``log(token size)``) is taken by ``triton``, ``reference`` and ``padded_sdpa``
(:attr:`AttentionBackend.key_bias`); the others raise :class:`BackendUnavailableError` when given one
instead of dropping it.

A backend that cannot run says why through :meth:`AttentionBackend.unavailable_reason` and raises
:class:`BackendUnavailableError` when called; nothing falls back to another backend silently.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import SUPPORTED_DTYPES, launcher, ragged_attention
from .reference import ragged_attention_reference

_HALF = (torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is called where it cannot run (wrong device, dtype or torch build)."""


@dataclass(frozen=True)
class AttentionBackend:
    """A named varlen attention implementation.

    Attributes:
        name: registry name (``"triton"``, ``"reference"``, ...).
        fn: ``fn(q, k, v, cu_seqlens, max_seqlen, *, scale=None) -> Tensor``.
        description: one line for tables and ``--help``.
        graph_safe: True if a CUDA graph captured around ``fn`` stays correct when lengths change.
        check: ``check(device, dtype_or_None)`` returns None when the backend can run, else the reason.
        zero_tail: True if output rows at and past ``cu_seqlens[-1]`` are zero.
        syncs: True if a call synchronizes the host with the device.
        key_bias: True if ``fn`` takes ``key_bias=`` (a per-key logit bias); calling a backend without it with
            a bias raises :class:`BackendUnavailableError`.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    graph_safe: bool
    check: Callable[[torch.device, torch.dtype | None], str | None]
    zero_tail: bool = True
    syncs: bool = False
    key_bias: bool = False

    def unavailable_reason(self, device: torch.device | str, dtype: torch.dtype | None = None) -> str | None:
        """None if this backend runs on ``device`` (for ``dtype``, when given), else a sentence saying why not."""
        return self.check(torch.device(device), dtype)

    def __call__(self, q, k, v, cu_seqlens, max_seqlen, *, scale=None, key_bias=None) -> torch.Tensor:
        """Run the backend: ``(total_tokens, heads, head_dim)`` out. ``key_bias``: see the module docstring."""
        if key_bias is None:
            return self.fn(q, k, v, cu_seqlens, max_seqlen, scale=scale)
        if not self.key_bias:
            raise BackendUnavailableError(
                f"attention backend {self.name!r} takes no key_bias (a per-key logit bias, e.g. ToMe's proportional "
                f"attention); backends that do: {', '.join(key_bias_backends())}")
        return self.fn(q, k, v, cu_seqlens, max_seqlen, scale=scale, key_bias=key_bias)


def _join(reasons: list[str]) -> str | None:
    return "; ".join(reasons) if reasons else None


def _triton_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    reasons = []
    if device.type != "cuda" and not launcher.interpreted:
        reasons.append("needs a CUDA device (or TRITON_INTERPRET=1 for the Triton interpreter on CPU)")
    if dtype is not None and dtype not in SUPPORTED_DTYPES:
        reasons.append(f"supports float16/bfloat16/float32, not {dtype}")
    return _join(reasons)


def _any_float_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    if dtype is not None and not dtype.is_floating_point:
        return f"needs a floating-point dtype, not {dtype}"
    return None


@functools.lru_cache(maxsize=16)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _flash_check(device: torch.device, dtype: torch.dtype | None) -> list[str]:
    """Why torch's FlashAttention kernels cannot run on ``device``/``dtype`` (empty list: they can)."""
    reasons = []
    if dtype is not None and dtype not in _HALF:
        reasons.append(f"FlashAttention supports float16/bfloat16 only, not {dtype}")
    if device.type != "cuda":
        reasons.append(f"needs a CUDA device (FlashAttention has no {device.type} kernel)")
    elif not torch.cuda.is_available():
        reasons.append("CUDA is not available")
    else:
        if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)():
            reasons.append("this torch build has no FlashAttention kernels")
        index = device.index if device.index is not None else torch.cuda.current_device()
        cap = _capability(index)
        if cap < (8, 0):
            reasons.append(f"FlashAttention needs compute capability >= 8.0, this GPU has {cap[0]}.{cap[1]}")
    return reasons


def _raise_unavailable(name: str, reason: str | None) -> None:
    raise BackendUnavailableError(f"attention backend {name!r} cannot run here: {reason or 'unknown reason'}")


# ---------------------------------------------------------------------------------------------- padded SDPA

_ARANGE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _arange(n: int, device: torch.device) -> torch.Tensor:
    """Cached int64 ``arange(n)`` on ``device`` (built once per (n, device); no launch afterwards).

    A miss during CUDA-graph capture is not cached: that tensor lives in the graph's private pool.
    """
    key = (n, device)
    t = _ARANGE.get(key)
    if t is None:
        t = torch.arange(n, device=device)
        if device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
            _ARANGE[key] = t
    return t


def padded_sdpa(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float | None = None,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pad packed rows to ``(batch, max_seqlen)``, run SDPA with a boolean key-padding mask, unpad.

    Padding and unpadding use index arithmetic on the device (``cu_seqlens[b] + arange(max_seqlen)``
    gathered with ``index_select``, outputs scattered back with ``index_copy_``): no host sync, every
    shape comes from host ints, so a CUDA graph captured around it stays correct when lengths change
    within ``max_seqlen``. On CUDA, SDPA with a mask runs the memory-efficient kernel (flash takes no
    mask). Rows at and past ``cu_seqlens[-1]`` are zero. ``max_seqlen`` must bound every length.
    ``key_bias`` (``(total,)``, per-key logit bias): a float mask ``bias`` on live keys, ``-inf`` on padding.
    """
    total, heads, head_dim = q.shape
    batch = cu_seqlens.shape[0] - 1
    if total == 0 or batch <= 0:
        return torch.zeros_like(q)
    pos = _arange(max_seqlen, q.device)
    start = cu_seqlens[:-1]
    valid = pos < (cu_seqlens[1:] - start)[:, None]  # (batch, L)
    rows = (start[:, None] + pos).clamp_(0, total - 1)  # (batch, L) int64; clamped: never an out-of-range gather
    flat = rows.view(-1)
    qp, kp, vp = (t.index_select(0, flat).view(batch, max_seqlen, heads, head_dim).transpose(1, 2)
                  for t in (q, k, v))
    mask = valid[:, None, None, :]
    if key_bias is not None:
        bias = key_bias.index_select(0, flat).view(batch, 1, 1, max_seqlen).to(q.dtype)
        mask = bias.masked_fill(~mask, float("-inf"))
    o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale)
    o = o.transpose(1, 2).reshape(batch * max_seqlen, heads, head_dim)
    out = q.new_zeros(total + 1, heads, head_dim)  # row `total` collects the padding and is dropped
    out.index_copy_(0, torch.where(valid, rows, total).view(-1), o)
    return out[:total]


# ---------------------------------------------------------------------------------------------- NestedTensor


def nested_sdpa(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float | None = None) -> torch.Tensor:
    """Wrap q, k, v as jagged NestedTensors over ``cu_seqlens``, run SDPA, return the packed values.

    Syncs once per call: NJT SDPA needs the minimum length on the host (its fused kernels refuse a
    zero-length sequence; without a cached value NJT itself calls ``.item()``) and the values must cover
    exactly ``cu_seqlens[-1]`` rows, so ``[min length, cu_seqlens[-1]]`` is read back with one ``.tolist()``.
    Both are then passed as NJT's cached ``min_seqlen``, and the host bound ``max_seqlen`` as its cached
    ``max_seqlen``, so NJT does not sync again. On CUDA a batch with a zero-length sequence would make NJT
    SDPA leave the fused kernels for the math path; this backend raises ``ValueError`` instead. Rows at and
    past ``cu_seqlens[-1]`` are zero. Non-contiguous q, k, v (views of a fused qkv) are copied first: NJT's
    SDPA on strided values takes other paths (on a CPU-only machine with a CUDA build of torch it even
    probes CUDA and fails). Not CUDA-graph safe (host sync, host-dependent shapes).
    """
    total = q.shape[0]
    min_len, n = torch.stack([(cu_seqlens[1:] - cu_seqlens[:-1]).min(), cu_seqlens[-1]]).tolist()
    if n > total:
        raise ValueError(f"nested_sdpa: cu_seqlens[-1] = {n} exceeds the {total} rows of q")
    if q.is_cuda and min_len == 0:
        raise ValueError("nested_sdpa: a zero-length sequence sends NestedTensor SDPA to the math kernel on "
                         "CUDA; refusing instead of falling back silently")

    def wrap(t: torch.Tensor) -> torch.Tensor:  # strided views (qkv.unbind) are copied: NJT wants dense values
        nt = torch.nested.nested_tensor_from_jagged((t if n == total else t[:n]).contiguous(), cu_seqlens,
                                                    min_seqlen=min_len, max_seqlen=max_seqlen)
        return nt.transpose(1, 2)  # (batch, heads, j, head_dim)

    values = F.scaled_dot_product_attention(wrap(q), wrap(k), wrap(v), scale=scale).transpose(1, 2).values()
    if n == total:
        return values
    out = q.new_zeros(q.shape)
    out[:n] = values
    return out


def _nested_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    reasons = [r for r in (_any_float_check(device, dtype),) if r]
    if device.type == "cuda" and not torch.cuda.is_available():
        reasons.append("CUDA is not available")
    return _join(reasons)


# ---------------------------------------------------------------------------------------------- FlashAttention-2

# Schema argument name -> where its value comes from. Names differ between torch versions.
_FA2_SOURCES = {
    "query": "q", "q": "q", "key": "k", "k": "k", "value": "v", "v": "v",
    "cum_seq_q": "cu", "cum_seq_k": "cu", "cu_seqlens_q": "cu", "cu_seqlens_k": "cu", "cu_seq_q": "cu",
    "cu_seq_k": "cu", "max_q": "max", "max_k": "max", "max_seqlen_q": "max", "max_seqlen_k": "max",
    "max_seqlen_batch_q": "max", "max_seqlen_batch_k": "max", "scale": "scale",
}
_FA2_CONSTANTS = {"dropout_p": 0.0, "is_causal": False, "return_debug_mask": False}
_FA2_CANONICAL = ("query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p",
                  "is_causal", "return_debug_mask")


def build_fa2_call(op) -> tuple[Callable | None, str | None]:
    """Build ``call(q, k, v, cu, max_seqlen, scale) -> output`` from ``op._schema``, or the reason it cannot.

    ``op`` is ``torch.ops.aten._flash_attention_forward.default`` (or anything with a ``_schema`` and a
    ``__call__``). Arguments are matched by name (known aliases across torch versions); optional ones this
    backend does not know keep their defaults; an unknown required one makes the backend unavailable.
    """
    args = op._schema.arguments
    plan = []  # (argument name, source): every argument passed by name, so skipped optional ones never shift
    for a in args:
        if a.name in _FA2_SOURCES:
            plan.append((a.name, _FA2_SOURCES[a.name]))
        elif a.name in _FA2_CONSTANTS:
            plan.append((a.name, ("const", _FA2_CONSTANTS[a.name])))
        elif not a.has_default_value():
            return None, f"{op._schema.name} has an unknown required argument {a.name!r}: {op._schema}"
        # else: an optional feature (window, alibi, paging, ...) this backend leaves at torch's default
    sources = {s for _, s in plan if isinstance(s, str)}
    if not {"q", "k", "v", "cu", "max"} <= sources:
        return None, f"cannot map {op._schema.name}'s arguments to q, k, v, cu_seqlens, max_seqlen: {op._schema}"
    has_scale = "scale" in sources
    positional = tuple(a.name for a in args if not a.kwarg_only)
    if positional[:len(_FA2_CANONICAL)] == _FA2_CANONICAL and [n for n, _ in plan] == [*_FA2_CANONICAL, "scale"]:
        def call(q, k, v, cu, m, scale):  # the layout of torch 2.5 ... 2.14, without a per-call plan walk
            return op(q, k, v, cu, cu, m, m, 0.0, False, False, scale=scale)[0]
        return call, None

    def call(q, k, v, cu, m, scale):
        if scale is not None and not has_scale:
            raise ValueError(f"this torch's {op._schema.name} takes no scale argument")
        vals = {"q": q, "k": k, "v": v, "cu": cu, "max": m, "scale": scale}
        return op(**{n: (s[1] if isinstance(s, tuple) else vals[s]) for n, s in plan})[0]

    return call, None


@functools.lru_cache(maxsize=1)
def _fa2_plan() -> tuple[Callable | None, str | None]:
    """:func:`build_fa2_call` for the installed torch (cached)."""
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None:
        return None, "this torch has no aten._flash_attention_forward"
    return build_fa2_call(op.default)


def _fa2_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    reasons = _flash_check(device, dtype)
    reasons += [r for r in (_fa2_plan()[1],) if r]
    return _join(reasons)


def _fa2_guard(name: str, q: torch.Tensor) -> Callable:
    call, why = _fa2_plan()
    if call is None or not q.is_cuda or q.dtype not in _HALF:
        _raise_unavailable(name, _fa2_check(q.device, q.dtype) or why)
    return call


def fa2_varlen(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float | None = None) -> torch.Tensor:
    """torch's built-in FlashAttention-2 varlen forward with the host-known ``max_seqlen`` (no sync).

    CUDA, float16/bfloat16 only. The call is built from ``aten._flash_attention_forward``'s schema at run
    time (it differs between torch versions). Graph-safe while ``max_seqlen`` bounds every length. Rows at
    and past ``cu_seqlens[-1]`` are left as the kernel's uninitialised output.
    """
    return _fa2_guard("fa2_varlen", q)(q, k, v, cu_seqlens, max_seqlen, scale)


def fa2_varlen_item(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float | None = None) -> torch.Tensor:
    """Like :func:`fa2_varlen`, but ``max_seqlen`` is recomputed with ``.item()``, as most callers do.

    The argument ``max_seqlen`` is ignored; the ``.item()`` is a host sync every call (the cost this
    baseline measures) and makes the call impossible to capture in a CUDA graph.
    """
    call = _fa2_guard("fa2_varlen_item", q)
    m = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
    return call(q, k, v, cu_seqlens, max(m, 1), scale)


# ---------------------------------------------------------------------------------------------- varlen_attn


@functools.lru_cache(maxsize=1)
def _varlen_plan() -> tuple[Callable | None, dict, bool, str | None]:
    """(varlen_attn, constant kwargs, takes scale, reason unavailable) from the installed torch's signature."""
    try:
        from torch.nn.attention import varlen as mod
    except ImportError:
        return None, {}, False, f"torch {torch.__version__} has no torch.nn.attention.varlen"
    fn = getattr(mod, "varlen_attn", None)
    if fn is None:
        return None, {}, False, f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if len(positional) < 7 or len(required) > 7:
        return None, {}, False, f"unexpected varlen_attn signature {inspect.signature(fn)}"
    names = {p.name for p in params}
    const = {"is_causal": False} if "is_causal" in names else {}
    return fn, const, "scale" in names, None


def _varlen_check(device: torch.device, dtype: torch.dtype | None) -> str | None:
    reasons = [r for r in (_varlen_plan()[3],) if r]
    reasons += _flash_check(device, dtype)
    return _join(reasons)


def varlen_attn(q, k, v, cu_seqlens, max_seqlen: int, *, scale: float | None = None) -> torch.Tensor:
    """``torch.nn.attention.varlen.varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen)`` (torch >= 2.10).

    The signature is inspected at run time (``is_causal`` and ``scale`` moved between releases). CUDA,
    float16/bfloat16 only. Torch may route it to cuDNN (long sequences on sm90/sm100 with a recent cuDNN)
    instead of FlashAttention; CUDA-graph safety of that path is not established, so ``graph_safe`` is
    False. Rows at and past ``cu_seqlens[-1]`` are left as the kernel's uninitialised output.
    """
    fn, const, has_scale, why = _varlen_plan()
    if fn is None or not q.is_cuda or q.dtype not in _HALF:
        _raise_unavailable("varlen_attn", _varlen_check(q.device, q.dtype) or why)
    if scale is not None:
        if not has_scale:
            raise ValueError(f"torch {torch.__version__}'s varlen_attn takes no scale argument")
        out = fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale, **const)
    else:
        out = fn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **const)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------------- registry

BACKENDS: dict[str, AttentionBackend] = {}


def register(backend: AttentionBackend) -> AttentionBackend:
    """Add ``backend`` to :data:`BACKENDS` under its name."""
    BACKENDS[backend.name] = backend
    return backend


register(AttentionBackend("triton", ragged_attention, "raggedvit Triton kernel, direct launch", True, _triton_check,
                          key_bias=True))
register(AttentionBackend("reference", ragged_attention_reference, "pure PyTorch (any device)", True,
                          _any_float_check, key_bias=True))
register(AttentionBackend("padded_sdpa", padded_sdpa, "pad, SDPA + boolean key-padding mask, unpad", True,
                          _any_float_check, key_bias=True))
register(AttentionBackend("nested_sdpa", nested_sdpa, "NestedTensor (jagged) SDPA incl. wrapping; 1 sync",
                          False, _nested_check, syncs=True))
register(AttentionBackend("fa2_varlen", fa2_varlen, "aten._flash_attention_forward, host max_seqlen", True,
                          _fa2_check, zero_tail=False))
register(AttentionBackend("fa2_varlen_item", fa2_varlen_item, "same, max_seqlen via .item() (host sync)",
                          False, _fa2_check, zero_tail=False, syncs=True))
register(AttentionBackend("varlen_attn", varlen_attn, "torch.nn.attention.varlen.varlen_attn", False,
                          _varlen_check, zero_tail=False))


def get_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(sorted(BACKENDS))}") from None


def key_bias_backends() -> list[str]:
    """Names of the registered backends that take a per-key logit bias (``key_bias``)."""
    return [n for n, b in BACKENDS.items() if b.key_bias]


def available_backends(device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """Names of the registered backends that can run on ``device`` (for ``dtype``, when given)."""
    return [n for n, b in BACKENDS.items() if b.unavailable_reason(device, dtype) is None]
