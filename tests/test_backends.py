"""Attention backends (``raggedvit.ops.backends``) against a float64 loop reference.

Every backend that can run here is compared on fresh random inputs with ragged lengths (zero-length and
length-1 sequences included) and rows past ``cu_seqlens[-1]``; the others must say why and raise a clear
error. GPU-only checks (FlashAttention, CUDA-graph replay with changed lengths, no host sync) skip on CPU.
"""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    build_fa2_call,
    get_backend,
)

from conftest import DEVICE, ON_GPU, requires_gpu
from helpers import assert_close_report, attention_loop_reference, make_cu_seqlens

pytestmark = pytest.mark.filterwarnings("ignore:.*nested tensors is in prototype stage")

ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA_ONLY = ("fa2_varlen", "fa2_varlen_item", "varlen_attn")
TAIL = 3  # extra rows past cu_seqlens[-1]


def _skip_unless_available(name: str, dtype: torch.dtype) -> None:
    reason = BACKENDS[name].unavailable_reason(DEVICE, dtype)
    if reason is not None:
        pytest.skip(f"{name} unavailable on {DEVICE} for {dtype}: {reason}")


def _inputs(lengths, heads=2, head_dim=32, dtype=torch.float32, tail=TAIL):
    total = sum(lengths) + tail
    q, k, v = (torch.randn(total, heads, head_dim, device=DEVICE).to(dtype) for _ in range(3))
    return q, k, v, make_cu_seqlens(lengths, DEVICE)


def _check(name, q, k, v, cu, lengths, max_seqlen, dtype, scale=None):
    be = get_backend(name)
    out = be(q, k, v, cu, max_seqlen, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device, name
    expected = attention_loop_reference(q, k, v, lengths, scale=scale)
    n = sum(lengths)
    what = f"{name} {dtype} lengths={lengths} max_seqlen={max_seqlen}"
    assert_close_report(out[:n], expected[:n], ATOL[dtype], what)
    if be.zero_tail:
        assert_close_report(out[n:], torch.zeros_like(expected[n:]), 0.0, what + " (rows past cu_seqlens[-1])")


def _lengths_for(name):
    # On CUDA, NJT SDPA refuses zero-length sequences (see test_nested_refuses_zero_length_on_gpu).
    if name == "nested_sdpa" and ON_GPU:
        return [5, 1, 17, 3]
    return [5, 0, 1, 17, 3]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_matches_loop_reference(name, dtype):
    _skip_unless_available(name, dtype)
    lengths = _lengths_for(name)
    q, k, v, cu = _inputs(lengths, dtype=dtype)
    _check(name, q, k, v, cu, lengths, max(lengths), dtype)  # exact bound
    _check(name, q, k, v, cu, lengths, max(lengths) + 9, dtype)  # loose host bound


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_edge_cases(name):
    dtype = torch.float16 if name in CUDA_ONLY else torch.float32
    _skip_unless_available(name, dtype)
    for lengths in ([1], [1, 1, 1], [197 if ON_GPU else 40], [2, 33, 1]):
        q, k, v, cu = _inputs(lengths, heads=3, head_dim=64, dtype=dtype, tail=0)
        _check(name, q, k, v, cu, lengths, max(lengths), dtype)
    lengths = [4, 1, 9]
    q, k, v, cu = _inputs(lengths, dtype=dtype)
    _check(name, q, k, v, cu, lengths, 9, dtype, scale=0.37)


@pytest.mark.parametrize("name", ["padded_sdpa", "reference"])
def test_sync_free_backends_never_read_back(name, monkeypatch):
    """No .item()/.tolist()/bool()/int() on device tensors inside a sync-free backend (checked on CPU too)."""
    lengths = [3, 0, 7, 1]
    q, k, v, cu = _inputs(lengths)
    expected = BACKENDS[name](q, k, v, cu, 7)

    def boom(*args, **kwargs):
        raise AssertionError(f"{name} read a tensor back to the host")

    for attr in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)
    out = BACKENDS[name](q, k, v, cu, 7)
    monkeypatch.undo()
    assert torch.equal(out, expected)


def test_flags():
    assert not BACKENDS["fa2_varlen_item"].graph_safe and BACKENDS["fa2_varlen_item"].syncs
    assert not BACKENDS["nested_sdpa"].graph_safe and BACKENDS["nested_sdpa"].syncs
    for name in ("triton", "reference", "padded_sdpa", "fa2_varlen", "varlen_attn"):
        assert not BACKENDS[name].syncs, name
    for name in ("triton", "reference", "padded_sdpa", "fa2_varlen"):
        assert BACKENDS[name].graph_safe, name
    assert {"reference", "padded_sdpa"} <= set(available_backends("cpu", torch.float32))


def test_get_backend_unknown_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_backend("nope")
    for name in BACKENDS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", CUDA_ONLY)
def test_flash_backends_reject_fp32_with_a_reason(name):
    reason = BACKENDS[name].unavailable_reason(DEVICE, torch.float32)
    assert reason and "float16/bfloat16" in reason
    q, k, v, cu = _inputs([3, 4])
    with pytest.raises(BackendUnavailableError, match="float16/bfloat16"):
        BACKENDS[name](q, k, v, cu, 4)


