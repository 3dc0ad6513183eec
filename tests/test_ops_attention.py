"""Tests for raggedvit.ops.attention (the Triton kernel via the public op) and ops.reference.

On CPU the kernel runs under the Triton interpreter; the same tests run on the GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import raggedvit
from raggedvit.ops.attention import launcher
from raggedvit.ops.reference import ragged_attention_reference

from conftest import DEVICE, ON_GPU, requires_gpu
from helpers import assert_close_report, attention_loop_reference, make_cu_seqlens

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _sdpa_error(q, k, v, lengths, ref) -> float:
    """Max error of torch's own SDPA in q's dtype (per sequence, same device) against the fp64 reference."""
    worst, start = 0.0, 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[start:start + n].transpose(0, 1)[None] for t in (q, k, v))
            o = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)
            worst = max(worst, (o.double().cpu() - ref[start:start + n]).abs().max().item())
        start += n
    return worst


def _round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype as the kernel does it. The Triton interpreter truncates fp32 -> bf16 (it does not round
    to nearest), so under the interpreter the yardstick truncates too."""
    if launcher.interpreted and dtype == torch.bfloat16:
        return (x.float().contiguous().view(torch.int32) & -65536).view(torch.float32).to(dtype)
    return x.to(dtype)


def _flash_rounding_error(q, k, v, lengths, ref) -> float:
    """Error of flash-attention rounding: unnormalised probabilities rounded to q's dtype before P @ V,
    the normaliser summed in fp32.

    That is what GPU flash kernels (FA2, torch's included) do; torch's CPU SDPA keeps P in fp32, so on CPU
    this, not SDPA alone, is the fair yardstick for a 16-bit kernel.
    """
    worst, start = 0.0, 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[start:start + n].transpose(0, 1).float().cpu() for t in (q, k, v))
            s_ = qs @ ks.transpose(1, 2) * qs.shape[-1] ** -0.5
            p = torch.exp(s_ - s_.amax(-1, keepdim=True))
            o = _round((_round(p, q.dtype).float() @ vs) / p.sum(-1, keepdim=True), q.dtype).transpose(0, 1)
            worst = max(worst, (o.double() - ref[start:start + n]).abs().max().item())
        start += n
    return worst


def _packed(lengths, heads, head_dim, dtype, fused=True, extra_rows=0):
    total = sum(lengths) + extra_rows
    if fused:  # strided views of one fused (T, 3, H, D) qkv tensor, as timm's qkv Linear produces
        qkv = torch.randn(total, 3, heads, head_dim, device=DEVICE).to(dtype)
        q, k, v = qkv.unbind(1)
    else:
        q, k, v = (torch.randn(total, heads, head_dim, device=DEVICE).to(dtype) for _ in range(3))
    return q, k, v, make_cu_seqlens(lengths, DEVICE)


def _check(q, k, v, cu, lengths, max_seqlen, **kw):
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)  # poison
    got = raggedvit.ragged_attention(q, k, v, cu, max_seqlen, out=out, **kw)
    assert got.data_ptr() == out.data_ptr()
    ref = attention_loop_reference(q, k, v, lengths, scale=kw.get("scale"))
    if q.dtype == torch.float32:
        rel = ((got.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert torch.isfinite(got).all()
        assert rel <= 1e-4, f"fp32 relative error {rel:.3g}"
    else:
        torch_err = _sdpa_error(q, k, v, lengths, ref)
        if "scale" not in kw:
            torch_err = max(torch_err, _flash_rounding_error(q, k, v, lengths, ref))
        tol = 2 * max(torch_err, torch.finfo(q.dtype).eps / 2)
        assert_close_report(got, ref, tol, f"{q.dtype} vs fp64")
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 72, 80, 128])
def test_matches_fp64_reference_ragged(dtype, head_dim):
    lengths = [0, 1, 2, 63, 64, 65, 197, 5]
    q, k, v, cu = _packed(lengths, 2, head_dim, dtype)
    _check(q, k, v, cu, lengths, max(lengths))


@pytest.mark.parametrize("dtype", DTYPES)
def test_577_tokens_and_equal_lengths(dtype):
    lengths = [577, 577]
    q, k, v, cu = _packed(lengths, 2, 64, dtype, fused=False)
    _check(q, k, v, cu, lengths, 577)


