"""torch.compile / CUDA graphs / torch.export + AOTInductor of pruned ViTs on a GPU (issue 14).

For every method (``raggedvit.pruning.pruning_methods()`` + ``none``; fixed and adaptive variants, default
options otherwise), on the trained ViT-Tiny of ``raggedvit.sample_data`` (``$RAGGEDVIT_DATA``; sample photos
as inputs) or else timm ``deit_small_patch16_224`` with random weights (random images), fp16 on the GPU:

* ``eager``: the pruned model (reference logits and kept counts);
* ``graph``: raggedvit's own CUDA-graph capture (``raggedvit.models.graph.capture``);
* ``compile``: ``torch.compile(pruned, fullgraph=True)`` (default mode);
* ``reduce-overhead``: ``torch.compile(pruned, mode="reduce-overhead", fullgraph=True)``;
* ``aoti``: ``torch.export`` + ``torch._inductor.aoti_compile_and_package`` + ``aoti_load_package`` (packed); on
  CUDA the package's call is also captured in a CUDA graph and timed (``package_in_cuda_graph``).

Each records max |logit diff| vs eager, whether the kept counts per stage equal eager's (``last_stats``; not
available for AOTI), the compile/capture time and images/s per batch size. Every step runs in try/except and
records its error, so one failure never stops the run. Steps run in phases (cheap ones first: eager and
graph for every method, then compile, reduce-overhead, AOTI); once ``--budget`` seconds have passed, the
remaining steps are recorded as skipped.

Run (about 5-6 minutes on an H200)::

    PYTHONPATH=src python benchmarks/gpu_compile.py --out benchmarks/results

Writes ``gpu-compile-<gpu>-<time>.json`` and ``.md`` (the table is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch

import raggedvit
from raggedvit.pruning import pruning_methods

STEPS = ("eager", "graph", "compile", "reduce-overhead", "aoti")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results", help="output folder")
    p.add_argument("--batches", default="8,256", help="batch sizes (first: also the correctness batch)")
    p.add_argument("--methods", default=",".join(("none", *pruning_methods())))
    p.add_argument("--variants", default="fixed,adaptive")
    p.add_argument("--steps", default=",".join(STEPS),
                   help=f"subset of {','.join(STEPS)}; after eager and graph, phases run in this order")
    p.add_argument("--aoti-methods", default="evit:fixed,threshold_l2:adaptive",
                   help="method:variant pairs exported with AOTInductor (each costs a full compile)")
    p.add_argument("--compile-batches", default="",
                   help="batch sizes for torch.compile steps (default: all of --batches)")
    p.add_argument("--budget", type=float, default=330.0, help="seconds; later steps are skipped past it")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--model", default=None, help="timm model (random weights) instead of the trained ViT-Tiny")
    p.add_argument("--img-size", type=int, default=None, help="with --model: image size (smoke tests)")
    p.add_argument("--depth", type=int, default=None, help="with --model: blocks (smoke tests)")
    p.add_argument("--stages", default=None, help="stage blocks, e.g. 1,2 (smoke tests; default each method's)")
    return p.parse_args(argv)


def err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    tail = traceback.format_exception(e)[-2].strip().splitlines()[0] if traceback.format_exception(e) else ""
    return f"{type(e).__name__}: {lines[0][:400] if lines else ''} [{tail[:200]}]"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(fn, x, device, iters) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn(x)
        sync(device)
    return x.shape[0] * iters / (time.perf_counter() - t0)


_CHILD = """
import sys, time, torch, raggedvit  # the raggedvit import registers the ops the package calls
from raggedvit.models.export import GraphedPackage
io = torch.load(sys.argv[1])
run = torch._inductor.aoti_load_package(sys.argv[2])
x, iters = io["images"], int(sys.argv[3])
with torch.no_grad():
    y = run(x)
    y = (y[0] if isinstance(y, (list, tuple)) else y).float().cpu()
    for _ in range(3):
        run(x)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        run(x)
    sync()
