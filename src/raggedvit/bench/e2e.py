"""``raggedvit bench e2e``: images/s of whole pruned DeiT forwards, every pipeline side by side.

One grid point = model, image size, method, variant, keep rate, batch; every pipeline of a point runs the
same input images. The pipelines (layout, attention backend, timing mode) are the table
:data:`raggedvit.bench.pipelines.PIPELINES`: ``dense``/``dense_graph`` (timm, no pruning), ``padded_sdpa`` (the
baseline and the reference for ``max_logit_diff``), ``packed_*`` (the packed layout with torch's attention
backends), ``raggedvit_eager``/``raggedvit_graph`` (the packed layout with raggedvit's Triton kernel) and
``oracle``/``oracle_capacity`` (timm blocks on dense tensors at exactly the kept counts / at the packed buffer
widths, CUDA graph, no scoring cost: :mod:`.oracle`).

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
import sys
from pathlib import Path

import torch

from ..pruning import pruning_methods
from ..runtime.arguments import comma_list
from ..runtime.device import environment, resolve_device
from ..runtime.errors import run_command
from ..runtime.loading import LoadedModel, load_model
from . import calibrate as cal
from . import timing
from .e2e_point import Point
from .pipelines import BASELINE, CPU_QUICK, PADDED_BEST, PIPELINES, SELECT_SHARE, SPEEDUPS

MODELS = ("deit_tiny", "deit_small", "deit_base")
SAMPLE_MODEL = "vit_tiny_trained"  # --sample-data: raggedvit.sample_data's ViT-Tiny
SAMPLE_CALIB = 64  # --sample-data: the last photos calibrate Threshold-L2 (adaptive); the others are timed
QUICK_GPU = dict(models=["deit_small"], img_sizes=[224], batches=[1, 8, 64, 256],
                 combos=[("evit", "fixed"), ("threshold_l2", "adaptive"), ("ats", "adaptive")],
                 extra=("deit_small", 384, "threshold_l2", "adaptive", 64))
QUICK_CPU = dict(models=["deit_tiny"], img_sizes=[224], combos=[("evit", "fixed"), ("threshold_l2", "adaptive")],
                 batches=[1, 2], extra=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``raggedvit bench e2e``."""
    a = parser.add_argument
    a("--quick", action="store_true", help="small grid (< 5 min on an H100; < 60 s on a CPU)")
    a("--models", type=comma_list(str), help=f"comma list of {','.join(MODELS)}")
    a("--img-sizes", type=comma_list(int), help="comma list (224, 384)")
    a("--methods", type=comma_list(str), help="comma list of registered methods (default: all of them)")
    a("--variants", type=comma_list(str), help="comma list of fixed,adaptive")
    a("--batches", type=comma_list(int), help="comma list (default 1,4,16,64,256)")
    a("--pipelines", type=comma_list(str), help=f"comma list of {','.join(PIPELINES)}")
    a("--keep-rate", type=comma_list(float), help="per-stage keep rate(s) to calibrate to (default 0.7, ATS 0.9)")
    a("--k-max", type=int, help="cap on kept tokens per image for adaptive methods (all layouts alike; not ATS)")
    a("--lengths-dist", help="also run method 'lengths': per-image keep rates per stage drawn from e.g. "
      "uniform:0.3:1.0, normal:0.7:0.15, beta:4:2, const:0.7")
    a("--sample-data", action="store_true",
      help="the trained ViT-Tiny on the labelled ImageNet sample photos (raggedvit.sample_data): each method "
           "decides its own kept counts at its default options (or --keep-rate for fixed variants); no "
           "calibration to a target count except Threshold-L2's adaptive thresholds (on 64 other photos)")
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
    if args.sample_data:
        if args.models or args.img_sizes or args.lengths_dist or args.pretrained or args.checkpoint:
            raise SystemExit("bench e2e: --sample-data fixes the model (the trained ViT-Tiny at 224); drop "
                             "--models/--img-sizes/--lengths-dist/--pretrained/--checkpoint")
        g.update(models=[SAMPLE_MODEL], img_sizes=[224], extra=None)
    for k in ("models", "img_sizes", "batches"):
        if getattr(args, k):
            g[k], g["extra"] = getattr(args, k), None
    if args.methods or args.variants or g["combos"] is None:
        variants = args.variants or ["fixed", "adaptive"]
        g["combos"] = [(m, v) for m in (args.methods or pruning_methods()) for v in variants]
        g["extra"] = None
    if args.lengths_dist:
        g["combos"] = g["combos"] + [("lengths", "adaptive")]
    known = pruning_methods() + ("lengths",)
    bad = [m for m, _ in g["combos"] if m not in known] + [m for m in g["models"] if m not in MODELS + (SAMPLE_MODEL,)]
    if bad:
        raise SystemExit(f"bench e2e: unknown model/method {bad}")
    g["pipelines"] = args.pipelines or list(CPU_QUICK if (cpu and args.quick) else PIPELINES)
    unknown = [p for p in g["pipelines"] if p not in PIPELINES]
    if unknown:
        raise SystemExit(f"bench e2e: unknown pipeline(s) {unknown}; valid: {', '.join(PIPELINES)}")
    g["keep_rates"] = args.keep_rate or [None]
    return g