def test_longer_than_1024_and_tiny_mix():
    lengths = [1, 1100, 0, 3]
    q, k, v, cu = _packed(lengths, 1, 32, torch.float32)
    _check(q, k, v, cu, lengths, 1100)


def test_max_seqlen_is_only_a_grid_hint():
    """A bound smaller than the true lengths still gives exact results (grid-stride loop over query tiles)."""
    lengths = [197, 150, 3]
    q, k, v, cu = _packed(lengths, 3, 64, torch.float16)
    _check(q, k, v, cu, lengths, 1)


def test_rows_past_last_offset_are_zero_and_scale_is_used():
    lengths = [7, 0, 40]
    q, k, v, cu = _packed(lengths, 2, 64, torch.float32, extra_rows=37)
    got = _check(q, k, v, cu, lengths, 40, scale=0.3)
    assert (got[sum(lengths):] == 0).all()


def test_cls_only_batch():
    lengths = [1] * 9  # everything but CLS pruned
    q, k, v, cu = _packed(lengths, 3, 64, torch.bfloat16)
    got = _check(q, k, v, cu, lengths, 1)
    torch.testing.assert_close(got, v, rtol=0, atol=0)  # softmax over one key is exactly 1


def test_reference_matches_loop_reference():
    lengths = [3, 0, 1, 20]
    q, k, v, cu = _packed(lengths, 2, 32, torch.float64, extra_rows=2)
    got = ragged_attention_reference(q, k, v, cu, 20)
    assert_close_report(got, attention_loop_reference(q, k, v, lengths), 1e-12, "reference")


def test_allocates_contiguous_output_without_out():
    lengths = [5, 9]
    q, k, v, cu = _packed(lengths, 2, 64, torch.float32)
    got = raggedvit.ragged_attention(q, k, v, cu, 9)
    assert got.is_contiguous() and got.shape == q.shape and got.dtype == q.dtype


# ----------------------------------------------------------------------------------------------- bad input
def _good():
    q, k, v, cu = _packed([3, 4], 2, 64, torch.float16)
    return dict(q=q, k=k, v=v, cu_seqlens=cu, max_seqlen=4)