res = {"logits": y, "ips": x.shape[0] * iters / (time.perf_counter() - t0)}
if x.is_cuda:  # the package's call captured in a CUDA graph (raggedvit's ops are capture-safe): GraphedPackage
    try:  # loads it again, single-threaded (the default runner's per-call CUDA-event query breaks a capture)
        del run
        graphed = GraphedPackage(sys.argv[2], x)
        yg = graphed(x, clone=True).float().cpu()
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(iters * 5):
                graphed.replay()
            torch.cuda.synchronize()
        res["ips_graph"] = x.shape[0] * iters * 5 / (time.perf_counter() - t0)
        res["graph_max_diff"] = (yg - y).abs().max().item()
    except Exception as e:  # noqa: BLE001
        res["graph_error"] = f"{type(e).__name__}: {e}"[:300]
torch.save(res, sys.argv[1])
"""


def run_package(path, images, stem, iters):
    """``(logits, images/s)`` of an AOTInductor package, loaded and timed in a child process (a crash in
    PyTorch's loader, e.g. the segfault torch 2.11 showed on a CUDA package, then fails this step only)."""
    import subprocess
    import sys

    io = stem.with_suffix(".io.pt")
    torch.save({"images": images}, io)
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _CHILD, str(io), str(path), str(iters)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"loading or running the package failed in a child process (exit {done.returncode}): "
                           f"{tail[-600:]}")
    res = torch.load(io)
    graph = {k: res[k] for k in ("ips_graph", "graph_max_diff", "graph_error") if k in res}
    return res["logits"], res["ips"], graph


def load(args, device, dtype):
    """(model, description, image source callable batch -> images)."""
    from raggedvit import sample_data

    root = None if args.model else sample_data.locate()
    if root is not None:
        model = sample_data.load_model(root)
        photos, _ = sample_data.load_images(model, range(min(256, len(sample_data.sample_files(root)))), root)
        desc = f"trained {sample_data.MODEL_NAME} ({root}), sample photos"

        def images(b):
            reps = -(-b // photos.shape[0])
            return photos.repeat(reps, 1, 1, 1)[:b].to(device=device, dtype=dtype)
    else:
        import timm

        name = args.model or "deit_small_patch16_224"
        kw = {k: v for k, v in (("img_size", args.img_size), ("depth", args.depth)) if v is not None}
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kw)
        desc = f"{name} {kw or ''} random weights, random images" + (
            "" if args.model else f" ({sample_data.missing_reason()})")
        size = model.patch_embed.img_size

        def images(b):
            g = torch.Generator().manual_seed(b)
            return torch.randn(b, 3, *size, generator=g).to(device=device, dtype=dtype)
    return model.to(device=device, dtype=dtype).eval(), desc, images


def kept_of(stats):
    return None if stats is None else [k.detach().clone() for k in stats.kept]


