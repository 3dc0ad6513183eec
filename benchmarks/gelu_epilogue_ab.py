"""A/B of the GELU epilogue of ``ragged_linear`` (fc1 + GELU, the one token-wise GEMM that runs as our Triton
kernel on every packed buffer): the shipped one (:func:`raggedvit.kernels.linear._gelu`: Abramowitz & Stegun's
erf folded into ``Phi``, PTX approximate reciprocal and exp2) against the one before it (``0.5 x (1 + erf(x /
sqrt 2))`` with the same erf, one exp and one division: ``rational``), that form with ``tl.erf`` (libdevice
``erff``) and no GELU at all (the GEMM + bias: the bound), at each launch configuration of a short list.

Each variant but the shipped one is the shipped kernel source with its GELU line replaced, imported from a
file under ``--out`` and launched through ``ragged_linear`` itself (its launcher and ``_config`` swapped), so
everything else is the shipped code. Times are CUDA-graph replays of one call
(``triton.testing.do_bench_cudagraph``); errors are against the fp32 GELU of the fp32 product. Usage:
``PYTHONPATH=src python benchmarks/gelu_epilogue_ab.py [--batches 8,64,256] [--widths 192,384] [--out DIR]``.
``rational_launcher()`` serves whole-forward A/Bs (``benchmarks/live_rows_ab.py``, mode ``auto-rational-gelu``).
(Run ``-032130`` of 2026-12-01 measured, before the change, ``folded`` = the shipped form with ``/`` and
``tl.exp2``, and ``folded-asm`` = the shipped form.)
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from linear_sweep import CANDIDATES
from triton.testing import do_bench_cudagraph

from raggedvit.bench.timing import write_json
from raggedvit.kernels import linear as K
from raggedvit.ops import linear as L
from raggedvit.ops.launch import DirectLauncher
from raggedvit.runtime.device import environment

LINE = "acc = _gelu(acc, FAST_MATH)"
ERF = """

@triton.jit
def _erf(x):
    a = tl.abs(x)
    t = tl.fdiv(tl.full(a.shape, 1.0, tl.float32), 1.0 + 0.3275911 * a)
    p = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    y = 1.0 - p * tl.exp(-a * a)
    return tl.where(x >= 0, y, -y)