BAD = [
    ("int64 cu_seqlens", lambda a: a.update(cu_seqlens=a["cu_seqlens"].long()), TypeError, "cu_seqlens must be int32"),
    ("float64 q", lambda a: a.update(q=a["q"].double()), TypeError, "dtype"),
    ("mixed dtypes", lambda a: a.update(k=a["k"].float()), TypeError, "share a dtype"),
    ("2-D q", lambda a: a.update(q=a["q"][:, 0]), ValueError, "(total_tokens, heads, head_dim)"),
    ("heads differ", lambda a: a.update(k=a["k"][:, :1]), ValueError, "shapes differ"),
    ("head dim 72 vs 64", lambda a: a.update(v=torch.zeros(7, 2, 72, dtype=torch.float16, device=DEVICE)),
     ValueError, "shapes differ"),
    ("head dim 12", lambda a: a.update(**{n: torch.zeros(7, 2, 12, dtype=torch.float16, device=DEVICE)
                                          for n in "qkv"}), ValueError, "head_dim 12"),
    ("head dim 256", lambda a: a.update(**{n: torch.zeros(7, 2, 256, dtype=torch.float16, device=DEVICE)
                                           for n in "qkv"}), ValueError, "head_dim 256"),
    ("last stride", lambda a: a.update(q=a["q"].transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "stride"),
    ("cu rank", lambda a: a.update(cu_seqlens=a["cu_seqlens"][None]), ValueError, "1-D"),
    ("empty batch", lambda a: a.update(cu_seqlens=a["cu_seqlens"][:1]), ValueError, "at least 2"),
    ("max_seqlen 0", lambda a: a.update(max_seqlen=0), ValueError, "max_seqlen must be >= 1"),
    ("max_seqlen float", lambda a: a.update(max_seqlen=4.0), TypeError, "Python int"),
    ("max_seqlen tensor", lambda a: a.update(max_seqlen=torch.tensor(4)), TypeError, "Python int"),
    ("max_seqlen bool", lambda a: a.update(max_seqlen=True), TypeError, "Python int"),
    ("q not a tensor", lambda a: a.update(q=[1, 2]), TypeError, "q must be a torch.Tensor"),
]
if ON_GPU:  # a CPU-only machine has no second device to mix in
    BAD.append(("devices differ", lambda a: a.update(cu_seqlens=a["cu_seqlens"].cpu()), ValueError, "one device"))


@pytest.mark.parametrize("name,mutate,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_before_launch(name, mutate, exc, msg):
    args = _good()
    mutate(args)
    before = dict(launcher.stats)
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        raggedvit.ragged_attention(**args)
    assert dict(launcher.stats) == before, "nothing may be launched for bad input"


def test_bad_out_and_scale():
    args = _good()
    with pytest.raises(ValueError, match="out must match"):
        raggedvit.ragged_attention(**args, out=torch.empty(3, 2, 64, dtype=torch.float16, device=DEVICE))
    with pytest.raises(TypeError, match="scale"):
        raggedvit.ragged_attention(**args, scale="big")


@pytest.mark.parametrize("cu,msg", [([1, 3, 7], "cu_seqlens\\[0\\] must be 0"), ([0, 5, 3], "non-decreasing"),
                                    ([0, 3, 9], "exceeds"), ([0, 1, 7], "more than max_seqlen")])
def test_check_lengths_debug_mode(cu, msg):
    args = _good()
    args["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    before = dict(launcher.stats)
    with pytest.raises(ValueError, match="ragged_attention: .*" + msg):
        raggedvit.ragged_attention(**args, check_lengths=True)
    assert dict(launcher.stats) == before, "nothing may be launched for bad input"


# ----------------------------------------------------------------------------------------------- malformed offsets
def _clamped(cu, rows):
    """The documented rule: c[i] = min(max(0, cu[0], ..., cu[i]), rows)."""
    out, hi = [], 0
    for c in cu:
        hi = max(hi, c)
        out.append(min(hi, rows))
    return out


def _clamped_reference(q, k, v, cu, rows):
    """fp64 attention over the clamped sequences; rows outside every sequence zero."""
    c = _clamped(cu, rows)
    out = torch.zeros(q.shape, dtype=torch.float64)
    for s, e in zip(c[:-1], c[1:]):
        if e > s:
            out[s:e] = attention_loop_reference(q[s:e], k[s:e], v[s:e], [e - s])
    return out


MALFORMED = [  # (name, cu_seqlens, rows, max_seqlen, check_lengths message): the cases, 10x smaller
    ("negative start", [-5, 10, 30], 30, 30, r"cu_seqlens\[0\] must be 0, got -5 \(a negative start\)"),
    ("past the rows", [0, 20, 60], 30, 30, r"cu_seqlens\[2\] = 60 exceeds the 30 rows of q"),
    ("decreasing", [0, 20, 10], 30, 30, r"non-decreasing, but cu_seqlens\[2\] = 10 < cu_seqlens\[1\] = 20"),
    ("decreasing, then overlapping", [0, 20, 10, 30], 30, 30, "non-decreasing"),
    ("positive start", [4, 10, 25], 30, 30, r"cu_seqlens\[0\] must be 0, got 4"),
    ("everything past the rows", [40, 50, 60], 30, 30, r"cu_seqlens\[0\] must be 0"),
    ("longer than max_seqlen", [0, 27, 30], 30, 8, r"sequence 0 has 27 rows, more than max_seqlen = 8"),
]


@pytest.mark.parametrize("name,cu,rows,max_seqlen,msg", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_offsets_are_clamped_and_every_row_defined(name, cu, rows, max_seqlen, msg):
    q, k, v = (torch.randn(rows, 2, 32, device=DEVICE) for _ in range(3))
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEVICE)
    out = torch.full_like(q, float("nan"))  # poison: every row must be written (zeros outside the sequences)
    got = raggedvit.ragged_attention(q, k, v, cu_t, max_seqlen, out=out)
    want = _clamped_reference(q, k, v, cu, rows)
    assert_close_report(got, want, 1e-5, name)
    assert_close_report(ragged_attention_reference(q, k, v, cu_t, rows), want, 1e-5, f"reference, {name}")
    before = dict(launcher.stats)
    with pytest.raises(ValueError, match=msg):
        raggedvit.ragged_attention(q, k, v, cu_t, max_seqlen, check_lengths=True)
    assert dict(launcher.stats) == before


def test_malformed_offsets_past_the_first_block_of_the_prefix_maximum():
    """Batches over 128 sequences take the loop of the in-kernel prefix maximum (and a decreasing entry there)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    lengths = torch.randint(0, 3, (150,), generator=g).tolist()
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    cu[140] = cu[139] - 7  # decreasing past entry 128
    cu[-1] += 5  # past the rows
    rows = cu[-2] + 2
    q, k, v = (torch.randn(rows, 1, 16, device=DEVICE, dtype=torch.float16) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    got = raggedvit.ragged_attention(q, k, v, torch.tensor(cu, dtype=torch.int32, device=DEVICE), 2, out=out)
    assert_close_report(got, _clamped_reference(q, k, v, cu, rows), 2e-3, "150 sequences")


def test_torch_compile_fullgraph_traces_the_op():
    lengths = [4, 9]
    q, k, v, cu = _packed(lengths, 2, 64, torch.float32)

    def f(q, k, v, cu):
        return raggedvit.ragged_attention(q * 2, k, v, cu, 9) + 1

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    got = compiled(q, k, v, cu)
    want = raggedvit.ragged_attention(q * 2, k, v, cu, 9) + 1
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------- GPU only
@requires_gpu
def test_one_compile_across_length_sweep_and_direct_launches():
    raggedvit.warmup(dtypes=(torch.float16,), head_dims=(64,), heads=6)
    keys = len(launcher.cache)
    jit_before, direct_before = launcher.stats["jit"], launcher.stats["direct"]
    g = torch.Generator().manual_seed(0)
    for batch in (1, 3, 8, 64):
        for _ in range(5):
            lengths = torch.randint(0, 198, (batch,), generator=g).tolist()
            q, k, v, cu = _packed(lengths, 6, 64, torch.float16)
            raggedvit.ragged_attention(q, k, v, cu, 197)
    assert len(launcher.cache) == keys, "a length or batch change caused a new compile"
    assert launcher.stats["jit"] == jit_before
    assert launcher.stats["direct"] == direct_before + 20
    # an explicit scale (as the pruned forward passes timm's attn.scale) is part of the key: direct after once
    for _ in range(3):
        raggedvit.ragged_attention(q, k, v, cu, 197, scale=0.125)
    assert launcher.stats["jit"] == jit_before + 1 and launcher.stats["direct"] == direct_before + 22
    torch.testing.assert_close(raggedvit.ragged_attention(q, k, v, cu, 197, scale=0.3),
                               raggedvit.ragged_attention_reference(q, k, v, cu, 197, scale=0.3), atol=2e-3, rtol=0)


@requires_gpu
def test_no_host_sync():
    lengths = [197, 3, 100]
    q, k, v, cu = _packed(lengths, 6, 64, torch.float16)
    raggedvit.ragged_attention(q, k, v, cu, 197)
    torch.cuda.set_sync_debug_mode("error")
    try:
        raggedvit.ragged_attention(q, k, v, cu, 197)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@requires_gpu
def test_cuda_graph_replay_with_new_lengths():
    """A captured call stays correct when cu_seqlens and the data change between replays."""
    heads, d, cap, batch = 6, 64, 8 * 197, 8
    raggedvit.warmup(dtypes=(torch.float16,), head_dims=(d,), heads=heads)
    qkv = torch.randn(cap, 3, heads, d, device=DEVICE, dtype=torch.float16)
    cu = make_cu_seqlens([197] * batch, DEVICE)
    q, k, v = qkv.unbind(1)
    out = torch.empty(cap, heads, d, device=DEVICE, dtype=torch.float16)
    raggedvit.ragged_attention(q, k, v, cu, 197, out=out)  # same launch key as the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        raggedvit.ragged_attention(q, k, v, cu, 197, out=out)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        lengths = torch.randint(0, 198, (batch,), generator=g).tolist()
        cu.copy_(make_cu_seqlens(lengths, DEVICE))
        qkv.copy_(torch.randn_like(qkv))
        graph.replay()
        torch.cuda.synchronize()
        want = raggedvit.ragged_attention(q, k, v, cu, 197)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        assert (out[sum(lengths):] == 0).all()


# ----------------------------------------------------------------------------------------------- key_bias


def _biased_reference(q, k, v, lengths, bias, scale=None) -> torch.Tensor:
    """float64 loop reference of ``softmax(q k^T * scale + bias[key]) v`` per sequence; rows past the end zero."""
    total, heads, head_dim = q.shape
    scale = head_dim**-0.5 if scale is None else scale
    out = torch.zeros(total, heads, head_dim, dtype=torch.float64)
    start = 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[start:start + n].double().cpu().transpose(0, 1) for t in (q, k, v))
            s_ = qs @ ks.transpose(1, 2) * scale + bias[start:start + n].double().cpu()
            out[start:start + n] = (torch.softmax(s_, dim=-1) @ vs).transpose(0, 1)
        start += n
    return out


def _biased_yardstick(q, k, v, lengths, bias, ref) -> float:
    """Error against ``ref`` of torch in q's dtype: SDPA with the bias as a float mask, and flash-style rounding
    (unnormalised probabilities rounded to q's dtype before P @ V)."""
    worst, start = 0.0, 0
    for n in lengths:
        if n:
            qs, ks, vs = (t[start:start + n].transpose(0, 1) for t in (q, k, v))
            b = bias[start:start + n]
            o = F.scaled_dot_product_attention(qs[None], ks[None], vs[None], attn_mask=b.to(q.dtype)[None, None, None])
            worst = max(worst, (o[0].transpose(0, 1).double().cpu() - ref[start:start + n]).abs().max().item())
            s_ = qs.float().cpu() @ ks.float().cpu().transpose(1, 2) * qs.shape[-1] ** -0.5 + b.float().cpu()
            p = torch.exp(s_ - s_.amax(-1, keepdim=True))
            o = _round((_round(p, q.dtype).float() @ vs.float().cpu()) / p.sum(-1, keepdim=True), q.dtype)
            worst = max(worst, (o.transpose(0, 1).double() - ref[start:start + n]).abs().max().item())
        start += n
    return worst


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_key_bias_matches_fp64_reference(dtype, head_dim):
    lengths = [0, 1, 2, 37, 5]
    q, k, v, cu = _packed(lengths, 2, head_dim, dtype)
    bias = torch.log(torch.randint(1, 9, (sum(lengths),), device=DEVICE).float())  # ToMe: log(token size)
    got = raggedvit.ragged_attention(q, k, v, cu, max(lengths), key_bias=bias)
    ref = _biased_reference(q, k, v, lengths, bias)
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        rel = ((got.double().cpu() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-4, f"fp32 relative error {rel:.3g}"
    else:
        tol = 2 * max(_biased_yardstick(q, k, v, lengths, bias, ref), torch.finfo(dtype).eps / 2)
        assert_close_report(got, ref, tol, f"{dtype} + key_bias vs fp64")
    # the public op, the reference and padded SDPA agree; no bias == a zero bias
    want = ragged_attention_reference(q, k, v, cu, max(lengths), key_bias=bias)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close_report(got, want.double(), tol, "triton vs reference")
    zero = raggedvit.ragged_attention(q, k, v, cu, max(lengths), key_bias=torch.zeros_like(bias))
    torch.testing.assert_close(zero, raggedvit.ragged_attention(q, k, v, cu, max(lengths)), rtol=0, atol=0)


def test_key_bias_is_token_size():
    """A key of size s with bias log(s) weighs as s copies of that key (ToMe's proportional attention)."""
    sizes = [1, 3, 1, 2, 5]
    q, k, v, cu = _packed([len(sizes)], 1, 32, torch.float32, fused=False)
    got = raggedvit.ragged_attention(q, k, v, cu, len(sizes), key_bias=torch.tensor(sizes, device=DEVICE).float().log())
    rep = torch.repeat_interleave(torch.arange(len(sizes), device=DEVICE), torch.tensor(sizes, device=DEVICE))
    k2, v2 = k[rep].contiguous(), v[rep].contiguous()
    want = torch.softmax((q[:, 0] @ k2[:, 0].T) * 32**-0.5, dim=-1) @ v2[:, 0]
    torch.testing.assert_close(got[:, 0], want, rtol=1e-5, atol=1e-5)


def test_key_bias_rows_past_the_last_offset_and_backends():
    from raggedvit.ops.backends import BACKENDS, BackendUnavailableError, get_backend, key_bias_backends

    lengths = [7, 0, 12]
    q, k, v, cu = _packed(lengths, 2, 64, torch.float32, extra_rows=5)
    bias = torch.randn(q.shape[0], device=DEVICE)
    got = raggedvit.ragged_attention(q, k, v, cu, 12, key_bias=bias, scale=0.2)
    assert (got[sum(lengths):] == 0).all()
    assert_close_report(got[:sum(lengths)], _biased_reference(q, k, v, lengths, bias, scale=0.2)[:sum(lengths)], 1e-5,
                        "key_bias with scale")
    assert key_bias_backends() == ["triton", "reference", "padded_sdpa"]
    for name in key_bias_backends():
        torch.testing.assert_close(get_backend(name)(q, k, v, cu, 12, scale=0.2, key_bias=bias), got, rtol=1e-5,
                                   atol=1e-5)
    for name in sorted(set(BACKENDS) - set(key_bias_backends())):
        with pytest.raises(BackendUnavailableError, match=f"backend '{name}' takes no key_bias"):
            get_backend(name)(q, k, v, cu, 12, key_bias=bias)


@pytest.mark.parametrize("bias,exc,msg", [
    (lambda n: torch.zeros(n, dtype=torch.float16), TypeError, "key_bias must be float32"),
    (lambda n: torch.zeros(n + 1), ValueError, r"key_bias must be a contiguous \(9,\) tensor"),
    (lambda n: torch.zeros(n, 2)[:, 0], ValueError, "key_bias must be a contiguous"),
    (lambda n: [0.0] * n, TypeError, "key_bias must be a torch.Tensor or None"),
])
def test_bad_key_bias(bias, exc, msg):
    q, k, v, cu = _packed([4, 5], 1, 32, torch.float32)
    b = bias(q.shape[0])
    if isinstance(b, torch.Tensor):
        b = b.to(DEVICE)
    with pytest.raises(exc, match=msg):
        raggedvit.ragged_attention(q, k, v, cu, 5, key_bias=b)


def test_torch_compile_traces_key_bias():
    lengths = [4, 9]
    q, k, v, cu = _packed(lengths, 2, 64, torch.float32)
    bias = torch.randn(q.shape[0], device=DEVICE)

    def f(q, k, v, cu, bias):
        return raggedvit.ragged_attention(q, k, v, cu, 9, key_bias=bias * 2)

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    torch.testing.assert_close(compiled(q, k, v, cu, bias), f(q, k, v, cu, bias))


@requires_gpu
def test_key_bias_direct_launches_and_graph_replay():
    heads, d, batch = 3, 64, 4
    qkv = torch.randn(batch * 197, 3, heads, d, device=DEVICE, dtype=torch.float16)
    q, k, v = qkv.unbind(1)
    cu = make_cu_seqlens([197] * batch, DEVICE)
    bias = torch.zeros(batch * 197, device=DEVICE)
    raggedvit.ragged_attention(q, k, v, cu, 197, key_bias=bias)
    direct = launcher.stats["direct"]
    out = raggedvit.ragged_attention(q, k, v, cu, 197, key_bias=bias)
    assert launcher.stats["direct"] == direct + 1
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = raggedvit.ragged_attention(q, k, v, cu, 197, key_bias=bias)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        lengths = torch.randint(0, 198, (batch,), generator=g).tolist()
        cu.copy_(make_cu_seqlens(lengths, DEVICE))
        bias.copy_(torch.randn(batch * 197, generator=g).to(DEVICE))
        graph.replay()
        n = sum(lengths)
        ref = _biased_reference(q, k, v, lengths, bias)
        assert_close_report(out[:n], ref[:n], 5e-3, "graph replay with key_bias")
