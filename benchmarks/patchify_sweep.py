"""Launch configurations of the patchify kernel (``raggedvit.ops.patchify.CONFIG``) against PyTorch's
reshape / permute copy and Inductor's compiled copy, on ViT images (B, 3, 224, 224) fp16, patch 16.

Usage: ``PYTHONPATH=src python benchmarks/patchify_sweep.py [--batches 8,64,256] [--out DIR]``; prints
microseconds per call (CUDA events over many calls) and writes ``patchify-sweep.json``."""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
from pathlib import Path

import torch

from raggedvit.runtime.device import environment

op = importlib.import_module("raggedvit.ops.patchify")  # the module (raggedvit.ops.patchify is the function)


def time_us(fn, reps: int = 200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="8,64,256")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dev = torch.device("cuda")
    compiled = torch.compile(lambda x: op.patchify_reference(x, 16, 16).contiguous())
    default, rows = dict(op.CONFIG), []
    for b in map(int, args.batches.split(",")):
        x = torch.randn(b, 3, 224, 224, device=dev, dtype=torch.float16)
        want = op.patchify_reference(x, 16, 16)
        ideal = 2 * x.numel() * x.element_size() / 4.8e12 * 1e6  # read + write at the H200's 4.8 TB/s
        base = {"torch reshape/permute": time_us(lambda x=x: op.patchify_reference(x, 16, 16).contiguous()),
                "torch.compile": time_us(lambda x=x: compiled(x))}
        for name, us in base.items():
            rows.append(dict(batch=b, config=name, us=us))
            print(f"b{b:<4d} {name:34s} {us:8.1f} us", flush=True)
        for block_r, warps in itertools.product((32, 64, 128, 256, 512), (2, 4, 8)):
            op.CONFIG = dict(block_r=block_r, num_warps=warps)
            assert torch.equal(op.patchify(x, 16, 16), want)
            us = time_us(lambda x=x: op.patchify(x, 16, 16))
            rows.append(dict(batch=b, config=dict(op.CONFIG), us=us))
            print(f"b{b:<4d} block_r={block_r:<4d} warps={warps}   {us:8.1f} us "
                  f"({ideal:.1f} us at 4.8 TB/s)", flush=True)
        op.CONFIG = dict(default)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "patchify-sweep.json").write_text(json.dumps({"env": environment(dev), "default": default, "rows": rows},
                                                        indent=1))
    for b in map(int, args.batches.split(",")):
        mine = [r for r in rows if r["batch"] == b and isinstance(r["config"], dict)]
        best = min(mine, key=lambda r: r["us"])
        print(f"b{b}: best {best['config']} {best['us']:.1f} us; " + ", ".join(
            f"{r['config']} {r['us']:.1f} us" for r in rows if r["batch"] == b and isinstance(r["config"], str)))


if __name__ == "__main__":
    main()
