"""``raggedvit bench e2e``: images/s of whole pruned DeiT forwards, every pipeline side by side.

Pipelines (one grid point = model, image size, method, variant, keep rate, batch; the same input images
for every pipeline of a point):

* ``dense`` / ``dense_graph``: timm's own forward, eager / CUDA graph (no pruning).
* ``padded_sdpa``: the paper's baseline (``prune(layout="padded")``: kept tokens padded to the batch maximum,
  SDPA with a key-padding mask) in its best mode: CUDA graph when every stage has an exact count (fixed
  variants), else eager (adaptive stages read the batch maximum back: one sync per stage). The reference
  for ``max_logit_diff``.
* ``packed_fa2`` (eager) / ``packed_fa2_graph``, ``packed_varlen_attn``, ``packed_nested``: the packed layout
  with torch's FlashAttention-2 varlen, ``varlen_attn`` and NestedTensor SDPA (eager; nested only up to
  ``--nested-max-batch``).
* ``raggedvit_eager`` / ``raggedvit_graph``: the packed layout with raggedvit's Triton kernel, eager and
  captured whole (:mod:`raggedvit.models.graph`).

Every packed pipeline (FA2, varlen_attn, NestedTensor and raggedvit alike) runs ``prune(live_rows=...)`` as
``--live-rows`` says (default ``auto``), so they differ in attention only.
* ``oracle``: timm blocks on dense tensors at exactly the kept counts (mean per stage for adaptive
  methods), CUDA graph, no scoring cost (:mod:`.oracle`); ``oracle_capacity`` (adaptive only): the same at
  the packed buffer widths, i.e. the rows raggedvit's token-wise layers process.

Timing: warm-up, then wall clock around many back-to-back forwards (graph replays) with a sync at both
ends, median of 3 rounds; ``images_per_s = batch / latency``. Capture and warm-up (Triton compile) time are
reported separately. Kept counts: random weights are calibrated to a stated keep rate (:mod:`.calibrate`);
``--lengths-dist`` draws per-image counts from a distribution. ``select_share`` = 1 - oracle time at the
same token rows / raggedvit graph time: the share of the forward spent on scoring, selection, compaction
and metadata. ``row_utilization`` = live token rows / buffer rows over all blocks (1.0 for fixed variants).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from .. import prune
from ..ops.backends import get_backend
from ..runtime.arguments import comma_list
from ..runtime.device import environment, resolve_device, synchronize
from ..runtime.errors import run_command
from ..runtime.loading import LoadedModel, load_model
from . import calibrate as cal
from . import timing
from .flops import tokens_per_block, vit_dims, vit_flops
from .oracle import OracleViT, oracle_widths

MODELS = ("deit_tiny", "deit_small", "deit_base")
METHODS = ("threshold_l2", "dynamicvit", "evit", "ats")
PIPELINES = ("dense", "dense_graph", "padded_sdpa", "packed_fa2", "packed_fa2_graph", "packed_varlen_attn",
             "packed_nested", "raggedvit_eager", "raggedvit_graph", "oracle", "oracle_capacity")
BACKEND = {"packed_fa2": "fa2_varlen", "packed_fa2_graph": "fa2_varlen", "packed_varlen_attn": "varlen_attn",
           "packed_nested": "nested_sdpa", "raggedvit_eager": "triton", "raggedvit_graph": "triton"}
GRAPHED = ("dense_graph", "packed_fa2_graph", "raggedvit_graph", "oracle", "oracle_capacity")
QUICK_GPU = dict(models=["deit_small"], img_sizes=[224], batches=[1, 8, 64, 256],
                 combos=[("evit", "fixed"), ("threshold_l2", "adaptive"), ("ats", "adaptive")],
                 extra=("deit_small", 384, "threshold_l2", "adaptive", 64))
QUICK_CPU = dict(models=["deit_tiny"], img_sizes=[224], combos=[("evit", "fixed"), ("threshold_l2", "adaptive")],
                 batches=[1, 2], extra=None)
CPU_PIPELINES = ("dense", "padded_sdpa", "raggedvit_eager")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``raggedvit bench e2e``."""
    a = parser.add_argument
    a("--quick", action="store_true", help="small grid (< 5 min on an H100; < 60 s on a CPU)")
    a("--models", type=comma_list(str), help=f"comma list of {','.join(MODELS)}")
    a("--img-sizes", type=comma_list(int), help="comma list (224, 384)")
    a("--methods", type=comma_list(str), help=f"comma list of {','.join(METHODS)}")
    a("--variants", type=comma_list(str), help="comma list of fixed,adaptive")
    a("--batches", type=comma_list(int), help="comma list (default 1,4,16,64,256)")
    a("--pipelines", type=comma_list(str), help=f"comma list of {','.join(PIPELINES)}")
    a("--keep-rate", type=comma_list(float), help="per-stage keep rate(s) to calibrate to (default 0.7, ATS 0.9)")
    a("--k-max", type=int, help="cap on kept tokens per image for adaptive methods (all layouts alike; not ATS)")
    a("--lengths-dist", help="also run method 'lengths': per-image keep rates per stage drawn from e.g. "
      "uniform:0.3:1.0, normal:0.7:0.15, beta:4:2, const:0.7")
    a("--pretrained", action="store_true", help="timm pretrained weights (needs network access)")
    a("--checkpoint", help="a .pth state dict (timm keys; DynamicViT checkpoints also give the predictors)")
    a("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    a("--device", help="default: cuda if available, else cpu")
    a("--budget", type=float, help="seconds of timing per pipeline (default 0.6, quick 0.3, cpu 0.1)")
    a("--calib-images", type=int, help="calibration images (default 64 on GPU, 8 on CPU)")
    a("--live-rows", default="auto", choices=["auto", "on", "off"],
      help="prune(live_rows=...) of every packed pipeline: fused token-wise kernels on the live rows")
    a("--nested-max-batch", type=int, default=8, help="skip packed_nested above this batch (very slow)")
    a("--seed", type=int, default=0)
    a("--out", default="benchmarks/results", help="output folder")


def _grid(args, device) -> dict:
    cpu = device.type != "cuda"
    g = dict(QUICK_CPU if cpu else QUICK_GPU) if args.quick else dict(
        models=list(MODELS), img_sizes=[224, 384], combos=None, batches=[1, 4, 16, 64, 256], extra=None)
    for k in ("models", "img_sizes", "batches"):
        if getattr(args, k):
            g[k], g["extra"] = getattr(args, k), None
    if args.methods or args.variants or g["combos"] is None:
        g["combos"] = [(m, v) for m in (args.methods or METHODS) for v in (args.variants or ["fixed", "adaptive"])]
        g["extra"] = None
    if args.lengths_dist:
        g["combos"] = g["combos"] + [("lengths", "adaptive")]
    bad = [m for m, _ in g["combos"] if m not in METHODS + ("lengths",)] + [m for m in g["models"] if m not in MODELS]
    if bad:
        raise SystemExit(f"bench e2e: unknown model/method {bad}")
    g["pipelines"] = args.pipelines or list(CPU_PIPELINES if (cpu and args.quick) else PIPELINES)
    unknown = [p for p in g["pipelines"] if p not in PIPELINES]
    if unknown:
        raise SystemExit(f"bench e2e: unknown pipeline(s) {unknown}; valid: {', '.join(PIPELINES)}")
    g["keep_rates"] = args.keep_rate or [None]
    return g


def _time(fn, device, budget: float) -> tuple[float, int]:
    """Median seconds per call of ``fn`` over 3 rounds (1 on CPU) of back-to-back calls, synced at both ends."""
    rounds = 3 if device.type == "cuda" else 1
    n = timing.calls_for_budget(fn, device, budget / rounds, max_calls=2000, min_calls=rounds - 1 or 1,
                                probe=rounds - 1 or 1)
    times = []
    for _ in range(rounds):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times), n


