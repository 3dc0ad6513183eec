"""Launch-configuration sweep of ``ragged_attention`` on the GPU (fp16): tile sizes, warps and pipeline
stages for a head dim, on packed batches whose lengths are those of pruned ViT stages (ViT-Tiny: 3 heads of
64; DeiT-S: 6 heads of 64), next to cuDNN/flash SDPA on the dense batch at the longest length and torch's
FlashAttention-2 varlen kernel on the same packed batch (``fa2_varlen``).

``raggedvit.ops.attention._config`` picks one configuration per (dtype, head dim), never per length; the
``default`` row is its choice. Times are CUDA-graph replays (``triton.testing.do_bench_cudagraph``). Usage:
``PYTHONPATH=src python benchmarks/attention_sweep.py [--batches 64,256] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from linear_sweep import report, save
from triton.testing import do_bench_cudagraph

from raggedvit.ops import attention as A
from raggedvit.ops.backends import get_backend

CANDIDATES = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (128, 64, 8, 2), (128, 64, 4, 2), (128, 32, 8, 2),
              (64, 128, 4, 2), (64, 128, 8, 2), (32, 64, 4, 2), (128, 128, 8, 2), (64, 64, 8, 2), (64, 64, 4, 1)]
"""(BLOCK_M, BLOCK_N, num_warps, num_stages)."""

LENGTHS = {"197 (dense)": (197, 197), "~178 (stage 1)": (150, 197), "~136 (stage 3)": (90, 180)}
"""label -> (low, high): lengths drawn uniformly in [low, high] per image."""


def set_config(dtype, d, cfg):
    """Install ``cfg`` (None: the library's default) as the launch variant of ``dtype`` / head dim ``d``."""
    A.launcher.cache.clear()
    if cfg is None:
        A.VARIANTS[dtype][d] = A._variants()[dtype][d]
        return
    bm, bn, w, s = cfg
    block_d = max(16, 1 << (d - 1).bit_length())
    A.VARIANTS[dtype][d] = (bm, {"num_warps": w, "num_stages": s}, d ** -0.5 * A._LOG2E,
                            (d, block_d, bm, bn, False, False))


def time_call(fn) -> tuple[float, torch.Tensor]:
    """(microseconds per CUDA-graph replay of ``fn()``, one eager result)."""
    y = fn()
    return do_bench_cudagraph(fn, rep=30) * 1e3, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="64,256")
    p.add_argument("--heads", default="3,6")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    dev, dt, d = torch.device("cuda"), torch.float16, 64
    rows, t0 = [], time.perf_counter()
    for h in map(int, args.heads.split(",")):
        for b in map(int, args.batches.split(",")):
            for label, (lo, hi) in LENGTHS.items():
                g = torch.Generator().manual_seed(b + lo)
                lens = torch.randint(lo, hi + 1, (b,), generator=g)
                cu = torch.zeros(b + 1, dtype=torch.int32)
                cu[1:] = lens.cumsum(0)
                total, mx = int(cu[-1]), int(lens.max())
                cu = cu.to(dev)
                q, k, v = (torch.randn(total, h, d, device=dev, dtype=dt) for _ in range(3))
                flop = 4 * d * h * float((lens.double() ** 2).sum())
                ref = None
                dense = [torch.randn(b, h, mx, d, device=dev, dtype=dt) for _ in range(3)]
                sdpa_us, _ = time_call(lambda: F.scaled_dot_product_attention(*dense))  # noqa: B023
                rows.append({"heads": h, "batch": b, "lengths": label, "config": f"sdpa dense at {mx}",
                             "us": sdpa_us})
                fa2, fa2_us = get_backend("fa2_varlen"), float("nan")
                if fa2.unavailable_reason(dev) is None:
                    fa2_us, _ = time_call(lambda: fa2(q, k, v, cu, mx))  # noqa: B023
                    rows.append({"heads": h, "batch": b, "lengths": label, "config": "fa2_varlen (torch's FA2)",
                                 "us": fa2_us, "tflops": flop / fa2_us / 1e6})
                for cfg in [None] + CANDIDATES:
                    set_config(dt, d, cfg)
                    try:
                        us, out = time_call(lambda: A.ragged_attention(q, k, v, cu, mx))  # noqa: B023
                        ref = out if ref is None else ref
                        err = (out.float() - ref.float()).abs().max().item()
                        rows.append({"heads": h, "batch": b, "lengths": label, "us": us, "err_vs_default": err,
                                     "tflops": flop / us / 1e6,
                                     "config": "default " + str(A._config(dt, d)[1:]) if cfg is None else str(cfg)})
                    except Exception as e:  # noqa: BLE001
                        rows.append({"heads": h, "batch": b, "lengths": label, "config": str(cfg), "us": None,
                                     "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    finally:
                        set_config(dt, d, None)
                mine = [r for r in rows if r["heads"] == h and r["batch"] == b and r["lengths"] == label
                        and not r["config"].startswith("fa2")]
                report(t0, f"H={h} b{b} {label:15s}", mine, "sdpa", "sdpa dense", sdpa_us, "err_vs_default")
                print(f"        fa2_varlen on the packed batch {fa2_us:7.1f} us", flush=True)
    save(args, dev, rows, "attention-sweep")


if __name__ == "__main__":
    main()