def finish_rows(rows: list[dict]) -> None:
    """Speedups (:data:`~.pipelines.SPEEDUPS`), the padded baseline's best mode (``padded_best``: the faster of
    :data:`~.pipelines.PADDED_BEST` at the point, and ``speedup_vs_padded_best``) and select_share
    (:data:`~.pipelines.SELECT_SHARE`), per point (rows carry a ``_point`` key)."""
    by = {(r["pipeline"], r["_point"]): r for r in rows if r["status"] == "ok"}
    share, oracles = SELECT_SHARE
    for r in (r for r in rows if r["status"] == "ok"):
        for name, base in SPEEDUPS:
            b = by.get((base, r["_point"]))
            if b and b is not r:
                r[name] = r["images_per_s"] / b["images_per_s"]
        padded = [by[(p, r["_point"])] for p in PADDED_BEST if (p, r["_point"]) in by]
        if padded and r["pipeline"] not in PADDED_BEST:
            best = max(padded, key=lambda b: b["images_per_s"])
            r["padded_best"] = f"{best['pipeline']} ({best['mode']})"
            r["speedup_vs_padded_best"] = r["images_per_s"] / best["images_per_s"]
        if r["pipeline"] == share:
            o = by.get((oracles.get(r["variant"], "oracle"), r["_point"]))
            if o:
                r["select_share"] = 1.0 - o["latency_us"] / r["latency_us"]


def _load_model(name: str, img_size: int, device, dtype, args) -> LoadedModel:
    """``deit_{tiny,small,base}`` at ``img_size`` (timm's 384 model for deit_base at 384), eval mode: random weights
    unless ``--pretrained`` or ``--checkpoint`` (loaded strictly: missing and unexpected keys are named)."""
    full = "deit_base_patch16_384" if (name, img_size) == ("deit_base", 384) else f"{name}_patch16_224"
    return load_model(full, weights="pretrained" if args.pretrained else "random", checkpoint=args.checkpoint,
                      device=device, dtype=dtype, img_size=None if full.endswith(str(img_size)) else img_size)


def _sample_options(model, predictors, method: str, variant: str, keep_rate, calib, cache: dict, base: dict) -> dict:
    """``prune`` options of a trained-weights point: the method's defaults (``keep_rate`` for fixed variants when
    given); Threshold-L2 adaptive thresholds calibrated at ``keep_rate`` (default 0.7) on ``calib`` photos;
    DynamicViT needs the checkpoint's trained predictors."""
    opts: dict = {"variant": variant}
    if keep_rate is not None and variant == "fixed":
        opts["keep_rate"] = keep_rate
    base["keep_rate"] = keep_rate
    if method == "dynamicvit":
        if predictors is None:
            raise SystemExit("bench e2e --sample-data: dynamicvit needs trained predictors, and the sample "
                             "checkpoint has none; drop it from --methods")
        opts["predictors"] = predictors
    if method == "threshold_l2" and variant == "adaptive":
        from ..models import calibrate_thresholds

        rate = 0.7 if keep_rate is None else keep_rate
        if rate not in cache:
            cache[rate] = calibrate_thresholds(model, calib, keep_rate=rate)
        opts["thresholds"] = cache[rate]
        base["calibration"] = {"param": "thresholds", "value": list(cache[rate]), "target_keep_rate": rate,
                               "achieved_keep_rate": float("nan"), "source": f"{len(calib)} other sample photos"}
    return opts


