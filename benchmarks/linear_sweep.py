"""Launch-configuration sweep of ``ragged_linear`` on the GPU: every candidate tile/warp/stage/TMA setting on
the four token-wise GEMMs of a ViT block (qkv, proj + residual, fc1 + GELU, fc2 + residual), at a capacity of
``batch x 197`` rows with 85 % of them live (an adaptive stage), next to cuBLAS on the live rows and on
every capacity row (the bias add, GELU or residual add then a kernel of its own, as timm runs them).

Times are CUDA-graph replays of the single call (``triton.testing.do_bench_cudagraph``), so host launch cost
is out. ``ragged_linear``'s own choice (``raggedvit.ops.linear._config``) is the ``default`` row. Usage:
``PYTHONPATH=src python benchmarks/linear_sweep.py [--widths 192,384] [--batches 64,256] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench_cudagraph

from raggedvit.bench.timing import write_json
from raggedvit.ops import linear as L
from raggedvit.runtime.device import environment

C = L.Config
CANDIDATES = {
    "128x128x64 w8 s4 tma p1": C(128, 128, 64, 8, 4, 1, True),
    "128x64x64 w4 s4 tma p1": C(128, 64, 64, 4, 4, 1, True),
    "128x64x64 w4 s4 tma p2": C(128, 64, 64, 4, 4, 2, True),
    "128x64x64 w4 s4 tma": C(128, 64, 64, 4, 4, 0, True),
    "128x64x64 w8 s4 tma p1": C(128, 64, 64, 8, 4, 1, True),
    "128x64x64 w4 s3 ptr": C(128, 64, 64, 4, 3, 0, False),
    "256x64x64 w8 s3 tma p1": C(256, 64, 64, 8, 3, 1, True),
    "64x128x64 w4 s4 tma p1": C(64, 128, 64, 4, 4, 1, True),
    "64x64x64 w4 s3 ptr": C(64, 64, 64, 4, 3, 0, False),
    "64x64x64 w4 s4 tma p2": C(64, 64, 64, 4, 4, 2, True),
    "128x256x64 w8 s3 tma p1": C(128, 256, 64, 8, 3, 1, True),
    "256x128x64 w8 s3 tma p1": C(256, 128, 64, 8, 3, 1, True),
    "128x128x64 w8 s3 ptr": C(128, 128, 64, 8, 3, 0, False),
    "128x128x64 w8 s4 tma": C(128, 128, 64, 8, 4, 0, True),
    "128x128x32 w4 s5 tma p1": C(128, 128, 32, 4, 5, 1, True),
    "128x64x32 w4 s5 tma p1": C(128, 64, 32, 4, 5, 1, True),
}


def layers(c: int):
    """(name, N, K, gelu, residual) of a block's token-wise GEMMs at width ``c``."""
    return [("qkv", 3 * c, c, False, False), ("proj+res", c, c, False, True), ("fc1+gelu", 4 * c, c, True, False),
            ("fc2+res", c, 4 * c, False, True)]


def sweep_layer(c: int, b: int, live_share: float, name: str, n: int, k: int, gelu: bool, res: bool) -> list[dict]:
    """Rows ``{width, batch, layer, config, us, tflops, max_err}`` of one GEMM: cuBLAS, then every candidate."""
    dev, dt = torch.device("cuda"), torch.float16
    M = b * 197
    live_n = int(M * live_share)
    live = torch.tensor([live_n], dtype=torch.int32, device=dev)
    x = torch.randn(M, k, device=dev, dtype=dt)
    w = torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5
    bias = torch.randn(n, device=dev, dtype=dt)
    r = torch.randn(M, n, device=dev, dtype=dt) if res else None
    out = torch.empty(M, n, device=dev, dtype=dt)
    ref = F.linear(x[:live_n].float(), w.float(), bias.float())
    ref = F.gelu(ref) if gelu else ref + (r[:live_n].float() if res else 0)
    flop = 2 * live_n * n * k
    rows = []

    def add(label, us, err=None):
        rows.append({"width": c, "batch": b, "layer": name, "config": label, "us": us,
                     "tflops": None if us is None else flop / us / 1e6, "max_err": err})

    def timm_like(rows_n):
        def f():
            y = F.linear(x[:rows_n], w, bias)
            return F.gelu(y) if gelu else (r[:rows_n] + y if res else y)
        return f

    def ours():
        L.ragged_linear(x, w, bias, live, gelu=gelu, residual=r, out=out)

    for label, rows_n in (("cublas live rows", live_n), ("cublas all rows", M)):
        add(label, do_bench_cudagraph(timm_like(rows_n), rep=30) * 1e3)
    default_config = L._config
    for label, cfg in [(f"default {default_config(dt, M, n, k, True)}", None)] + list(CANDIDATES.items()):
        L._config = default_config if cfg is None else (lambda *a, _c=cfg: _c)
        try:
            out.fill_(float("nan"))
            ours()
            err = (out[:live_n].float() - ref).abs().max().item()
            add(label, do_bench_cudagraph(ours, rep=30) * 1e3, err)
        except Exception as e:  # noqa: BLE001
            add(label, None, f"{type(e).__name__}: {str(e)[:200]}")
        finally:
            L._config = default_config
    return rows


def report(t0: float, head: str, rows: list[dict], reference: str, ref_label: str, ref_us: float,
           err_key: str) -> None:
    """Print one shape's line: the library's default, the fastest of our configurations (rows whose config
    starts with ``reference``, another library's, and failed ones are not candidates) and the reference."""
    timed = [r for r in rows if r.get("us") is not None and not r["config"].startswith(reference)]
    best = min(timed, key=lambda r: r["us"])
    dflt = next(r for r in rows if r["config"].startswith("default"))
    print(f"[{time.perf_counter() - t0:5.0f} s] {head} default {dflt['us']:7.1f} us  best {best['us']:7.1f} us "
          f"({best['config']}, err {best[err_key]:.1e})  {ref_label} {ref_us:7.1f} us", flush=True)


def save(args, dev, rows: list[dict], kind: str) -> None:
    path = write_json({"env": environment(dev), "args": vars(args), "rows": rows}, args.out, kind)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="192,384")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--live", type=float, default=0.85, help="live share of the capacity rows")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    dev = torch.device("cuda")
    rows, t0 = [], time.perf_counter()
    for c in map(int, args.widths.split(",")):
        for b in map(int, args.batches.split(",")):
            for name, n, k, gelu, res in layers(c):
                mine = sweep_layer(c, b, args.live, name, n, k, gelu, res)
                rows += mine
                cub = next(r for r in mine if r["config"] == "cublas all rows")
                report(t0, f"C={c} b{b} {name:9s}", mine, "cublas", "cublas all rows", cub["us"], "max_err")
    save(args, dev, rows, "linear-sweep")


if __name__ == "__main__":
    main()
