"""Probe: can CUDA-graph conditional nodes let cuBLAS skip the unused rows of an adaptive stage's buffer?

The adaptive tax (docs/results.md): a packed buffer after an adaptive stage has a static capacity (197 rows
per image) and fewer live rows; cuBLAS inside a static graph computes every row, our Triton GEMMs skip the
unused ones but are slower per row. Capacity buckets would capture the layers once per bucket size (a
fraction of the capacity) under an IF node each, and run the one bucket that holds the live rows.

This times, per CUDA-graph replay, nine ViT-Tiny blocks' four GEMMs (qkv 192->576, proj 192->192, fc1
192->768, fc2 768->192; no epilogues) on a buffer of ``batch x 197`` rows with a given live share:
``full``: cuBLAS over every row; ``buckets-N``: cuBLAS over the smallest of N equal buckets that holds the
live rows, one IF node per bucket and block (``torch.cuda.CUDAGraph.begin_capture_to_if_node``, torch >= 2.6
with CUDA >= 12.4); ``triton``: raggedvit's ``ragged_linear`` on the live rows. Checks the bucketed outputs
against ``full`` on the live rows. Usage: ``PYTHONPATH=src python benchmarks/conditional_probe.py
[--batches 64,256] [--live 0.43,0.62,0.81] [--buckets 2,4,8] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from raggedvit.bench.timing import graph_replay_us
from raggedvit.ops.linear import ragged_linear
from raggedvit.runtime.device import environment

SHAPES = [(192, 576), (192, 192), (192, 768), (768, 192)]  # (K, N): qkv, proj, fc1, fc2
BLOCKS = 9


def _layers(rows: int, dev) -> tuple[list, list, list]:
    """Inputs ``(rows, K)``, weights ``(N, K)``, biases and outputs ``(rows, N)`` of the four GEMMs."""
    g = torch.Generator(device=dev).manual_seed(0)
    xs = [torch.randn(rows, k, device=dev, dtype=torch.float16, generator=g) for k, _ in SHAPES]
    ws = [torch.randn(n, k, device=dev, dtype=torch.float16, generator=g) * k ** -0.5 for k, n in SHAPES]
    bs = [torch.randn(n, device=dev, dtype=torch.float16, generator=g) for _, n in SHAPES]
    return xs, ws, bs


def _capture(body) -> torch.cuda.CUDAGraph:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        body()  # warm-up (cuBLAS handles, Triton compiles)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    return g


def probe_batch(batch: int, shares: list[float], buckets: list[int], has_if: bool, dev) -> list[dict]:
    """Time every pipeline at ``batch`` for each live share; print a line per share."""
    M = batch * 197
    xs, ws, bs = _layers(M, dev)
    ys = [torch.empty(M, n, device=dev, dtype=torch.float16) for _, n in SHAPES]
    live_t = torch.zeros(1, dtype=torch.int32, device=dev)

    def full():
        for _ in range(BLOCKS):
            for x, w, b, y in zip(xs, ws, bs, ys):
                torch.addmm(b, x, w.t(), out=y)

    def triton():
        for _ in range(BLOCKS):
            for x, w, b, y in zip(xs, ws, bs, ys):
                ragged_linear(x, w, b, live_t, out=y)

    def bucketed(caps: list[int], lo: torch.Tensor, hi: torch.Tensor, preds: torch.Tensor):
        torch.logical_and(live_t > lo, live_t <= hi, out=preds)
        capturing = torch.cuda.is_current_stream_capturing()  # the warm-up runs every bucket
        for _ in range(BLOCKS):
            for i, cap in enumerate(caps):
                if capturing:
                    graph = torch.cuda.CUDAGraph.get_currently_capturing_graph()
                    graph.begin_capture_to_if_node(preds[i])
                for x, w, b, y in zip(xs, ws, bs, ys):
                    torch.addmm(b, x[:cap], w.t(), out=y[:cap])
                if capturing:
                    graph.end_capture_to_conditional_node()

    graphs = {"full": _capture(full), "triton": _capture(triton)}
    for nb in buckets if has_if else []:
        caps = [-(-M * (i + 1) // nb) for i in range(nb)]
        bounds = (torch.tensor([0] + caps[:-1], device=dev), torch.tensor(caps, device=dev),
                  torch.zeros(nb, dtype=torch.bool, device=dev))
        try:
            graphs[f"buckets-{nb}"] = _capture(lambda caps=caps, bounds=bounds: bucketed(caps, *bounds))
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"  buckets-{nb}: capture failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    rows = []
    for share in shares:
        live = int(M * share)
        live_t.fill_(live)
        graphs["full"].replay()
        torch.cuda.synchronize()
        want = [y[:live].clone() for y in ys]
        line = [f"b{batch:<4d} live {share:.2f}"]
        for name, g in graphs.items():
            for y in ys:
                y.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            err = max((y[:live].float() - ref.float()).abs().max().item() for y, ref in zip(ys, want))
            us = graph_replay_us(g, dev, replays=50)
            rows.append(dict(batch=batch, live_share=share, live_rows=live, rows=M, pipeline=name, us=us,
                             max_err_vs_full=err))
            line.append(f"{name} {us:7.1f} us (err {err:.1e})")
        print("  ".join(line), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--live", default="0.43,0.62,0.81", help="live shares of the capacity rows")
    ap.add_argument("--buckets", default="2,4,8")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dev = torch.device("cuda")
    has_if = hasattr(torch.cuda.CUDAGraph, "begin_capture_to_if_node")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}: begin_capture_to_if_node "
          f"{'available' if has_if else 'missing'}", flush=True)
    shares = [float(v) for v in args.live.split(",")]
    buckets = [int(v) for v in args.buckets.split(",")]
    rows = [r for b in map(int, args.batches.split(",")) for r in probe_batch(b, shares, buckets, has_if, dev)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "conditional-probe.json").write_text(json.dumps(dict(env=environment(dev), blocks=BLOCKS,
                                                                shapes=SHAPES, rows=rows), indent=1))


if __name__ == "__main__":
    main()
