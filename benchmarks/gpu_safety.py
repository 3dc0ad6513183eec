"""Memory safety of raggedvit's kernels on the GPU (issue 13): a seeded fuzz with malformed ragged metadata, a
health check of the CUDA context, and the attention micro-benchmark before/after the clamping, in one run.

Usage, from the repository root on the GPU machine (``.base/src``: the source before the change)::

    PYTHONPATH=src python3 benchmarks/gpu_safety.py --out $OUT --baseline-src .base/src

1. Fuzz (``--calls``, default 1200, ``--seed``): every op that reads ragged metadata (``ragged_attention``,
   ``cls_attention_mean``, ``compact_packed``, ``l2_select``, ``best_first_select``, ``ats_select``,
   ``ragged_linear``, ``ragged_layer_norm``) on random batches; about half the calls get malformed metadata
   (negative, decreasing, past-the-rows or int32-extreme offsets; garbage lengths, counts, row and position
   indices; live counts negative or past the buffer; sequences longer than ``max_seqlen``; a ``width`` too
   small for the rule). Well-formed calls are compared with references (fp64/fp32 torch, the torch selections
   of :mod:`raggedvit.pruning`); malformed ones with the documented clamp rule (the clamp-aware references,
   or the same op on explicitly clamped metadata). Then the context must be healthy: a known-good call
   checked against its reference, and ``torch.cuda.synchronize()``.
2. Attention micro-benchmark (``--no-bench`` skips it): ``ragged_attention``, fp16, 6 heads x 64, fused-qkv
   views, batch 8 and 64, lengths uniform in [40, 197], ``max_seqlen`` 197: GPU time per call (CUDA-graph
   replay of 20 calls) and host time per eager call. Each side runs in a subprocess (``PYTHONPATH=src`` for
   "after", ``--baseline-src`` for "before"), alternating for ``--rounds`` rounds; the table shows the best.

Writes ``$OUT/gpu_safety.json`` and prints a table; exits 1 if a fuzz call failed or the context is not healthy.

compute-sanitizer (0 errors expected). ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` gives every tensor its own
allocation, so a read past a tensor is reported instead of landing inside a block of torch's caching
allocator; CUDA-graph tests are deselected (graph capture needs the caching allocator), as is the
``torch.compile`` test (inductor's own kernels)::

    export PYTHONPATH=src PYTORCH_NO_CUDA_MEMORY_CACHING=1
    # memcheck: the GPU tests of every kernel (tests/test_ops_*.py run on the GPU when one is present)
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q -x -p no:cacheprovider \\
        tests/test_ops_*.py -k "not graph and not torch_compile"
    # memcheck: the malformed-metadata fuzz itself
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_safety.py --calls 300 \\
        --no-bench --out /tmp/sanitizer
    # racecheck: the kernels that use shared memory (all but compact_packed: tl.dot operands, reductions)
    compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q -x -p no:cacheprovider \\
        tests/test_ops_attention.py tests/test_ops_cls_attention.py tests/test_ops_linear.py \\
        tests/test_ops_layernorm.py tests/test_ops_select.py -k "not graph and not torch_compile"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
import traceback

import torch

# ------------------------------------------------------------------------------------------------ fuzz cases


def _cumsum(lengths: list[int]) -> list[int]:
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return cu


def _clamped_offsets(cu: list[int], rows: int) -> list[int]:
    """The documented rule: c[i] = min(max(0, cu[0], ..., cu[i]), rows)."""
    out, hi = [], 0
    for c in cu:
        hi = max(hi, c)
        out.append(min(hi, rows))
    return out


_I32 = (-(2**31), 2**31 - 1)


def _malformed_offsets(rng: random.Random, cu: list[int], rows: int) -> tuple[list[int], str]:
    cu = list(cu)
    kind = rng.choice(["negative start", "past the rows", "decreasing", "garbage", "int32 extremes"])
    i = rng.randrange(len(cu))
    if kind == "negative start":
        cu[0] = -rng.randint(1, rows + 50)
    elif kind == "past the rows":
        cu[i] = cu[i] + rng.randint(1, rows + 100)
    elif kind == "decreasing":
        j = rng.randrange(1, len(cu))
        cu[j] = cu[j - 1] - rng.randint(1, 50)
    elif kind == "garbage":
        cu = [rng.randint(-rows, 2 * rows + 1) for _ in cu]
    else:
        cu[i] = rng.choice(_I32)
    return cu, kind


def _garbage(rng: random.Random, t: torch.Tensor, lo: int, hi: int, big: int) -> torch.Tensor:
    """``t`` with a few entries set to values outside ``[lo, hi]`` (just outside, or huge)."""
    t = t.clone()
    flat = t.view(-1)
    for _ in range(max(1, flat.numel() // 8)):
        flat[rng.randrange(flat.numel())] = rng.choice([lo - 1, lo - rng.randint(1, 1000), hi + 1,
                                                        hi + rng.randint(1, 1000), -big, big])
    return t


class Case:
    """One fuzz call: ``op``, ``kind`` ("ok" or what is malformed), and the check's verdict."""

    def __init__(self, op: str, kind: str):
        self.op, self.kind = op, kind


