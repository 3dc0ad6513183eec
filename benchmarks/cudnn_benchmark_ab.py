"""Is ``dense_compiled`` in its best mode? The patch-embedding conv with cuDNN's default algorithm choice, with
``torch.backends.cudnn.benchmark = True`` (autotuned) and with channels-last images and conv weight (autotuned),
alone and inside the compiled dense ViT-Tiny (fp16, ``torch.compile(mode="reduce-overhead")``), on the GPU.

Usage: ``PYTHONPATH=src python benchmarks/cudnn_benchmark_ab.py [--batches 1,8,64,256] [--out DIR]``.
"""

from __future__ import annotations

import time

import torch
from live_rows_ab import gpu_sample

from raggedvit.bench.e2e_point import compiled_model
from raggedvit.bench.timing import graph_replay_us, write_json
from raggedvit.runtime.device import environment


def compiled_us(fn, x, dev, replays=100) -> float:
    """Microseconds per call of a reduce-overhead compiled ``fn`` (its own CUDA graphs), median of 3 rounds."""
    times = []
    for _ in range(3):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        for _ in range(replays):
            fn(x)
        torch.cuda.synchronize(dev)
        times.append((time.perf_counter() - t0) / replays * 1e6)
    return sorted(times)[1]


def conv_us(conv, x, dev) -> float:
    g = torch.cuda.CUDAGraph()
    with torch.no_grad():
        for _ in range(3):
            conv(x)
        torch.cuda.synchronize(dev)
        with torch.cuda.graph(g):
            conv(x)
    return graph_replay_us(g, dev)


CASES = ((torch.contiguous_format, False), (torch.contiguous_format, True), (torch.channels_last, True))


def main() -> None:
    args, dev, model, images = gpu_sample("1,8,64,256", 256)
    rows = []
    for fmt, bench in CASES:
        model = model.to(memory_format=fmt)  # the conv weight (the only 4-D parameter)
        torch.backends.cudnn.benchmark = bench
        layout = "channels_last" if fmt == torch.channels_last else "contiguous"
        for b in map(int, args.batches.split(",")):
            x = images[:b].to(dev, torch.float16).contiguous(memory_format=fmt)
            with torch.no_grad():
                conv = conv_us(model.patch_embed.proj, x, dev)
                cm = compiled_model(model)
                for _ in range(3):
                    cm(x)
                dense = compiled_us(cm, x, dev)
            rows.append(dict(batch=b, layout=layout, cudnn_benchmark=bench, conv_us=conv, dense_compiled_us=dense,
                             dense_compiled_images_per_s=b / dense * 1e6))
            print(f"b{b:<4} {layout:13} cudnn.benchmark={bench!s:5}  conv {conv:8.1f} us   "
                  f"dense_compiled {dense:8.1f} us {b / dense * 1e6:9.0f} img/s", flush=True)
    torch.backends.cudnn.benchmark = False
    write_json({"kind": "cudnn-benchmark-ab", "env": environment(dev), "rows": rows}, args.out, "cudnn-benchmark-ab")


if __name__ == "__main__":
    main()
