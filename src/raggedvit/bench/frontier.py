"""``raggedvit bench frontier``: top-1 against images/s for every method over a sweep of its budget.

The question a user asks: how many images/s do I gain, for how much top-1, over what I would run anyway?
Each *setting* (a method and its options, e.g. EViT ``keep_rate=0.8``) is run on a trained model over
labelled images (default: the trained ViT-Tiny and ImageNet photos of :mod:`raggedvit.sample_data`):

* **accuracy**: top-1 of the packed pruned model over the evaluation images, in the timing dtype, and the
  kept tokens per stage (mean, min, max over images): whatever each method decides on those images, no
  calibration to a target count. Threshold-L2's adaptive thresholds are absolute norms, so its settings are
  calibrated keep rates: thresholds from :func:`raggedvit.models.calibrate_thresholds` on calibration photos
  disjoint from the evaluated ones (the paper's procedure).
* **speed** at each batch size, on the first ``batch`` evaluation images, through :class:`.e2e_point.Point`:
  ``raggedvit_graph`` (packed, captured whole), the padded baseline in three modes (``padded_sdpa``: batch
  maximum, eager unless every stage is exact; ``padded_static``: static capacity in a CUDA graph;
  ``padded_compiled``: the same under ``torch.compile``, at the batch sizes of ``--padded-compiled``, default
  all; the fastest is ``padded_best``) and the references ``dense_compiled`` (``torch.compile``,
  reduce-overhead, static shapes) and ``dense_graph`` (timm's forward in a CUDA graph).

``--merge A.json,B.json`` joins runs of the same settings at different batch sizes (a device call each) into
one result; each ratio remains the one measured in its own run.

``--random-models deit_small,deit_base`` adds speed-only rows with random weights at those widths
(fixed-count settings only, whose kept counts do not depend on the weights), labelled ``random weights``.
Outputs under ``--out``: ``frontier-<gpu>-<stamp>.json``, ``.md`` (table) and ``.png`` (top-1 against images/s,
one panel per batch size, one line per method and variant).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys

import torch

from ..pruning import pruning_methods
from ..runtime.arguments import comma_list
from ..runtime.device import environment, resolve_device
from ..runtime.errors import UsageError, run_command
from . import timing
from .e2e import finish_rows
from .e2e_point import Point
from .frontier_report import UNPRUNED, merge_files, write
from .pipelines import REFERENCE

# method -> settings swept (options of prune); "calibrate" (Threshold-L2 adaptive): the keep rate its
# thresholds are calibrated to. QUICK: the settings --quick runs (indices into SWEEP's lists).
SWEEP: dict[str, list[dict]] = {
    "evit": [dict(variant="fixed", keep_rate=r) for r in (0.9, 0.78, 0.7, 0.6)]
    + [dict(variant="adaptive", mass=m) for m in (0.95, 0.92, 0.9, 0.85)],
    "ats": [dict(variant="fixed", keep_rate=r) for r in (0.95, 0.92, 0.9, 0.85)]
    + [dict(variant="adaptive", num_samples=n) for n in (392, 256, 196, 128)],
    "threshold_l2": [dict(variant="adaptive", calibrate=r) for r in (0.9, 0.85, 0.8, 0.7)]
    + [dict(variant="fixed", keep_rate=r) for r in (0.9, 0.85, 0.8)],
    "tome": [dict(variant="fixed", r=r) for r in (4, 6, 8, 12, 16)]
    + [dict(variant="adaptive", threshold=t, r=16) for t in (0.95, 0.9, 0.85, 0.8)],
}
QUICK = {"evit": (1, 5), "ats": (1, 4), "threshold_l2": (1, 5), "tome": (0, 6)}  # each variant at its default
RANDOM_SETTINGS = {"evit": [dict(variant="fixed", keep_rate=r) for r in (0.8, 0.7)],
                   "tome": [dict(variant="fixed", r=r) for r in (4, 8)]}
SPEED_PIPELINES = ("padded_sdpa", "padded_static", "raggedvit_graph")
DENSE_PIPELINES = (REFERENCE, "dense_graph")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``raggedvit bench frontier``."""
    a = parser.add_argument
    a("--quick", action="store_true", help="each method's two variants at their defaults, less timing (the "
      "README's table; on an H200 about 3 min at batch 1 or 8 and 7-10 min at 64 or 256, mostly compiling the "
      "padded baseline: run large batch sizes one per call where calls are time-limited)")
    a("--methods", type=comma_list(str), help="comma list of methods to sweep (default: every registered one "
      "with a sweep and usable weights)")
    a("--batches", type=comma_list(int), default=[1, 8, 64, 256], help="comma list (default 1,8,64,256)")
    a("--model", default="vit_tiny_patch16_224", help="timm model name (default: the sample ViT-Tiny)")
    a("--checkpoint", help="trained weights for --model (default: the sample data's ViT-Tiny weights)")
    a("--num-images", type=int, help="evaluated photos (default: all but the calibration ones)")
    a("--calib-images", type=int, default=64, help="photos reserved for Threshold-L2 calibration (default 64)")
    a("--random-models", type=comma_list(str), default=[],
      help="also time fixed-count settings at these widths with RANDOM weights (e.g. deit_small,deit_base)")
    a("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    a("--device", help="default: cuda if available, else cpu")
    a("--budget", type=float, help="seconds of timing per pipeline (default 0.4, quick 0.15)")
    a("--no-speed", action="store_true", help="accuracy and kept tokens only")
    a("--padded-compiled", type=_batch_choice, default="all", metavar="all|none|BATCHES",
      help="time the padded baseline also under torch.compile (padded_compiled: static capacity, SDPA) at these "
      "batch sizes (default all: it is the padded baseline's best mode on an H200), a compile per setting and "
      "batch; the padded best mode is the fastest of the three")
    a("--merge", type=comma_list(str), metavar="JSONS",
      help="instead of running: merge frontier JSONs of the same settings taken at different batch sizes (e.g. "
      "two device calls) into one JSON, table and plot; each ratio stays the one measured in its own run")
    a("--live-rows", default="auto", choices=["auto", "on", "off"],
      help="prune(live_rows=...) of the packed pipeline: fused token-wise kernels on the live rows")
    a("--out", default="benchmarks/results", help="output folder")


def _batch_choice(text: str) -> str | list[int]:
    """``all``, ``none`` or a comma list of batch sizes."""
    return text if text in ("all", "none") else comma_list(int)(text)


def main(args) -> int:
    """Run the sweep (or merge runs), write JSON + markdown + plot under ``--out``; print the table."""
    return run_command("bench frontier", lambda: merge_files(args.merge, args.out) if args.merge else _run(args))


def settings(methods: list[str], quick: bool) -> list[tuple[str, dict]]:
    """``(method, options)`` of the sweep, in order; methods without a sweep run at their defaults."""
    out = []
    for m in methods:
        sweep = SWEEP.get(m, [{}])
        chosen = [sweep[i] for i in QUICK[m]] if quick and m in QUICK else sweep
        out += [(m, dict(s)) for s in chosen]
    return out


def label(method: str, options: dict) -> str:
    """``"evit fixed keep_rate=0.8"``."""
    opts = " ".join(f"{k}={v}" for k, v in options.items() if k != "variant")
    return " ".join(x for x in (method, options.get("variant", ""), opts) if x)


def _load(args, device, dtype):
    from .. import sample_data
    from ..runtime.loading import load_model

    root = sample_data.locate()
    if root is None:
        raise UsageError(f"bench frontier needs labelled photos: {sample_data.missing_reason()}")
    ckpt = args.checkpoint or str(root / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors")
    loaded = load_model(args.model, checkpoint=ckpt, device=device, dtype=dtype)
    total = len(sample_data.sample_files(root))
    calib = args.calib_images
    n = args.num_images or total - calib
    if calib < 1 or n < 1 or n + calib > total:
        raise UsageError(f"--num-images {n} + --calib-images {calib} must be positive and <= the {total} photos")
    images, labels = sample_data.load_images(loaded.model, range(calib + n), root)
    return loaded, images[calib:], labels[calib:], images[:calib], ckpt


def _options(model, method: str, opts: dict, calib: torch.Tensor, predictors) -> dict:
    """``prune`` options of a setting: Threshold-L2 ``calibrate`` -> thresholds; DynamicViT predictors."""
    opts = dict(opts)
    if "calibrate" in opts:
        from ..models import calibrate_thresholds

        rate = opts.pop("calibrate")
        opts["thresholds"] = calibrate_thresholds(model, calib, keep_rate=rate)
    if method == "dynamicvit":
        opts["predictors"] = predictors
    return opts


@torch.no_grad()
def accuracy(model, method: str, options: dict, images, labels, device, dtype, attention: str,
             batch: int = 250) -> dict:
    """Top-1 (percent) and kept tokens per stage (mean/min/max over images, prefix included) of the packed
    pruned model (``method == "none"``: timm's own forward) over ``images``."""
    from .. import prune

    net = model if method == "none" else prune(model, method, attention=attention, **options).eval()
    correct, kept = 0, None
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device, dtype)
        correct += int((net(x).argmax(1).cpu() == labels[i:i + batch]).sum())
        if method != "none":
            k = [s.cpu() for s in net.last_stats.kept]
            kept = k if kept is None else [torch.cat([a, b]) for a, b in zip(kept, k)]
    blocks = [p.block for p in net.plan] if method != "none" else []
    stages = [{"block": b, "mean": float(k.float().mean()), "min": int(k.min()), "max": int(k.max())}
              for b, k in zip(blocks, kept or [])]
    return {"top1": 100.0 * correct / len(images), "images": len(images), "kept_stages": stages}


def _speed_rows(ctx, model, method, options, batches, images, base, dense_rows, point_id, bar,
                padded_compiled: tuple[int, ...] = ()) -> list[dict]:
    rows = []
    variant = options.get("variant", "fixed")
    for b in batches:
        x = images[:b] if len(images) >= b else images.repeat((b + len(images) - 1) // len(images), 1, 1, 1)[:b]
        if b not in dense_rows:  # the references, once per batch size
            pt = Point(ctx, model, "none", "fixed", b, {}, dict(base, method="none", variant="", setting="dense"), x)
            pt.setup()
            dense_rows[b] = [pt.run(p) for p in DENSE_PIPELINES]
            bar.update(len(DENSE_PIPELINES))
        point_id[0] += 1
        rows += [dict(r, **{k: v for k, v in base.items() if k not in ("method", "variant", "setting")},
                      _point=point_id[0]) for r in dense_rows[b]]
        if method == "none":  # raggedvit's packed forward without pruning: the part of a speed-up that is not pruning
            pt = Point(ctx, model, "none", "fixed", b, {}, dict(base, setting=UNPRUNED, _point=point_id[0]), x)
            pt.setup()
            rows.append(pt.run("raggedvit_graph"))
            bar.update(1)
            continue
        pt = Point(ctx, model, method, variant, b, options, dict(base, _point=point_id[0]), x)
        pt.setup()
        pipelines = SPEED_PIPELINES + (("padded_compiled",) if b in padded_compiled else ())
        rows += [pt.run(p) for p in pipelines]
        bar.update(len(pipelines))
    return rows


def _run(args) -> int:
    from tqdm import tqdm

    device = resolve_device(args.device or "auto")
    dtype = getattr(torch, args.dtype)
    on_gpu = device.type == "cuda"
    if not on_gpu and dtype != torch.float32:
        print(f"bench frontier: CPU run: --dtype {args.dtype} -> float32; no CUDA: speed is not measured "
              "(graphs and torch.compile need a GPU)")
        dtype = torch.float32
    bad = [b for b in args.batches if b < 1]
    if bad:
        raise UsageError(f"--batches must be >= 1, got {bad}")
    pc = args.padded_compiled
    padded_compiled = tuple(args.batches) if pc == "all" else () if pc == "none" else tuple(pc)
    extra = [b for b in padded_compiled if b not in args.batches]
    if extra:
        raise UsageError(f"--padded-compiled {extra}: not among --batches {args.batches}")
    methods = list(args.methods or [m for m in pruning_methods() if m != "none"])
    unknown = [m for m in methods if m not in pruning_methods()]
    if unknown:
        raise UsageError(f"unknown method(s) {unknown}; registered: {', '.join(pruning_methods())}")
    loaded, images, labels, calib, ckpt = _load(args, device, dtype)
    model = loaded.model
    skipped = {}
    if "dynamicvit" in methods and not loaded.predictor_state:
        methods.remove("dynamicvit")
        skipped["dynamicvit"] = "no trained predictors in the checkpoint (random ones are meaningless for top-1)"
    sweep = [("none", {})] + settings(methods, args.quick)
    attention = "triton" if on_gpu else "reference"
    speed = on_gpu and not args.no_speed
    live = {"auto": "auto", "on": True, "off": False}[args.live_rows]
    ctx = dict(device=device, dtype=dtype, seed=0, nested_max_batch=0, live_rows=live,
               budget=args.budget or (0.15 if args.quick else 0.4))
    predictors = None
    if loaded.predictor_state:
        from .calibrate import dynamicvit_predictors
        predictors = dynamicvit_predictors(model, loaded.predictor_state)
    n_timed = (len(args.batches) * (len(SPEED_PIPELINES) * (len(sweep) - 1) + len(DENSE_PIPELINES) + 1)
               + len(padded_compiled) * (len(sweep) - 1)) if speed else 0
    bar = tqdm(total=len(sweep) + n_timed, desc="bench frontier", file=sys.stderr)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    assemble = _assembler(environment(device), dict(
        model=args.model, checkpoint=ckpt, images=f"{len(images)} labelled ImageNet sample photos",
        calibration=f"{len(calib)} other photos (Threshold-L2 thresholds)", dtype=str(dtype).removeprefix("torch."),
        batches=args.batches, quick=args.quick, live_rows=args.live_rows, skipped=skipped,
        padded_compiled=list(padded_compiled)))
    results, rows, dense_rows, point_id = [], [], {}, [0]
    for method, opts in sweep:
        name = "dense" if method == "none" else label(method, opts)
        try:
            options = _options(model, method, opts, calib.to(device, dtype), predictors)
            acc = accuracy(model, method, options, images, labels, device, dtype, attention)
        except Exception as e:  # noqa: BLE001 - recorded in the result, never swallowed silently
            results.append({"setting": name, "method": method, "status": f"error: {type(e).__name__}: {e}"})
            bar.update(1)
            continue
        bar.update(1)
        res = {"setting": name, "method": method, "variant": opts.get("variant", ""), "options": opts,
               "status": "ok", **acc}
        results.append(res)
        if speed:
            base = dict(model=args.model, weights="trained", img_size=model.patch_embed.img_size[0], method=method,
                        variant=opts.get("variant", ""), setting=name, dtype=str(dtype).removeprefix("torch."),
                        live_rows=args.live_rows)
            rows += _speed_rows(ctx, model, method, options, args.batches, images, base, dense_rows, point_id, bar,
                                padded_compiled)
            # the JSON so far after every setting: a run killed by a time limit keeps what it measured
            timing.write_json(assemble(results, rows, complete=False), args.out, "frontier", stamp=stamp)
    bar.close()
    for mname in args.random_models:
        rows += _random_rows(mname, ctx, methods, args, device, dtype, point_id, padded_compiled)
    return write(assemble(results, rows, complete=True), args.out, stamp)


def _assembler(env: dict, config: dict):
    """``assemble(results, rows, complete)``: the result document from copies of the settings and rows so far
    (ratios per point, speeds attached to their settings)."""
    def assemble(results: list[dict], rows: list[dict], complete: bool) -> dict:
        rows = [dict(r) for r in rows]
        finish_rows(rows)
        for r in rows:
            r.pop("_point", None)
        results = [dict(r) for r in results]
        _attach_speed(results, rows, results[0].get("top1"))
        return {"kind": "frontier", "env": env, "config": dict(config, complete=complete), "settings": results,
                "rows": rows}
    return assemble


def _random_rows(mname: str, ctx, methods, args, device, dtype, point_id, padded_compiled) -> list[dict]:
    """Speed of fixed-count settings on a random-weight ``mname`` (labelled; no accuracy)."""
    from ..runtime.loading import load_model

    model = load_model(f"{mname}_patch16_224", weights="random", device=device, dtype=dtype).model
    g = torch.Generator().manual_seed(0)
    images = torch.randn(max(args.batches), 3, 224, 224, generator=g)
    from tqdm import tqdm

    rows, dense_rows = [], {}
    cases = [(m, o) for m in methods for o in RANDOM_SETTINGS.get(m, [])]
    bar = tqdm(total=len(args.batches) * (len(cases) * len(SPEED_PIPELINES) + len(DENSE_PIPELINES))
               + len(padded_compiled) * len(cases),
               desc=f"{mname} (random weights)", file=sys.stderr)
    for method, opts in cases:
        base = dict(model=mname, weights="random", img_size=224, method=method, variant=opts["variant"],
                    setting=label(method, opts), dtype=str(dtype).removeprefix("torch."), live_rows=args.live_rows)
        rows += _speed_rows(ctx, model, method, opts, args.batches, images, base, dense_rows, point_id, bar,
                            padded_compiled)
    bar.close()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _attach_speed(results: list[dict], rows: list[dict], dense_top1) -> None:
    """Per setting: images/s of raggedvit_graph per batch, with its ratios to dense_compiled and padded_best."""
    for res in results:
        if res.get("status") != "ok":
            continue
        if dense_top1 is not None:
            res["top1_delta"] = res["top1"] - dense_top1
        pipe = REFERENCE if res["method"] == "none" else "raggedvit_graph"
        res["speed"] = _speeds(rows, res["setting"], pipe)
        if res["method"] == "none":
            res["speed_unpruned"] = _speeds(rows, UNPRUNED, "raggedvit_graph")


def _speeds(rows: list[dict], setting: str, pipeline: str) -> dict:
    """``{batch: speed fields}`` of ``pipeline``'s trained-weight rows of ``setting``."""
    return {r["batch"]: {k: r.get(k) for k in ("status", "images_per_s", "speedup_vs_dense_compiled",
                                                "speedup_vs_padded_best", "padded_best")}
            for r in rows if r.get("weights") == "trained" and r.get("setting") == setting
            and r["pipeline"] == pipeline}


__all__ = ["SWEEP", "settings", "label", "accuracy"]