def _tol(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, what: str) -> None:
    g, w = got.double().cpu(), want.double().cpu()
    if g.shape != w.shape:
        raise AssertionError(f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}")
    if not torch.isfinite(g).all():
        raise AssertionError(f"{what}: {int((~torch.isfinite(g)).sum())} non-finite values")
    err = (g - w).abs().max().item() if g.numel() else 0.0
    if err > atol:
        raise AssertionError(f"{what}: max |diff| {err:.3g} > {atol:.3g}")


def _equal(got, want, what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        if (g is None) != (w is None) or (g is not None and not torch.equal(g.cpu(), w.cpu())):
            raise AssertionError(f"{what}: output {i} differs")


def case_attention(rng, gen, dev, small, malformed):
    from raggedvit.ops.attention import ragged_attention
    from raggedvit.ops.reference import ragged_attention_reference

    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    heads, head_dim = rng.choice([1, 2, 3]), rng.choice([16, 32] if small else [32, 64, 72])
    batch = rng.randint(1, 4 if small else 24)
    lengths = [rng.randint(0, 12 if small else 200) for _ in range(batch)]
    rows = sum(lengths) + rng.randint(0, 8)
    cu = _cumsum(lengths)
    max_seqlen = max(1, max(lengths))
    kind = "ok"
    if malformed:
        if rng.random() < 0.2:
            kind, max_seqlen = "longer than max_seqlen", max(1, max_seqlen // rng.randint(2, 8))
        else:
            cu, kind = _malformed_offsets(rng, cu, rows)
    c = _clamped_offsets(cu, rows)
    qkv = torch.randn(rows, 3, heads, head_dim, generator=gen).to(dev, dtype)
    q, k, v = qkv.unbind(1) if rng.random() < 0.5 else (t.contiguous() for t in qkv.unbind(1))
    cu_t = torch.tensor(cu, dtype=torch.int32).to(dev)
    out = torch.full((rows, heads, head_dim), float("nan"), dtype=dtype, device=dev)  # poison
    got = ragged_attention(q, k, v, cu_t, max_seqlen, out=out)
    ref_len = max(1, max(b - a for a, b in zip(c[:-1], c[1:])))
    want = ragged_attention_reference(q.float(), k.float(), v.float(), cu_t, ref_len)
    _close(got, want, _tol(dtype), f"attention {kind}")
    return kind


def case_cls(rng, gen, dev, small, malformed):
    from raggedvit.ops.cls_attention import cls_attention_mean, cls_attention_mean_reference

    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    heads, head_dim = rng.choice([1, 3, 6]), rng.choice([32, 64])
    batch = rng.randint(1, 4 if small else 24)
    lengths = [rng.randint(0, 12 if small else 200) for _ in range(batch)]
    rows = sum(lengths) + rng.randint(0, 8)
    cu = _cumsum(lengths)
    starts, ends = cu[:-1], cu[1:]
    width = max(1, max(lengths))
    kind = "ok"
    if malformed:
        kind = rng.choice(["negative start", "past the rows", "decreasing", "garbage", "longer than out_width"])
        b = rng.randrange(batch)
        if kind == "negative start":
            starts[b] = -rng.randint(1, 100)
        elif kind == "past the rows":
            ends[b] = rows + rng.randint(1, 100)
        elif kind == "decreasing":
            ends[b] = starts[b] - rng.randint(1, 10)
        elif kind == "garbage":
            starts = [rng.choice([rng.randint(-rows, 2 * rows), *_I32]) for _ in starts]
            ends = [rng.choice([rng.randint(-rows, 2 * rows), *_I32]) for _ in ends]
        else:
            width = max(1, width // rng.randint(2, 8))
    s_t, e_t = (torch.tensor(t, dtype=torch.int32).to(dev) for t in (starts, ends))
    q, k = (torch.randn(rows, heads, head_dim, generator=gen).to(dev, dtype) for _ in range(2))
    out = torch.full((batch, width), float("nan"), device=dev)
    got = cls_attention_mean(q, k, s_t, e_t, width, scale=head_dim**-0.5, out=out)
    full = max([width] + [min(max(e, min(max(s, 0), rows)), rows) - min(max(s, 0), rows)
                          for s, e in zip(starts, ends)])
    want = cls_attention_mean_reference(q, k, s_t, e_t, full, scale=head_dim**-0.5)[:, :width]
    _close(got, want, 1e-5 if dtype == torch.float32 else 2e-3, f"cls {kind}")
    return kind


def _compact_reference(x, extra, dense_rows, index, count, tok, width):
    """Compaction of clamped metadata in torch (vectorized)."""
    B, L = dense_rows.shape
    R, C = x.shape
    hi = L if extra is not None else L - 1
    idx = index[:, :width].clamp(0, hi)
    cnt = count.clamp(0, width)
    is_extra = idx == L
    pos = idx.clamp(max=L - 1)
    src = dense_rows.clamp(0, R - 1).gather(1, pos)
    cu = torch.cat([cnt.new_zeros(1), torch.cumsum(cnt, 0)])
    slot = torch.arange(width, device=x.device)[None, :]
    live = slot < cnt[:, None]
    b = torch.arange(B, device=x.device)[:, None]
    dest = torch.where(live, cu[:-1, None] + slot, cu[-1] + b * width - cu[1:, None] + slot)
    vals = x[src]
    if extra is not None:
        vals = torch.where(is_extra[..., None], extra[:, None, :], vals)
    vals = torch.where(live[..., None], vals, torch.zeros((), dtype=x.dtype, device=x.device))
    out = torch.zeros(B * width, C, dtype=x.dtype, device=x.device)
    out[dest.reshape(-1)] = vals.reshape(-1, C)
    new_tok = torch.where(is_extra, -1, tok.gather(1, pos)).to(torch.int32)
    return out, cu.to(torch.int32), cu[:-1, None] + slot.expand(B, -1), live, new_tok


def case_compact(rng, gen, dev, small, malformed):
    from raggedvit.ops.compact import compact_packed

    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    B, L = rng.randint(1, 4 if small else 32), rng.randint(1, 12 if small else 120)
    width, C, R = rng.randint(1, L + 1), rng.choice([8, 24] if small else [64, 384]), B * L
    with_extra = rng.random() < 0.5
    hi = L if with_extra else L - 1
    x = torch.randn(R, C, generator=gen).to(dev, dtype)
    extra = torch.randn(B, C, generator=gen).to(dev, dtype) if with_extra else None
    dense_rows = torch.randint(0, R, (B, L), generator=gen).to(dev)
    index = torch.randint(0, hi + 1, (B, width + rng.randint(0, 2)), generator=gen).to(dev)
    count = torch.randint(0, width + 1, (B,), generator=gen).to(dev)
    tok = torch.randint(0, 1000, (B, L), generator=gen, dtype=torch.int32).to(dev)
    kind = "ok"
    if malformed:
        kind = rng.choice(["count", "index", "dense_rows", "all"])
        if kind in ("count", "all"):
            count = _garbage(rng, count, 0, width, 2**40)
        if kind in ("index", "all"):
            index = _garbage(rng, index, 0, hi, 2**40)
        if kind in ("dense_rows", "all"):
            dense_rows = _garbage(rng, dense_rows, 0, R - 1, 2**40)
    got = compact_packed(x, extra, dense_rows, index, count, tok, width)
    _equal(got, _compact_reference(x, extra, dense_rows, index, count, tok, width), f"compact {kind}")
    return kind


def _select_batch(rng, gen, dev, small):
    from raggedvit.pruning.ragged import meta_from_counts

    P = rng.choice([1, 2])
    B, L = rng.randint(1, 4 if small else 16), rng.randint(P + 3, 16 if small else 197)
    lengths = torch.randint(P + 2, L + 1, (B,), generator=gen)
    meta = meta_from_counts(lengths.to(dev), L)
    return P, B, L, meta


def _malformed_meta(rng, meta, L):
    lengths, rows = meta.lengths, meta.dense_rows
    kind = rng.choice(["lengths", "dense_rows", "both", "narrow width"])
    if kind in ("lengths", "both"):
        lengths = _garbage(rng, lengths, 0, L, 2**40)
    if kind in ("dense_rows", "both"):
        rows = _garbage(rng, rows, 0, meta.capacity - 1, 2**40)
    return lengths, rows, kind


def _check_select_output(index, count, width, L, what):
    if index.shape[1] != width or not ((count >= 0) & (count <= width)).all():
        raise AssertionError(f"{what}: count outside [0, width]")
    if not ((index >= 0) & (index <= L)).all():
        raise AssertionError(f"{what}: index outside [0, L]")


def _kept(index, count):
    return [index[b, : int(count[b])].tolist() for b in range(index.shape[0])]


def case_select(rng, gen, dev, small, malformed):
    """One of the three selection ops: well-formed against the torch selection, malformed against the same op
    on clamped metadata (identical decisions) plus a well-formed output."""
    from raggedvit.ops.select import ats_select, best_first_select, l2_select
    from raggedvit.pruning import ats, dynamicvit, evit, threshold_l2
    from raggedvit.pruning.ragged import dense_view

    P, B, L, meta = _select_batch(rng, gen, dev, small)
    C = rng.choice([8, 64])
    op = rng.choice(["l2", "evit", "dynamicvit", "ats"])
    x = torch.randn(meta.capacity, C, generator=gen).mul(torch.rand(meta.capacity, 1, generator=gen) * 3).to(dev)
    score = torch.softmax(torch.randn(B, L, generator=gen) * 2, dim=1).to(dev)
    v_norm = (torch.rand(meta.capacity, generator=gen) + 0.5).to(dev)
    logp = torch.log_softmax(torch.randn(meta.capacity, 2, generator=gen) * 2, dim=-1).to(dev)
    valid = meta.dense_valid
    k = max(1, int(meta.lengths.min()) - P - 1)  # every image holds more than k candidates
    if op == "l2":
        live = dense_view(threshold_l2.l2_scores(x), meta)[:, P:][valid[:, P:]]
        t = threshold_l2.quantile_threshold(live.float(), rng.uniform(0.2, 0.9))
        want = threshold_l2.select_threshold(dense_view(threshold_l2.l2_scores(x), meta), valid, P, threshold=t)

        def run(lengths, rows, width):
            return l2_select(x, rows, lengths, P, width, threshold=t)
    elif op == "evit":
        want = evit.select_topk(score, valid, P, k, fuse=True, y_dense=dense_view(x, meta))

        def run(lengths, rows, width):
            return best_first_select(score, x, rows, lengths, P, width, k=k, fuse=True)
    elif op == "dynamicvit":
        rows_score = dynamicvit.keep_scores(logp)
        want = dynamicvit.select_threshold(dense_view(rows_score, meta), valid, P, threshold=0.5)

        def run(lengths, rows, width):
            return best_first_select(rows_score, x, rows, lengths, P, width, threshold=math.log(0.5))[:2]
    else:
        m = rng.choice([1, 9, 40])
        want = ats.select_sampling(score * dense_view(v_norm, meta), valid, P, num_samples=m)

        def run(lengths, rows, width):
            return ats_select(score, v_norm, rows, lengths, P, width, m)
    width = want.width
    if not malformed:
        got = run(meta.lengths, meta.dense_rows, width)
        if not torch.equal(got[1].cpu(), want.count.cpu()) or _kept(got[0], got[1]) != _kept(want.index, want.count):
            raise AssertionError(f"{op}: decisions differ from the torch selection")
        if op == "evit":
            _close(got[2], want.extra, 1e-4, "evit fused token")
        return "ok"
    lengths, rows, kind = _malformed_meta(rng, meta, L)
    if kind == "narrow width":
        width = rng.randint(P, max(P, width - 1))
    got = run(lengths, rows, width)
    _check_select_output(got[0], got[1], width, L, f"{op} {kind}")
    _equal(got, run(lengths.clamp(0, L), rows.clamp(0, meta.capacity - 1), width), f"{op} {kind} vs clamped")
    return f"{op}: {kind}"


def case_live_rows(rng, gen, dev, small, malformed):
    from raggedvit.ops.layernorm import ragged_layer_norm
    from raggedvit.ops.linear import ragged_linear

    dtype = rng.choice([torch.float16, torch.bfloat16, torch.float32])
    K, N = rng.choice([(32, 48), (64, 64)] if small else [(384, 384), (384, 1152), (192, 768), (384, 1536)])
    M = rng.randint(1, 40 if small else 8000 if N == 1536 else 2000)  # (384, 1536) x 8000: the TMA tiles
    live = rng.randint(0, M)
    kind = "ok"
    if malformed:
        kind = rng.choice(["negative", "past the buffer", "int32 extreme"])
        live = {"negative": -rng.randint(1, 1000), "past the buffer": M + rng.randint(1, 1000)}.get(
            kind, rng.choice(_I32))
    n = min(max(live, 0), M)
    x = torch.randn(M, K, generator=gen).to(dev, dtype)
    live_t = torch.tensor([live], dtype=torch.int32).to(dev)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # relative to the largest output
    if rng.random() < 0.5:
        w = (torch.randn(N, K, generator=gen) / K**0.5).to(dev, dtype)
        b = torch.randn(N, generator=gen).to(dev, dtype)
        gelu = rng.random() < 0.5
        out = torch.full((M, N), 7.0, dtype=dtype, device=dev)
        ragged_linear(x, w, b, live_t, gelu=gelu, out=out)
        want = torch.nn.functional.linear(x[:n].float(), w.float(), b.float())
        want = torch.nn.functional.gelu(want) if gelu else want
        what = f"linear {kind}"
    else:
        w, b = (torch.randn(K, generator=gen).to(dev, dtype) for _ in range(2))
        out = torch.full((M, K), 7.0, dtype=dtype, device=dev)
        ragged_layer_norm(x, w, b, live_t, out=out)
        want = torch.nn.functional.layer_norm(x[:n].float(), (K,), w.float(), b.float())
        what = f"layernorm {kind}"
    _close(out[:n], want, tol * max(1.0, float(want.abs().max()) if want.numel() else 1.0), what)
    if not (out[n:] == 7).all():
        raise AssertionError(f"{what}: a row past the live count was written")
    return kind


CASES = {"attention": case_attention, "cls_attention_mean": case_cls, "compact_packed": case_compact,
         "selections": case_select, "live_rows": case_live_rows}


def fuzz(calls: int, device: torch.device, seed: int, *, small: bool = False, log=print) -> dict:
    """Run ``calls`` fuzz calls (round robin over :data:`CASES`, malformed with probability 1/2); returns a
    summary with per-op counts and the failures (op, kind, call, message). Never raises for a failing call."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references in IEEE fp32
    names = list(CASES)
    per_op = {n: {"calls": 0, "malformed": 0, "failed": 0} for n in names}
    failures = []
    for i in range(calls):
        name = names[i % len(names)]
        malformed = rng.random() < 0.5
        stats = per_op[name]
        stats["calls"] += 1
        stats["malformed"] += malformed
        try:
            kind = CASES[name](rng, gen, device, small, malformed)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous fault is charged to this call
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none stops the fuzz
            stats["failed"] += 1
            failures.append({"call": i, "op": name, "malformed": malformed, "error": f"{type(e).__name__}: {e}",
                             "trace": traceback.format_exc(limit=3)})
            if len(failures) <= 5:
                log(f"FAIL call {i} {name} (malformed={malformed}): {type(e).__name__}: {e}")
            continue
        if i % 200 == 0:
            log(f"  call {i}: {name} {kind}")
    return {"calls": calls, "seed": seed, "per_op": per_op, "failures": failures}


def healthy(device: torch.device) -> dict:
    """A known-good attention call checked against its reference, then a device synchronize."""
    from raggedvit.ops.attention import ragged_attention
    from raggedvit.ops.reference import ragged_attention_reference

    try:
        q, k, v = torch.randn(60, 3, 2, 64, device=device, dtype=torch.float16).unbind(1)
        cu = torch.tensor([0, 20, 20, 57], dtype=torch.int32, device=device)
        got = ragged_attention(q, k, v, cu, 37)
        _close(got, ragged_attention_reference(q.float(), k.float(), v.float(), cu, 37), 1e-2, "known-good call")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"healthy": True}
    except Exception as e:  # noqa: BLE001
        return {"healthy": False, "error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------------ benchmark

BENCH_BATCHES = (8, 64)


def bench_attention(graph_calls: int = 20, replays: int = 50, trials: int = 7, eager_calls: int = 300) -> dict:
    """Times ``ragged_attention`` of whichever raggedvit is on the path (old and new have the same API)."""
    import raggedvit

    dev = torch.device("cuda")
    res = {"raggedvit": raggedvit.__file__}
    for batch in BENCH_BATCHES:
        g = torch.Generator().manual_seed(batch)
        lengths = torch.randint(40, 198, (batch,), generator=g).tolist()
        cu = torch.tensor(_cumsum(lengths), dtype=torch.int32, device=dev)
        qkv = torch.randn(sum(lengths), 3, 6, 64, generator=g).to(dev, torch.float16)
        q, k, v = qkv.unbind(1)
        out = torch.empty(q.shape, dtype=q.dtype, device=dev)
        for _ in range(3):
            raggedvit.ragged_attention(q, k, v, cu, 197)
            raggedvit.ragged_attention(q, k, v, cu, 197, out=out)
        torch.cuda.synchronize()
        host = []
        for _ in range(trials):
            t0 = time.perf_counter()
            for _ in range(eager_calls):
                raggedvit.ragged_attention(q, k, v, cu, 197)
            host.append((time.perf_counter() - t0) / eager_calls * 1e6)
            torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(graph_calls):
                raggedvit.ragged_attention(q, k, v, cu, 197, out=out)
        graph.replay()
        torch.cuda.synchronize()
        gpu = []
        for _ in range(trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            torch.cuda.synchronize()
            gpu.append(start.elapsed_time(end) * 1e3 / (replays * graph_calls))
        res[str(batch)] = {"tokens": sum(lengths), "graph_us": sorted(gpu)[len(gpu) // 2],
                           "eager_host_us": sorted(host)[len(host) // 2]}
    return res


def _bench_in_subprocess(src: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    run = subprocess.run([sys.executable, os.path.abspath(__file__), "--bench-child"], env=env, capture_output=True,
                         text=True)
    if run.returncode != 0:
        raise RuntimeError(f"benchmark with PYTHONPATH={src} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def compare(current_src: str, baseline_src: str | None, rounds: int) -> dict:
    """Alternate the timing of the current and the baseline source (one subprocess each per round)."""
    sides = {"after": current_src, **({"before": baseline_src} if baseline_src else {})}
    runs: dict[str, list] = {s: [] for s in sides}
    for _ in range(rounds):
        for side, src in sides.items():
            runs[side].append(_bench_in_subprocess(src))
    best = {}
    for side, rs in runs.items():
        best[side] = {"raggedvit": rs[0]["raggedvit"]}
        for batch in map(str, BENCH_BATCHES):
            best[side][batch] = {m: min(r[batch][m] for r in rs) for m in ("graph_us", "eager_host_us")}
            best[side][batch]["tokens"] = rs[0][batch]["tokens"]
    return {"rounds": runs, "best": best}


# ------------------------------------------------------------------------------------------------ main


def _table(summary: dict, bench: dict | None) -> str:
    lines = [f"{'op':<20}{'calls':>7}{'malformed':>11}{'failed':>8}"]
    for name, s in summary["fuzz"]["per_op"].items():
        lines.append(f"{name:<20}{s['calls']:>7}{s['malformed']:>11}{s['failed']:>8}")
    lines.append(f"context healthy after the fuzz: {summary['health']['healthy']}")
    if bench:
        best = bench["best"]
        lines.append("")
        lines.append("ragged_attention fp16, 6 heads x 64, lengths 40-197 (best of rounds; us per call)")
        lines.append(f"{'batch':<7}{'tokens':>7}{'graph before':>14}{'graph after':>13}{'host before':>13}"
                     f"{'host after':>12}")
        for batch in map(str, BENCH_BATCHES):
            a, b = best["after"][batch], best.get("before", {}).get(batch)
            def fmt(d, m):
                return f"{d[m]:.2f}" if d else "-"
            lines.append(f"{batch:<7}{a['tokens']:>7}{fmt(b, 'graph_us'):>14}{a['graph_us']:>13.2f}"
                         f"{fmt(b, 'eager_host_us'):>13}{a['eager_host_us']:>12.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out", help="directory for gpu_safety.json")
    ap.add_argument("--calls", type=int, default=1200, help="fuzz calls (>= 1000 for the issue's check)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--baseline-src", default=None, help="source dir of the version before the change")
    ap.add_argument("--rounds", type=int, default=3, help="alternating benchmark rounds per side")
    ap.add_argument("--no-bench", action="store_true", help="fuzz and health check only")
    ap.add_argument("--bench-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bench_child:
        print(json.dumps(bench_attention()))
        return 0
    if not torch.cuda.is_available():
        print("gpu_safety: needs a CUDA GPU", file=sys.stderr)
        return 2
    import raggedvit

    dev = torch.device("cuda")
    summary = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__,
               "triton": __import__("triton").__version__, "raggedvit": raggedvit.__file__}
    print(f"fuzz: {args.calls} calls, seed {args.seed}, {summary['device']}")
    t0 = time.perf_counter()
    summary["fuzz"] = fuzz(args.calls, dev, args.seed)
    summary["fuzz"]["seconds"] = time.perf_counter() - t0
    summary["health"] = healthy(dev)
    bench = None
    if not args.no_bench:
        src = os.path.dirname(os.path.dirname(os.path.abspath(raggedvit.__file__)))
        bench = summary["bench"] = compare(src, args.baseline_src, args.rounds)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_safety.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(_table(summary, bench))
    ok = not summary["fuzz"]["failures"] and summary["health"]["healthy"]
    print("OK" if ok else f"FAILED: {len(summary['fuzz']['failures'])} fuzz calls, health {summary['health']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