"""
# name -> (replacement of LINE, helper source appended to the module); None: the shipped kernel
VARIANTS = {"shipped": None, "rational": ("acc = 0.5 * acc * (1.0 + _erf(acc * 0.7071067811865476))", ERF),
            "libdevice": ("acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))", "")}
CONFIGS = {name: CANDIDATES[name] for name in ("128x128x64 w8 s4 tma p1", "128x64x64 w4 s4 tma p2",
                                               "128x256x64 w8 s3 tma p1")}
CONFIGS["128x128x64 w8 s3 tma p2"] = L.Config(128, 128, 64, 8, 3, 2, True)


def variant_launchers(out: Path, names=None) -> dict[str, DirectLauncher]:
    """One launcher per GELU variant (``names``, default all), from a copy of the shipped kernel module with its
    GELU line replaced (the shipped one: ``ragged_linear``'s own launcher)."""
    src = inspect.getsource(K)
    if src.count(LINE) != 1:
        raise RuntimeError(f"expected one {LINE!r} in raggedvit.kernels.linear")
    launchers = {}
    for name in names or VARIANTS:
        if VARIANTS[name] is None:
            launchers[name] = L.launcher
            continue
        line, helper = VARIANTS[name]
        path = out / f"_gelu_variant_{name.replace('-', '_')}.py"
        path.write_text(src.replace(LINE, line) + helper)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        launchers[name] = DirectLauncher(mod.ragged_linear_fwd, "ragged_linear")
    return launchers


def rational_launcher(out: Path) -> DirectLauncher:
    """A ``ragged_linear`` launcher whose GELU is the previous ``0.5 x (1 + erf(x / sqrt 2))`` (files under ``out``)."""
    return variant_launchers(out, ["rational"])["rational"]


def bench_shape(c: int, b: int, share: float, launchers: dict[str, DirectLauncher]) -> tuple[list[dict], str]:
    """Rows of one fc1 shape (width ``c``, ``b x 197`` capacity rows, ``share`` of them live) and its line."""
    dev, dt = torch.device("cuda"), torch.float16
    n, k, M = 4 * c, c, b * 197
    live_n = max(1, int(M * share))
    live = torch.tensor([live_n], dtype=torch.int32, device=dev)
    x = torch.randn(M, k, device=dev, dtype=dt)
    w = torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5
    bias = torch.randn(n, device=dev, dtype=dt)
    y = torch.empty(M, n, device=dev, dtype=dt)
    ref = F.gelu(F.linear(x[:live_n].float(), w.float(), bias.float()))
    cub = do_bench_cudagraph(lambda: F.gelu(F.linear(x[:live_n], w, bias)), rep=30) * 1e3
    shipped_launcher, shipped_config = L.launcher, L._config
    rows, us_of = [], {}
    try:
        for cname, cfg in [("default", None)] + list(CONFIGS.items()):
            L._config = shipped_config if cfg is None else (lambda *a, _c=cfg: _c)
            label = f"default {shipped_config(dt, M, n, k, True)}" if cfg is None else cname
            for vname in list(VARIANTS) + ["no gelu"]:
                L.launcher = launchers.get(vname, launchers["shipped"])
                gelu = vname != "no gelu"

                def fn(gelu=gelu):
                    L.ragged_linear(x, w, bias, live, gelu=gelu, out=y)
                try:
                    y.fill_(float("nan"))
                    fn()
                    err = (y[:live_n].float() - ref).abs().max().item() if gelu else None
                    us = do_bench_cudagraph(fn, rep=30) * 1e3
                except Exception as e:  # noqa: BLE001
                    us, err = None, f"{type(e).__name__}: {str(e)[:160]}"
                rows.append({"width": c, "batch": b, "live": share, "config": label, "variant": vname, "us": us,
                             "max_err": err})
                us_of[(cname, vname)] = us
    finally:
        L.launcher, L._config = shipped_launcher, shipped_config
    rows.append({"width": c, "batch": b, "live": share, "config": "cublas + gelu kernel (live rows)",
                 "variant": "torch", "us": cub, "max_err": None})

    def fmt(v):
        return "   -  " if v is None else f"{v:6.1f}"
    best = {v: min((u for (_, vn), u in us_of.items() if vn == v and u is not None), default=None)
            for v in list(VARIANTS) + ["no gelu"]}
    names = list(VARIANTS) + ["no gelu"]
    default = " ".join(f"{v} {fmt(us_of[('default', v)])}" for v in names)
    fastest = " ".join(f"{v} {fmt(best[v])}" for v in names)
    line = f"C={c} b{b:<3d} live {share:.2f} | default: {default} | best: {fastest} | cublas+gelu {cub:6.1f} us"
    return rows, line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="8,64,256")
    p.add_argument("--widths", default="192,384")
    p.add_argument("--live", default="1.0,0.85", help="live shares of the capacity rows")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    launchers = variant_launchers(out)
    rows, t0 = [], time.perf_counter()
    for c in map(int, args.widths.split(",")):
        for b in map(int, args.batches.split(",")):
            for share in map(float, args.live.split(",")):
                mine, line = bench_shape(c, b, share, launchers)
                rows += mine
                print(f"[{time.perf_counter() - t0:4.0f} s] {line}", flush=True)
    path = write_json({"env": environment(torch.device("cuda")), "args": vars(args), "rows": rows}, args.out,
                      "gelu-epilogue-ab")
    for f in out.glob("_gelu_variant_*.py"):
        f.unlink()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
