"""Sweep the main knob of every pruning method on the trained ViT-Tiny and the 500 labelled sample photos.

What it measures (issue 11, "defaults that hold up on a trained model"): top-1 of the dense model and of each
method at a grid of option values, fp32, CPU, packed layout, pure-PyTorch reference attention (no Triton
interpreter), batch 50, with the kept tokens per stage (mean over the images, CLS and an EViT fused token
included) and the token-block fraction: the mean, over the 12 blocks, of the tokens each block's attention and
MLP see, relative to the dense 197 (a FLOP proxy that compares methods with different stage counts).

Every option is passed explicitly, so the sweep does not depend on the library's defaults. Threshold-L2's
adaptive thresholds are calibrated (``raggedvit.models.calibrate_thresholds``) on every 5th photo (100 of
the 500; there is no held-out labelled set). DynamicViT rows use seed-0 random predictors: they show what an
untrained predictor costs, they are not a usable configuration.

Usage::

    PYTHONPATH=src python benchmarks/defaults_sweep.py \
        --out benchmarks/results/defaults-sweep-cpu-vit_tiny-trained-DATE.json

writes the JSON and a markdown table beside it (same name, ``.md``). ``--quick`` runs a few points on 50 photos;
``--resume`` keeps the rows already in ``--out`` and runs only the grid points missing there.
A top-1 over 500 photos (one per class) has a standard error of about 1.8 points.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

import raggedvit
from raggedvit import sample_data
from raggedvit.models import calibrate_thresholds
from raggedvit.pruning.dynamicvit import make_predictors

BATCH = 50

# (method, variant, option swept, values, fixed options)
GRID = [
    ("evit", "fixed", "keep_rate", [0.6, 0.7, 0.75, 0.78, 0.8, 0.85, 0.9], {}),
    ("evit", "adaptive", "mass", [0.8, 0.85, 0.9, 0.92, 0.93, 0.95, 0.97], {}),
    ("ats", "adaptive", "num_samples", [128, 196, 256, 294, 320, 392, 784], {}),
    ("ats", "fixed", "keep_rate", [0.85, 0.9, 0.92, 0.93, 0.95, 0.97], {}),
    ("threshold_l2", "fixed", "keep_rate", [0.7, 0.75, 0.8, 0.85, 0.9], {}),
    ("threshold_l2", "adaptive", "calibrated keep_rate", [0.7, 0.8, 0.85, 0.9, 0.95], {}),
    ("threshold_l2", "adaptive", "alpha", [0.5, 0.7, 0.9, 1.0], {}),
    ("dynamicvit", "fixed", "keep_rate (random predictors)", [0.7], {}),
]
QUICK = [
    ("evit", "fixed", "keep_rate", [0.7], {}),
    ("ats", "adaptive", "num_samples", [196], {}),
    ("threshold_l2", "adaptive", "calibrated keep_rate", [0.9], {}),
]


def token_fraction(model, method, kept_mean: list[float]) -> float:
    """Mean over blocks of the tokens seen (attention and MLP halves), relative to the dense token count."""
    depth = len(model.blocks)
    full = model.patch_embed.num_patches + model.num_prefix_tokens
    stages = list(method.stages)
    mid = method.site == "mid"
    tokens, n, total = full, 0, 0.0
    for b in range(depth):
        if n < len(stages) and stages[n] == b:
            before, tokens = tokens, kept_mean[n]
            n += 1
            total += 0.5 * (before + tokens) if mid else tokens
        else:
            total += tokens
    return total / (depth * full)


def evaluate(model, pruned, images, labels, dense_top1) -> dict:
    correct = agree = 0
    kept_sum: list[float] = []
    patches = 0.0
    with torch.inference_mode():
        for x, y, d in zip(images.split(BATCH), labels.split(BATCH), dense_top1.split(BATCH)):
            top1 = pruned(x).argmax(-1)
            correct += int((top1 == y).sum())
            agree += int((top1 == d).sum())
            st = pruned.last_stats
            if st is not None:
                kept = [float(k.sum()) for k in st.kept]
                kept_sum = kept if not kept_sum else [a + b for a, b in zip(kept_sum, kept)]
                patches += float(st.kept_patch_mask.sum())
    n = images.shape[0]
    kept_mean = [k / n for k in kept_sum]
    return {"top1": correct / n, "agreement": agree / n, "kept_mean": [round(k, 2) for k in kept_mean],
            "patches_kept_mean": round(patches / n, 2) if kept_sum else None,
            "token_fraction": round(token_fraction(model, pruned.method, kept_mean), 4) if kept_sum else 1.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write (a .md table goes beside it)")
    parser.add_argument("--quick", action="store_true", help="a few points on 50 photos (a smoke test)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out and run only the grid points missing there")
    args = parser.parse_args()
    from tqdm import tqdm

    torch.manual_seed(0)
    model = sample_data.load_model()
    t0 = time.perf_counter()
    images, labels = sample_data.load_images(model, indices=range(50) if args.quick else None)
    print(f"{images.shape[0]} photos loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    with torch.inference_mode():
        dense_top1 = torch.cat([model(x).argmax(-1) for x in images.split(BATCH)])
    dense = float((dense_top1 == labels).float().mean())
    calib = images[::5]
    grid = QUICK if args.quick else GRID
    points = [(m, v, opt, val, fixed) for m, v, opt, vals, fixed in grid for val in vals]
    rows = [{"method": "dense", "variant": None, "option": None, "value": None, "top1": dense, "agreement": 1.0,
             "kept_mean": [], "patches_kept_mean": None, "token_fraction": 1.0, "loss_points": 0.0}]
    done: dict[tuple, dict] = {}
    if args.resume and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())["rows"]
        if old[0]["top1"] != dense:
            raise SystemExit(f"--resume: dense top-1 {dense} differs from the file's {old[0]['top1']}")
        done = {(r["method"], r["variant"], r["option"], r["value"]): r for r in old[1:]}
    todo = [p for p in points if p[:4] not in done]
    predictors = None
    for method, variant, option, value, fixed in tqdm(todo, desc="sweep", unit="point", dynamic_ncols=True):
        opts = {"variant": variant, **fixed}
        note = None
        if option == "calibrated keep_rate":
            opts["thresholds"] = calibrate_thresholds(model, calib, keep_rate=value, batch_size=BATCH)
            note = (f"thresholds {', '.join(f'{t:.4g}' for t in opts['thresholds'])} calibrated on {calib.shape[0]} "
                    "photos")
        elif option.startswith("keep_rate"):
            opts["keep_rate"] = value
        else:
            opts[option] = value
        if method == "dynamicvit":
            if predictors is None:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    predictors = make_predictors(model.embed_dim, 3).eval()
            opts["predictors"] = predictors
        pruned = raggedvit.prune(model, method, layout="packed", attention="reference", **opts).eval()
        t1 = time.perf_counter()
        row = {"method": method, "variant": variant, "option": option, "value": value,
               **evaluate(model, pruned, images, labels, dense_top1), "seconds": round(time.perf_counter() - t1, 1)}
        row["loss_points"] = round(100 * (dense - row["top1"]), 2)
        if note:
            row["note"] = note
        done[(method, variant, option, value)] = row
        tqdm.write(f"{method:<13}{variant:<9}{option} = {value}: top-1 {row['top1']:.1%} "
                   f"({-row['loss_points']:+.1f}), kept {row['kept_mean']}, tokens {row['token_fraction']:.3f}")
    rows += [done[p[:4]] for p in points if p[:4] in done]
    env = {"torch": torch.__version__, "timm": __import__("timm").__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    config = {"model": sample_data.MODEL_NAME, "weights": "trained (sample data)", "images": int(images.shape[0]),
              "dtype": "float32", "device": "cpu", "layout": "packed", "attention": "reference", "batch_size": BATCH,
              "threshold_l2_calibration": "every 5th photo (100 of 500)", "dynamicvit": "seed-0 random predictors",
              "standard_error_points": round(100 * (dense * (1 - dense) / images.shape[0]) ** 0.5, 2)}
    out = Path(args.out)
    out.write_text(json.dumps({"kind": "defaults-sweep", "env": env, "config": config, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows, config))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def markdown(rows: list[dict], config: dict) -> str:
    lines = [f"# Defaults sweep: {config['model']}, {config['images']} labelled photos, {config['dtype']}, "
             f"{config['device']}, {config['layout']} layout",
             "",
             f"Top-1 over {config['images']} photos (one per class) has a standard error of about "
             f"{config['standard_error_points']} points. Loss = dense top-1 minus the method's, in points. Kept = "
             "mean tokens per image after each stage (CLS and an EViT fused token included). Tokens = mean tokens "
             "per block relative to dense (a FLOP proxy). Threshold-L2 thresholds: calibrated on "
             f"{config['threshold_l2_calibration']}. DynamicViT: {config['dynamicvit']} (not usable, shown for "
             "reference).",
             "",
             "| method | variant | option | value | top-1 | loss | agree | tokens | kept per stage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = " > ".join(f"{k:.0f}" for k in r["kept_mean"]) or "-"
        lines.append(f"| {r['method']} | {r['variant'] or '-'} | {r['option'] or '-'} | "
                     f"{'-' if r['value'] is None else r['value']} | {r['top1']:.1%} | {r['loss_points']:.1f} | "
                     f"{r['agreement']:.1%} | {r['token_fraction']:.3f} | {kept} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
