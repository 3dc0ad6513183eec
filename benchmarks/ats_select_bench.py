"""GPU time of one ATS sampling stage: ``raggedvit.ops.select.ats_select`` (CUDA only).

For batch 1 / 8 / 64 / 256, L = 197 and 577 (224 / 384 px ViTs with a CLS token), ``num_samples`` = 196, all
images full length ("full") and ragged lengths in ``[L / 2, L]`` ("ragged"): microseconds per call from CUDA
graph replay (``--calls`` selections captured in one graph, best of ``--rounds`` replays timed with CUDA
events), and the eager torch reference :func:`raggedvit.pruning.ats.select_sampling` for comparison
(``--no-torch`` skips it). ``--profile`` adds the device time per kernel (torch.profiler). Uses only the public
signature of ``ats_select``, so the same script times any branch.

Usage: ``PYTHONPATH=src python3 benchmarks/ats_select_bench.py [--profile]``. On a machine without CUDA it
prints a note and exits (importing it is safe anywhere).
"""

from __future__ import annotations

import argparse


def _inputs(batch: int, L: int, ragged: bool, device):
    import torch

    from raggedvit.pruning.ragged import dense_view, meta_from_counts, uniform_meta

    g = torch.Generator(device="cpu").manual_seed(batch * 1000 + L)
    if ragged:
        meta = meta_from_counts(torch.randint(L // 2, L + 1, (batch,), generator=g).to(device), L)
    else:
        meta = uniform_meta(batch, L, device)
    score = torch.softmax(torch.randn(batch, L, generator=g).to(device) * 2, dim=1)
    v_norm = (torch.rand(meta.capacity, generator=g) + 0.5).to(device)
    sig = score * dense_view(v_norm, meta)
    return meta, score, v_norm, sig


def _graph_us(fn, calls: int, rounds: int) -> float:
    """Microseconds per ``fn()`` from replaying a CUDA graph of ``calls`` calls (best of ``rounds``)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and warm up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(rounds):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def _eager_us(fn, calls: int, rounds: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(rounds):
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / calls)
    return best


def _kernel_breakdown(fn, calls: int = 20) -> str:
    """``name: us per call`` for every CUDA kernel ``fn`` launches (torch.profiler device time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            times[ev.name] = times.get(ev.name, 0.0) + ev.device_time_total
    return ", ".join(f"{name[:40]} {t / calls:.1f}" for name, t in sorted(times.items(), key=lambda x: -x[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--lengths", type=int, nargs="+", default=[197, 577])
    parser.add_argument("--num-samples", type=int, default=196)
    parser.add_argument("--calls", type=int, default=50, help="selections per graph replay")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
    parser.add_argument("--profile", action="store_true", help="device time per kernel (torch.profiler)")
    parser.add_argument("--check", action="store_true", help="assert the same decisions as the torch reference")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("ats_select_bench: needs a CUDA GPU (nothing timed)")
        return
    import triton

    from raggedvit.ops.select import ats_select
    from raggedvit.pruning import ats

    dev = torch.device("cuda")
    m, P = args.num_samples, 1
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"num_samples {m}; us per call (CUDA graph replay of {args.calls} calls, best of {args.rounds})")
    print(f"{'L':>4} {'batch':>5} {'lengths':>7} {'ats_select':>10} {'torch ref':>10}")
    for L in args.lengths:
        width = P + min(L - P, m)
        for batch in args.batches:
            for ragged in (False, True):
                meta, score, v_norm, sig = _inputs(batch, L, ragged, dev)
                valid = meta.dense_valid if ragged else None

                def kernel(meta=meta, score=score, v_norm=v_norm, width=width):
                    return ats_select(score, v_norm, meta.dense_rows, meta.lengths, P, width, m)

                def reference(sig=sig, valid=valid):
                    return ats.select_sampling(sig, valid, P, num_samples=m)

                if args.check:
                    want = reference()
                    index, count = kernel()
                    assert torch.equal(count, want.count), (L, batch, ragged)
                    for b in range(batch):
                        c = int(count[b])
                        assert torch.equal(index[b, :c], want.index[b, :c]), (L, batch, ragged, b)
                us = _graph_us(kernel, args.calls, args.rounds)
                ref = "" if args.no_torch else f"{_eager_us(reference, 10, 5):10.1f}"
                print(f"{L:>4} {batch:>5} {'ragged' if ragged else 'full':>7} {us:10.1f} {ref}", flush=True)
                if args.profile:
                    print(f"{'':>19} kernels (us/call): {_kernel_breakdown(kernel)}", flush=True)


if __name__ == "__main__":
    main()
