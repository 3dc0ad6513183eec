"""Where the device time of a pruned forward goes: torch.profiler kernel totals per setting (GPU only).

Runs the trained ViT-Tiny (raggedvit.sample_data) on real photos, fp16, the packed layout (eager and sync-free:
the kernels are the ones its CUDA graph replays) and timm's dense forward, and prints, per setting, the device
time per forward grouped by kernel family, then the largest kernels. ``--padded-compiled`` also profiles each
setting as the padded baseline in its best mode: ``layout="padded", padding="static"`` under ``torch.compile``
(default mode: the kernels its reduce-overhead CUDA graph replays; the dense model compiled for ``none``), to
see which of its kernels Inductor fused. Usage:
``PYTHONPATH=src python benchmarks/profile_forward.py [--batches 64,256] [--settings 0,5] [--padded-compiled]
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from live_rows_ab import gpu_sample
from torch.profiler import ProfilerActivity, profile

import raggedvit
from raggedvit.models import calibrate_thresholds

SETTINGS = [("none", {}), ("evit", dict(variant="fixed", keep_rate=0.8)), ("ats", dict(variant="fixed", keep_rate=0.9)),
            ("ats", dict(variant="adaptive")), ("evit", dict(variant="adaptive", mass=0.9)),
            ("threshold_l2", dict(variant="adaptive", calibrate=0.85)), ("tome", dict(variant="fixed", r=4)),
            ("evit", dict(variant="fixed")), ("evit", dict(variant="adaptive"))]  # 7, 8: EViT's defaults
FAMILIES = [("merge", r"tome|merge|match"), ("attention", r"attn|attention|fmha|flash"),
            ("gemm", r"gemm|sm90|cutlass|linear|matmul|nvjet|cublas|addmm|bmm|_mm_|_mm$"),
            ("layernorm", r"layer_norm|layernorm"), ("select", r"select|sample|ats|cdf|topk|sort|cls"),
            ("compact", r"compact|gather|scatter|index"),
            ("elementwise", r"elementwise|vectorized|add|mul|gelu|copy|cat")]


def family(name: str) -> str:
    """Kernel family of a kernel name (first matching pattern of :data:`FAMILIES`)."""
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(map(str, range(len(SETTINGS)))),
                    help="indices into SETTINGS, comma-separated")
    ap.add_argument("--padded-compiled", action="store_true",
                    help="also profile the padded layout (static capacity) under torch.compile")
    args, dev, model, images = gpu_sample("64,256", 320, ap)
    calib, images = images[:64].to(dev, torch.float16), images[64:]
    out = {}
    for b in map(int, args.batches.split(",")):
        x = images[:b].to(dev, torch.float16)
        for method, opts in (SETTINGS[int(i)] for i in args.settings.split(",")):
            opts = dict(opts)
            if "calibrate" in opts:  # Threshold-L2 adaptive: thresholds from 64 other photos
                opts["thresholds"] = calibrate_thresholds(model, calib, keep_rate=opts.pop("calibrate"))
            runs = [("packed", model if method == "none" else raggedvit.prune(model, method, **opts).eval())]
            if args.padded_compiled:
                torch._dynamo.reset()  # a new model per setting; the same forward code object (recompile limit)
                padded = model if method == "none" else raggedvit.prune(model, method, layout="padded",
                                                                         padding="static", **opts).eval()
                runs.append(("padded_compiled", torch.compile(padded, fullgraph=True, dynamic=False)))
            for layout, net in runs:
                out.update(_profile(net, x, f"b{b} {method} {layout} " + " ".join(
                    f"{k}={v}" for k, v in opts.items() if k != "thresholds")))
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "profile-forward.json").write_text(json.dumps(out, indent=1))


def _profile(net, x: torch.Tensor, key: str, reps: int = 10) -> dict:
    """Device time per forward of ``net(x)`` by kernel family and its largest kernels; prints them."""
    with torch.no_grad():
        for _ in range(3):
            net(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                net(x)
            torch.cuda.synchronize()
    fams, kern = defaultdict(float), defaultdict(lambda: [0.0, 0.0])
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t <= 0 or e.key.startswith("cuda"):
            continue
        fams[family(e.key)] += t / reps
        kern[e.key][0] += t / reps
        kern[e.key][1] += e.count / reps
    total = sum(fams.values())
    ranked = sorted(kern.items(), key=lambda kv: -kv[1][0])
    top = ranked[:25]
    print(f"\n== {key}: {total:.0f} us device time per forward")
    print("   " + ", ".join(f"{f} {t:.0f}" for f, t in sorted(fams.items(), key=lambda kv: -kv[1])))
    for k, (us, n) in top:
        print(f"   {us:8.1f} us {n:5.0f} calls  {k[:100]}")
    return {key: {"total_us": total, "families": dict(fams),
                  "kernels": [{"kernel": k[:160], "us": v[0], "calls": v[1]} for k, v in ranked]}}


if __name__ == "__main__":
    main()
