"""Is ``dense_compiled`` in its best mode? The dense ViT-Tiny (fp16) under ``torch.compile`` with
``mode="reduce-overhead"`` (the reference of every headline ratio: Inductor's default kernels, CUDA graphs)
against ``mode="max-autotune"`` (Triton GEMM templates autotuned against cuBLAS, CUDA graphs; minutes of
compilation per batch size), both in the memory format :class:`raggedvit.runtime.graphs.DenseCompiled` would
pick, on real photos. If max-autotune is faster, the reference should use it.

Usage: ``PYTHONPATH=src:benchmarks python benchmarks/dense_compile_modes_ab.py [--batches 1,8,64,256]
[--modes reduce-overhead,max-autotune] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from cudnn_benchmark_ab import compiled_us
from live_rows_ab import gpu_sample

from raggedvit.bench.timing import write_json
from raggedvit.runtime.device import environment
from raggedvit.runtime.graphs import MEMORY_FORMATS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="reduce-overhead,max-autotune")
    ap.add_argument("--formats", default="contiguous,channels_last")
    args, dev, model, images = gpu_sample("1,8,64,256", 256, ap)
    rows = []
    for name in args.formats.split(","):
        fmt = MEMORY_FORMATS[name]
        net = model.to(memory_format=fmt)  # the conv weight (the only 4-D parameter)
        for mode in args.modes.split(","):
            for b in map(int, args.batches.split(",")):
                x = images[:b].to(dev, torch.float16).contiguous(memory_format=fmt)
                torch._dynamo.reset()
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn = torch.compile(net, mode=mode, fullgraph=True, dynamic=False)
                    for _ in range(3):
                        fn(x)
                    torch.cuda.synchronize(dev)
                    compile_s = time.perf_counter() - t0
                    us = compiled_us(fn, x, dev)
                rows.append(dict(batch=b, mode=mode, memory_format=name, us=us, images_per_s=b / us * 1e6,
                                 compile_s=compile_s))
                print(f"b{b:<4} {name:13} {mode:16} {us:8.1f} us {b / us * 1e6:9.0f} img/s  "
                      f"(compile {compile_s:5.1f} s)", flush=True)
    write_json({"kind": "dense-compile-modes-ab", "env": environment(dev), "rows": rows}, args.out,
               "dense-compile-modes-ab")


if __name__ == "__main__":
    main()