def same_kept(a, b):
    if a is None or b is None:
        return None
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    compile_batches = [int(b) for b in args.compile_batches.split(",")] if args.compile_batches else batches
    steps = [s for s in args.steps.split(",") if s]
    aoti_pairs = {tuple(p.split(":")) for p in args.aoti_methods.split(",") if p}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, model_desc, images = load(args, device, dtype)
    attention = "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "reference"
    stage_opt = {"stages": tuple(int(s) for s in args.stages.split(","))} if args.stages else {}
    calib = {}

    def needs(m, v):
        """What a method cannot run without: Threshold-L2 adaptive thresholds (calibrated on 64 inputs),
        DynamicViT predictors (random: speed only, no trained ones here); ToMe has no stages."""
        if m == "threshold_l2" and v == "adaptive":
            if "t" not in calib:
                calib["t"] = raggedvit.models.calibrate_thresholds(model, images(64), **stage_opt)
            return {"thresholds": calib["t"]}
        if m == "dynamicvit":
            return {"random_predictors": True}
        return {}

    configs = []
    for m in args.methods.split(","):
        for v in ([None] if m == "none" else args.variants.split(",")):
            try:
                opts = {} if v is None else {"variant": v, **({} if m == "tome" else stage_opt), **needs(m, v)}
                pruned = raggedvit.prune(model, m, attention=attention, **opts).eval()
                configs.append({"method": m, "variant": v or "-", "pruned": pruned, "rows": {}, "error": None})
            except Exception as e:  # noqa: BLE001
                configs.append({"method": m, "variant": v or "-", "pruned": None, "rows": {}, "error": err(e)})
    inputs = {b: images(b) for b in batches}
    check_b = batches[0]

    def over_budget():
        return time.perf_counter() - t_start > args.budget

    def record(cfg, step, **kw):
        cfg["rows"].setdefault(step, {}).update(kw)

    def run_step(cfg, step, fn):
        if cfg["pruned"] is None or step not in steps:
            return
        if over_budget():
            record(cfg, step, error=f"skipped: time budget of {args.budget:.0f} s used")
            return
        try:
            fn(cfg)
        except Exception as e:  # noqa: BLE001
            record(cfg, step, error=err(e), traceback="".join(traceback.format_exception(e))[-6000:])
        print(f"[{time.perf_counter() - t_start:6.1f} s] {cfg['method']} {cfg['variant']} {step}: "
              f"{ {k: v for k, v in cfg['rows'].get(step, {}).items() if k not in ('kept', 'traceback')} }", flush=True)

    def eager(cfg):
        p = cfg["pruned"]
        with torch.no_grad():
            cfg["ref"] = p(inputs[check_b]).float()
            cfg["ref_kept"] = kept_of(p.last_stats) if cfg["method"] != "none" else []
        record(cfg, "eager", max_diff=0.0, same_kept=True,
               kept_mean=[float(k.float().mean()) for k in cfg["ref_kept"]],
               ips={b: images_per_s(p, inputs[b], device, args.iters) for b in batches})

    def check(cfg, step, logits, kept):
        record(cfg, step, max_diff=(logits.float() - cfg["ref"]).abs().max().item(),
               same_top1=int((logits.float().argmax(-1) == cfg["ref"].argmax(-1)).sum()),
               same_kept=same_kept(kept, cfg["ref_kept"]) if kept is not None else None)

    def graph(cfg):
        from raggedvit.models.graph import capture

        ips = {}
        for b in batches:
            g = capture(cfg["pruned"], b, example=inputs[b])
            if b == check_b:
                with torch.no_grad():
                    logits = g(inputs[b], clone=True)
                check(cfg, "graph", logits, kept_of(g.stats))
                record(cfg, "graph", compile_s=g.warmup_s + g.capture_s)
            ips[b] = images_per_s(g, inputs[b], device, args.iters)
            del g
        record(cfg, "graph", ips=ips)

    def compiled(mode):
        key = mode or "compile"

        def step(cfg):
            torch._dynamo.reset()
            p = cfg["pruned"]
            fn = torch.compile(p, fullgraph=True, dynamic=False, mode=mode)
            ips, times = {}, {}
            for b in compile_batches:
                if over_budget() and b != compile_batches[0]:
                    ips[b] = "skipped: time budget"
                    continue
                t0 = time.perf_counter()
                with torch.no_grad():
                    for _ in range(3 if mode == "reduce-overhead" else 1):  # cudagraph trees: warm-up, record
                        out = fn(inputs[b])
                    sync(device)
                    times[b] = time.perf_counter() - t0
                    if b == check_b:
                        logits = out.float().clone()
                        st = p.last_stats
                        kept = kept_of(st) if st is not None else None
                        if cfg["method"] == "none" and st is not None:
                            kept = []
                        check(cfg, key, logits, kept)
                        record(cfg, key, stats_available=st is not None)
                ips[b] = images_per_s(fn, inputs[b], device, args.iters)
            record(cfg, key, compile_s=times, ips=ips)
        return step

    def aoti(cfg):
        from raggedvit.models.export import export_pruned, package_pruned

        if (cfg["method"], cfg["variant"]) not in aoti_pairs:
            record(cfg, "aoti", error="not selected (--aoti-methods)")
            return
        ips, times, captured = {}, {}, {}
        for b in batches[:1]:
            t0 = time.perf_counter()
            program = export_pruned(cfg["pruned"], images=inputs[b])
            t1 = time.perf_counter()
            stem = out_dir / f"gpu-compile-{cfg['method']}-{cfg['variant']}-b{b}"
            path = package_pruned(program, stem.with_suffix(".pt2"))
            times[b] = {"export_s": t1 - t0, "package_s": time.perf_counter() - t1}
            record(cfg, "aoti", compile_s=times)
            logits, ips[b], captured[b] = run_package(path, inputs[b], stem, args.iters)  # in a child process
            check(cfg, "aoti", logits.to(device), None)
            for f in (path, stem.with_suffix(".io.pt")):
                try:
                    os.remove(f)  # packages are large; the numbers are what matters
                except OSError:
                    pass
        record(cfg, "aoti", compile_s=times, ips=ips, stats_available=False, package_in_cuda_graph=captured)

    phases = {"eager": eager, "graph": graph, "compile": compiled(None),
              "reduce-overhead": compiled("reduce-overhead"), "aoti": aoti}
    order = ["eager", "graph"] + [s for s in steps if s not in ("eager", "graph")]  # the rest in --steps order
    phases = [(name, phases[name]) for name in order if name in phases]
    for name, fn in phases:
        for cfg in configs:
            if name != "eager" and "ref" not in cfg:
                if cfg["pruned"] is not None and name in steps:
                    record(cfg, name, error="no eager reference")
                continue
            run_step(cfg, name, fn)
    write(args, out_dir, configs, batches, model_desc, device, dtype, time.perf_counter() - t_start)
    return 0