def _count_syncs(fn, device) -> int | None:
    """Synchronizing CUDA calls made by one ``fn()`` (torch's sync debug mode, 'warn'); None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _graph(fn, device):
    """``(replay, output, capture_s)`` of ``fn`` captured in a CUDA graph (warm-up included in capture_s)."""
    t0 = time.perf_counter()
    g, out = timing.capture_graph(fn, device, warmup=2)
    return g.replay, out, time.perf_counter() - t0


def _stage_summary(kept: list[list[int]], blocks) -> list[dict]:
    return [{"block": b, "mean": sum(k) / len(k), "min": min(k), "max": max(k)} for b, k in zip(blocks, kept)]


class Point:
    """One grid point: builds and times every pipeline on the same inputs; returns result rows."""

    def __init__(self, ctx, model, method, variant, batch, options, base: dict) -> None:
        self.ctx, self.model, self.method, self.variant, self.batch = ctx, model, method, variant, batch
        self.options, self.base, self.dev = options, base, ctx["device"]
        g = torch.Generator().manual_seed(ctx["seed"] * 7919 + batch)
        size = model.patch_embed.img_size
        self.x = torch.randn(batch, 3, *size, generator=g).to(self.dev, ctx["dtype"])
        self.ref = self.kept = None
        self.pm = "dynamicvit" if method == "lengths" else method
        self.dims = vit_dims(model)
        self.n0 = self.dims.num_prefix + self.dims.num_patches

    def pruned(self, layout, attention="triton"):
        live = self.ctx["live_rows"] if layout == "packed" else False
        return prune(self.model, self.pm, layout=layout, attention=attention, live_rows=live, **self.options).eval()

    def run(self, pipeline: str) -> dict:
        row = dict(self.base, pipeline=pipeline, batch=self.batch, status="ok")
        try:
            row.update(self._run(pipeline))
        except Exception as e:  # noqa: BLE001 - recorded in the row, never swallowed silently
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return row

    def _run(self, p: str) -> dict:
        dev, on_gpu, budget = self.dev, self.dev.type == "cuda", self.ctx["budget"]
        if p in GRAPHED and not on_gpu:
            return {"status": "unavailable: CUDA graphs need a CUDA device"}
        if p.startswith("oracle") and self.method == "none":
            return {"status": "unavailable: no pruning"}
        if p == "oracle_capacity" and self.variant == "fixed":
            return {"status": "unavailable: fixed variant (capacity == kept counts; see oracle)"}
        backend = BACKEND.get(p)
        if p in ("raggedvit_eager",) and not on_gpu:
            backend = "reference"
        if backend:
            why = get_backend(backend).unavailable_reason(dev, self.ctx["dtype"])
            if why:
                return {"status": f"unavailable: {why}"}
        if p == "packed_nested" and self.batch > self.ctx["nested_max_batch"]:
            return {"status": f"skipped: batch > --nested-max-batch {self.ctx['nested_max_batch']}"}
        extra: dict = {"attention": backend or ("sdpa" if p == "padded_sdpa" else "timm")}
        stats, mode, fn, model = None, "eager", None, None
        with torch.no_grad():
            if p.startswith("dense"):
                fn = lambda: self.model(self.x)  # noqa: E731
                kept = []
            elif p.startswith("oracle"):
                widths = oracle_widths(self.kept, self.dims.num_prefix) if p == "oracle" else self.capacity
                orc = OracleViT(self.model, self.blocks, self.mid, widths)
                fn = lambda: orc(self.x)  # noqa: E731
                kept = [[w] * self.batch for w in widths]
            else:
                layout = "padded" if p == "padded_sdpa" else "packed"
                model = self.pruned(layout, backend or "triton")
                if p == "raggedvit_graph":
                    from ..models.graph import capture
                    gv = capture(model, self.batch, example=self.x)
                    extra.update(capture_s=gv.capture_s, warmup_s=gv.warmup_s)
                    out, replay, stats, mode = gv.output, gv.replay, gv.stats, "graph"
                else:
                    fn = lambda: model(self.x)  # noqa: E731
            if fn is not None:
                t0 = time.perf_counter()
                out = fn()
                stats = getattr(model, "last_stats", None)
                extra["warmup_s"] = time.perf_counter() - t0
                extra["syncs_per_forward"] = _count_syncs(fn, dev)
                graph_ok = p in GRAPHED or (p == "padded_sdpa" and on_gpu and all(pl.exact for pl in model.plan))
                if graph_ok:
                    replay, out, extra["capture_s"] = _graph(fn, dev)
                    mode = "graph"
            if mode == "graph":
                replay()
                extra["syncs_per_forward"] = _count_syncs(replay, dev)
                call = replay
            else:
                call = fn
            synchronize(dev)
            logits = out.float().clone()
            if stats is not None:
                kept = [k.tolist() for k in stats.kept]
            sec, iters = _time(call, dev, budget)
            if p == "padded_sdpa" and mode == "graph":  # best mode: also time eager, keep the faster
                sec_e, _ = _time(fn, dev, budget)
                extra["eager_latency_us"] = sec_e * 1e6
                if sec_e < sec:
                    sec, mode = sec_e, "eager"
        if p == "padded_sdpa":
            self.ref, self.kept = logits, kept
        r = {"mode": mode, "latency_us": sec * 1e6, "images_per_s": self.batch / sec, "iters": iters, **extra}
        kept_all = kept if kept else []
        st = [(b, self.mid, k) for b, k in zip(self.blocks, kept_all)] if kept_all and not p.startswith("dense") else []
        attn, mlp = tokens_per_block(self.dims.depth, [self.n0] * self.batch, st)
        r["gflops"] = sum(vit_flops(self.dims, attn, mlp)) / self.batch / 1e9
        last = kept_all[-1] if kept_all else [self.n0] * self.batch
        r.update(kept_mean=sum(last) / len(last), kept_min=min(last), kept_max=max(last),
                 kept_stages=_stage_summary(kept_all, self.blocks),
                 tokens_mean=sum(map(sum, mlp)) / len(mlp) / self.batch)
        if p.startswith(("packed", "raggedvit")) and kept_all:
            cap = tokens_per_block(self.dims.depth, [self.n0] * self.batch,
                                   [(b, self.mid, [w] * self.batch) for b, w in zip(self.blocks, self.capacity)])[1]
            r["row_utilization"] = sum(map(sum, mlp)) / max(1, sum(map(sum, cap)))
        if self.ref is not None and not p.startswith(("dense", "oracle")):
            r["max_logit_diff"] = float((logits - self.ref).abs().max())
            r["top1_agree"] = float((logits.argmax(1) == self.ref.argmax(1)).float().mean())
        return r

    def setup(self) -> None:
        """Host-side plan of this point (stage blocks, MID/PRE, buffer widths)."""
        plan = self.pruned("packed", "reference").plan
        self.blocks = [pl.block for pl in plan]
        self.mid = bool(plan and plan[0].mid)
        self.capacity = [pl.width_out for pl in plan]


def _finish(rows: list[dict]) -> None:
    """Speedups over padded_sdpa / oracle / packed_fa2(_graph) and select_share, per point."""
    by = {(r["pipeline"], r["_point"]): r for r in rows if r["status"] == "ok"}
    for r in (r for r in rows if r["status"] == "ok"):
        for name, base in (("speedup_vs_padded", "padded_sdpa"), ("speedup_vs_oracle", "oracle"),
                           ("speedup_vs_fa2", "packed_fa2"), ("speedup_vs_fa2_graph", "packed_fa2_graph")):
            b = by.get((base, r["_point"]))
            if b and b is not r:
                r[name] = r["images_per_s"] / b["images_per_s"]
        if r["pipeline"] == "raggedvit_graph":
            o = by.get(("oracle_capacity" if r["variant"] == "adaptive" else "oracle", r["_point"]))
            if o:
                r["select_share"] = 1.0 - o["latency_us"] / r["latency_us"]


def _load_model(name: str, img_size: int, device, dtype, args) -> LoadedModel:
    """``deit_{tiny,small,base}`` at ``img_size`` (timm's 384 model for deit_base at 384), eval mode: random weights
    unless ``--pretrained`` or ``--checkpoint`` (loaded strictly: missing and unexpected keys are named)."""
    full = "deit_base_patch16_384" if (name, img_size) == ("deit_base", 384) else f"{name}_patch16_224"
    return load_model(full, weights="pretrained" if args.pretrained else "random", checkpoint=args.checkpoint,
                      device=device, dtype=dtype, img_size=None if full.endswith(str(img_size)) else img_size)


def main(args) -> int:
    """Run the grid, write ``e2e-<gpu>-<stamp>.json`` + ``.md`` + plots under ``--out``; print a summary."""
    return run_command("bench e2e", lambda: _run(args))


def _run(args) -> int:
    device = resolve_device(args.device or "auto")
    dtype = getattr(torch, args.dtype)
    cpu = device.type != "cuda"
    if cpu and dtype != torch.float32:
        print(f"bench e2e: CPU run: --dtype {args.dtype} -> float32 (CPU half matmuls are not representative)")
        dtype = torch.float32
    if cpu:
        print("bench e2e: no CUDA device: GPU pipelines (graphs, FA2, varlen_attn, Triton) are reported as "
              "unavailable; raggedvit_eager runs the 'reference' attention backend")
    grid = _grid(args, device)
    ctx = dict(device=device, dtype=dtype, seed=args.seed, nested_max_batch=args.nested_max_batch,
               live_rows={"auto": "auto", "on": True, "off": False}[args.live_rows],
               budget=args.budget or (0.1 if cpu else 0.3 if args.quick else 0.6))
    calib_n = args.calib_images or (4 if cpu else 64)
    points = [(m, s, c, b, kr) for m in grid["models"] for s in grid["img_sizes"] for c in grid["combos"]
              for kr in grid["keep_rates"] for b in grid["batches"]]
    if grid["extra"]:
        m, s, meth, var, b = grid["extra"]
        points.append((m, s, (meth, var), b, None))
    from tqdm import tqdm
    env = environment(device)
    rows, models, calib, dense_cache = [], {}, {}, {}
    bar = tqdm(total=len(points) * len(grid["pipelines"]), desc="bench e2e", file=sys.stderr)
    for pi, (mname, img, (method, variant), batch, kr) in enumerate(points):
        if (mname, img) not in models:
            models.clear()
            dense_cache, calib = {}, {}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            models[(mname, img)] = _load_model(mname, img, device, dtype, args)
        loaded = models[(mname, img)]
        model = loaded.model
        base = dict(model=mname, img_size=img, method=method, variant=variant, dtype=str(dtype).removeprefix("torch."),
                    live_rows=args.live_rows, _point=pi)
        opts = cal.point_options(model, loaded.predictor_state, method, variant, batch, base, cache=calib, keep_rate=kr,
                                 k_max=args.k_max, lengths_dist=args.lengths_dist, seed=args.seed,
                                 calib_images=calib_n, attention="reference" if cpu else "triton")
        pt = Point(ctx, model, method, variant, batch, opts, base)
        pt.setup()
        for p in ["padded_sdpa"] + [q for q in grid["pipelines"] if q != "padded_sdpa"]:
            if p not in grid["pipelines"] and p == "padded_sdpa":
                pt.run(p)  # reference logits and kept counts, not reported
                continue
            if p.startswith("dense") and (batch, p) in dense_cache:
                row = dict(dense_cache[(batch, p)], **{k: v for k, v in base.items()})
            else:
                row = pt.run(p)
                if p.startswith("dense"):
                    dense_cache[(batch, p)] = row
            rows.append(row)
            bar.update(1)
        del pt
    bar.close()
    _finish(rows)
    for r in rows:
        r.pop("_point", None)
    result = {"kind": "e2e", "env": env, "rows": rows}
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = timing.write_json(result, args.out, "e2e", stamp=stamp)
    _outputs(result, path)
    _print_summary(rows)
    print(f"wrote {path}")
    return 0


def _outputs(result: dict, path: Path) -> None:
    """Markdown (+ PNG plots through :mod:`raggedvit.bench.report`) next to the JSON."""
    from . import report

    flat = dict(result, rows=[{k: v for k, v in r.items() if not isinstance(v, (list, dict)) and k not in
                               ("iters", "warmup_s", "eager_latency_us", "tokens_mean", "attention", "k_max")}
                              for r in result["rows"]])
    md = path.with_suffix(".md")
    md.write_text("")
    try:
        report.write_report(flat, path.parent, path.stem, source=str(path))  # table + PNG plots
    except ImportError as e:  # no matplotlib: only the kept-token table below
        md.write_text(f"# raggedvit bench e2e\n\nNo plots or main table ({e}); see {path.name}.\n")
    lines = ["", "## Kept tokens per stage (mean [min..max] per image, prefix included) and calibration", "",
             "| model | img | method | variant | batch | pipeline | stages | calibration |",
             "|---|---:|---|---|---:|---|---|---|"]
    seen = set()
    for r in result["rows"]:
        key = (r["model"], r["img_size"], r["method"], r["variant"], r["batch"])
        if r["status"] != "ok" or r["pipeline"] != "padded_sdpa" or key in seen:
            continue
        seen.add(key)
        st = ", ".join(f"b{s['block']}: {s['mean']:.1f} [{s['min']}..{s['max']}]" for s in r.get("kept_stages", []))
        cb = r.get("calibration") or {}
        c = (f"{cb.get('param')}={json.dumps(cb.get('value'))[:60]} -> keep {cb.get('achieved_keep_rate', 0):.3f} "
             f"(target {cb.get('target_keep_rate')})") if cb else r.get("lengths_dist", "")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | padded_sdpa | {st} | {c} |")
    lines += ["", "Definitions: see `raggedvit.bench.e2e` (module docstring): select_share, row_utilization, oracle."]
    md.write_text(md.read_text() + "\n".join(lines) + "\n")


def _print_summary(rows: list[dict]) -> None:
    print(f"{'model':10} {'img':>4} {'method':12} {'var':8} {'batch':>5} {'pipeline':18} {'img/s':>10} "
          f"{'x padded':>8} {'x oracle':>8} {'kept':>7} {'syncs':>5}  status")
    for r in rows:
        def f(k, fmt, r=r):
            return format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-"
        print(f"{r['model']:10} {r['img_size']:>4} {r['method']:12} {r['variant']:8} {r['batch']:>5} "
              f"{r['pipeline']:18} {f('images_per_s', '10.0f'):>10} {f('speedup_vs_padded', '8.2f'):>8} "
              f"{f('speedup_vs_oracle', '8.2f'):>8} {f('kept_mean', '7.1f'):>7} {f('syncs_per_forward', 'd'):>5}  "
              f"{r['status'][:60]}")