def main(args) -> int:
    """Run the grid, write ``e2e-<gpu>-<stamp>.json`` + ``.md`` + plots under ``--out``; print a summary."""
    return run_command("bench e2e", lambda: _run(args))


def _sample_photos(device, dtype, n: int) -> tuple[LoadedModel, torch.Tensor, torch.Tensor]:
    """``(model, timed photos, calibration photos)``: :mod:`raggedvit.sample_data`'s trained ViT-Tiny on ``device``,
    its first ``n`` labelled photos (at most all but the calibration ones) and the last :data:`SAMPLE_CALIB` (they
    calibrate Threshold-L2), in the model's eval transform."""
    from .. import sample_data
    from ..runtime.errors import UsageError

    root = sample_data.locate()
    if root is None:
        raise UsageError(f"--sample-data: {sample_data.missing_reason()}")
    weights = root / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
    loaded = load_model("vit_tiny_patch16_224", checkpoint=str(weights), device=device, dtype=dtype)
    total = len(sample_data.sample_files(root))
    timed = min(n, total - SAMPLE_CALIB)
    images, _ = sample_data.load_images(loaded.model, [*range(timed), *range(total - SAMPLE_CALIB, total)], root)
    return loaded, images[:timed], images[timed:].to(device, dtype)


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
    photos = None
    if args.sample_data:
        if any(m == "dynamicvit" for m, _ in grid["combos"]) and not args.methods:
            grid["combos"] = [c for c in grid["combos"] if c[0] != "dynamicvit"]  # no trained predictors
            points = [p for p in points if p[2][0] != "dynamicvit"]
        photos = _sample_photos(device, dtype, max(grid["batches"]))
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
            models[(mname, img)] = photos[0] if photos else _load_model(mname, img, device, dtype, args)
        loaded = models[(mname, img)]
        model = loaded.model
        base = dict(model=mname, img_size=img, method=method, variant=variant, dtype=str(dtype).removeprefix("torch."),
                    live_rows=args.live_rows, weights="trained" if photos else "random", _point=pi)
        images = None
        if photos:
            preds = cal.dynamicvit_predictors(model, loaded.predictor_state) if loaded.predictor_state else None
            opts = _sample_options(model, preds, method, variant, kr, photos[2], calib, base)
            timed = photos[1]
            images = timed[torch.arange(batch) % len(timed)]  # the first photos (repeated past the last one)
        else:
            opts = cal.point_options(model, loaded.predictor_state, method, variant, batch, base, cache=calib,
                                     keep_rate=kr, k_max=args.k_max, lengths_dist=args.lengths_dist, seed=args.seed,
                                     calib_images=calib_n, attention="reference" if cpu else "triton")
        pt = Point(ctx, model, method, variant, batch, opts, base, images)
        pt.setup()
        for p in [BASELINE] + [q for q in grid["pipelines"] if q != BASELINE]:
            if p not in grid["pipelines"]:
                pt.run(p)  # reference logits and kept counts, not reported
                continue
            dense = PIPELINES[p].layout == "dense"
            if dense and (batch, p) in dense_cache:
                row = dict(dense_cache[(batch, p)], **{k: v for k, v in base.items()})
            else:
                row = pt.run(p)
                if dense:
                    dense_cache[(batch, p)] = row
            rows.append(row)
            bar.update(1)
        del pt
    bar.close()
    finish_rows(rows)
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
        if r["status"] != "ok" or r["pipeline"] != BASELINE or key in seen:
            continue
        seen.add(key)
        st = ", ".join(f"b{s['block']}: {s['mean']:.1f} [{s['min']}..{s['max']}]" for s in r.get("kept_stages", []))
        cb = r.get("calibration") or {}
        c = (f"{cb.get('param')}={json.dumps(cb.get('value'))[:60]} -> keep {cb.get('achieved_keep_rate', 0):.3f} "
             f"(target {cb.get('target_keep_rate')})") if cb else r.get("lengths_dist", "")
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {BASELINE} | {st} | {c} |")
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