def write(args, out_dir, configs, batches, model_desc, device, dtype, total_s):
    from raggedvit.runtime.device import environment

    try:
        env = environment(device)
    except Exception as e:  # noqa: BLE001
        env = {"error": err(e)}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for cfg in configs:
        for step in STEPS:
            r = cfg["rows"].get(step)
            if r is None and cfg["error"] is None:
                continue
            rows.append({"method": cfg["method"], "variant": cfg["variant"], "step": step,
                         **(r or {"error": cfg["error"]})})
    doc = {"kind": "gpu_compile", "env": env, "config": {**vars(args), "model": model_desc, "dtype": str(dtype),
           "batches": batches, "total_s": total_s}, "rows": rows}
    path = out_dir / f"gpu-compile-{slug}-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    lines = [f"# torch.compile / export on {gpu}", "", f"{model_desc}; {dtype}; torch {torch.__version__}; "
             f"total {total_s:.0f} s", "",
             "| method | variant | step | max diff | same kept | compile s | "
             + " | ".join(f"img/s b{b}" for b in batches) + " | error |",
             "|---|---|---|---:|---|---:|" + "---:|" * len(batches) + "---|"]
    for r in rows:
        cs = r.get("compile_s")
        if isinstance(cs, dict):
            cs = sum(v if isinstance(v, (int, float)) else sum(v.values()) for v in cs.values())
        ips = r.get("ips") or {}
        cells = [f"{ips[b]:,.0f}" if isinstance(ips.get(b), (int, float)) else str(ips.get(b, "-")) for b in batches]
        md = r.get("max_diff")
        lines.append(f"| {r['method']} | {r['variant']} | {r['step']} | {'-' if md is None else f'{md:.2e}'} | "
                     f"{r.get('same_kept', '-')} | {'-' if cs is None else f'{cs:.1f}'} | " + " | ".join(cells)
                     + f" | {(r.get('error') or '')[:160]} |")
        for b, g in (r.get("package_in_cuda_graph") or {}).items():  # GraphedPackage: the package in a CUDA graph
            if not g:  # not on CUDA
                continue
            gd, gi = g.get("graph_max_diff"), g.get("ips_graph")
            cells = [f"{gi:,.0f}" if isinstance(gi, (int, float)) and bb == b else "-" for bb in batches]
            lines.append(f"| {r['method']} | {r['variant']} | aoti in CUDA graph | "
                         f"{'-' if gd is None else f'{gd:.2e} (vs aoti)'} | - | - | " + " | ".join(cells)
                         + f" | {(g.get('graph_error') or '')[:160]} |")
    table = "\n".join(lines)
    (out_dir / f"gpu-compile-{slug}-{stamp}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    raise SystemExit(main())