@pytest.mark.skipif(ON_GPU, reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("name", CUDA_ONLY)
def test_cuda_only_backends_unavailable_on_cpu(name):
    be = BACKENDS[name]
    reason = be.unavailable_reason("cpu", torch.float16)
    assert reason and "CUDA" in reason
    assert name not in available_backends("cpu", torch.float16)
    q, k, v, cu = _inputs([3, 4], dtype=torch.float16)
    with pytest.raises(BackendUnavailableError, match=f"{name}.*CUDA"):
        be(q, k, v, cu, 4)


def _parse(schema: str):
    return torch._C.parse_schema(schema)


class _FakeOp:
    """Stands in for an aten op overload: records how it was called, returns a dummy output tuple."""

    def __init__(self, schema: str):
        self._schema = _parse(schema)
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return ("out", "lse")


def test_fa2_call_built_from_installed_schema_runs_on_meta():
    op = torch.ops.aten._flash_attention_forward.default
    call, why = build_fa2_call(op)
    assert why is None, why
    q = torch.empty(29, 2, 64, dtype=torch.float16, device="meta")
    cu = torch.empty(6, dtype=torch.int32, device="meta")
    for scale in (None, 0.2):
        out = call(q, q, q, cu, 20, scale)
        assert out.shape == q.shape and out.dtype == q.dtype


def test_fa2_call_adapts_to_other_schemas():
    old = _FakeOp("aten::_flash_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, "
                  "Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, int? new_knob=None, float dropout_p=0., "
                  "bool is_causal=False, bool return_debug_mask=False, *, int? window_size_left=None) -> "
                  "(Tensor, Tensor)")
    call, why = build_fa2_call(old)
    assert why is None, why
    assert call("Q", "K", "V", "CU", 7, None) == "out"
    args, kwargs = old.calls[-1]
    assert args == () and kwargs == {"q": "Q", "k": "K", "v": "V", "cu_seqlens_q": "CU", "cu_seqlens_k": "CU",
                                     "max_seqlen_q": 7, "max_seqlen_k": 7, "dropout_p": 0.0, "is_causal": False,
                                     "return_debug_mask": False}
    with pytest.raises(ValueError, match="scale"):
        call("Q", "K", "V", "CU", 7, 0.5)

    unknown = _FakeOp("aten::_flash_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? cum_seq_q, "
                      "Tensor? cum_seq_k, int max_q, int max_k, float dropout_p, bool is_causal, bool mystery) -> "
                      "(Tensor, Tensor)")
    call, why = build_fa2_call(unknown)
    assert call is None and "mystery" in why


def test_varlen_attn_signature_inspection():
    from raggedvit.ops.backends import _varlen_plan

    fn, const, has_scale, why = _varlen_plan()
    if fn is None:
        assert "varlen" in why
        return
    q = torch.empty(29, 2, 64, dtype=torch.float16, device="meta")
    cu = torch.empty(6, dtype=torch.int32, device="meta")
    kwargs = {"scale": 0.3} if has_scale else {}
    out = fn(q, q, q, cu, cu, 20, 20, **const, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == q.shape


# ---------------------------------------------------------------------------------------------- GPU only


@requires_gpu
def test_nested_refuses_zero_length_on_gpu():
    q, k, v, cu = _inputs([3, 0, 2], dtype=torch.float16)
    with pytest.raises(ValueError, match="zero-length"):
        BACKENDS["nested_sdpa"](q, k, v, cu, 3)


@requires_gpu
@pytest.mark.parametrize("name", [n for n, b in BACKENDS.items() if b.graph_safe])
def test_graph_safe_backends_follow_changed_lengths(name):
    dtype = torch.float16
    _skip_unless_available(name, dtype)
    be = BACKENDS[name]
    lengths, max_seqlen = [37, 5, 120, 1, 64], 128
    q, k, v, cu = _inputs(lengths, heads=6, head_dim=64, dtype=dtype, tail=0)
    fn = lambda: be(q, k, v, cu, max_seqlen)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for new in ([120, 37, 64, 1, 5], [2, 128, 0, 30, 7], [1, 1, 1, 1, 1]):
        cu.copy_(make_cu_seqlens(new, DEVICE))
        graph.replay()
        torch.cuda.synchronize()
        n = sum(new)
        expected = attention_loop_reference(q, k, v, new)
        assert_close_report(out[:n], expected[:n], ATOL[dtype], f"{name} graph replay, lengths {new}")
        if be.zero_tail:
            assert_close_report(out[n:], torch.zeros_like(expected[n:]), 0.0, f"{name} graph replay tail")


@requires_gpu
@pytest.mark.parametrize("name", [n for n, b in BACKENDS.items() if not b.syncs])
def test_sync_free_backends_do_not_sync_on_gpu(name):
    dtype = torch.float16
    _skip_unless_available(name, dtype)
    lengths = [37, 5, 120, 1, 64]
    q, k, v, cu = _inputs(lengths, heads=6, head_dim=64, dtype=dtype)
    BACKENDS[name](q, k, v, cu, 128)  # warm-up (compiles, caches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        BACKENDS[name](q, k, v, cu, 128)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_accepts_fused_qkv_views(name):
    """q, k, v as strided views of one fused ``(T, 3, H, D)`` tensor, as the pruned-ViT pipeline passes them."""
    dtype = torch.float16 if name in CUDA_ONLY else torch.float32
    _skip_unless_available(name, dtype)
    lengths = _lengths_for(name)
    qkv = torch.randn(sum(lengths) + TAIL, 3, 2, 32, device=DEVICE).to(dtype)
    q, k, v = qkv.unbind(1)
    cu = make_cu_seqlens(lengths, DEVICE)
    _check(name, q, k, v, cu, lengths, max(lengths), dtype)


def test_padded_sdpa_malformed_offsets_stay_in_bounds():
    """A negative start or an offset past the rows must not index out of range (on CUDA a device-side assert
    would end the process's context)."""
    from raggedvit.ops.backends import padded_sdpa

    q, k, v = (torch.randn(30, 2, 32, device=DEVICE) for _ in range(3))
    for cu in ([-5, 10, 30], [0, 20, 60]):
        out = padded_sdpa(q, k, v, torch.tensor(cu, dtype=torch.int32, device=DEVICE), 30)
        assert out.shape == q.shape
