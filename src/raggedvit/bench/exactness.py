"""``raggedvit bench exactness``: packed vs padded logits and keep decisions on real photos (issue 3).

For every model, method and variant the pruned model is built in both layouts on the same weights
(``packed`` with ``--attention``, default the Triton kernel on CUDA; ``padded`` = the SDPA baseline) and
both run the same images in ``--dtype`` (default float16 on CUDA). Reported per row:

* ``max_logit_diff``: max |packed - padded| over all images, and ``max_logit_diff_same_decisions`` over the
  images whose keep decisions are identical in both layouts (same ``kept_patch_mask`` and same kept count
  at every stage); ``decisions_identical`` counts those images. A decision flip (scores tied to within
  fp16 noise, likely with random weights) is thereby told apart from arithmetic noise.
* ``top1_agree``: same argmax in both layouts; ``top1_flip_max_fp32_margin``: fp32 top-2 gap of the others.
* ``packed_vs_fp32`` / ``padded_vs_fp32``: max |logit diff| of each layout against the padded layout in
  float32 (TF32 off), with their keep-decision agreement against it.
* ``noise_decisions_identical`` / ``noise_top1_agree`` / ``noise_max_logit_diff``: the noise floor, the padded
  layout against itself run with PyTorch's math SDPA kernel (same model, same dtype, another correct kernel).
  Rules with discontinuous decisions (ATS's sample points, near-tied top-k scores) flip at this floor too.
* kept tokens per stage (mean, min, max over images, prefix tokens included; packed layout).

Method ``none`` compares the packed layout with timm's own forward. Images:
:func:`raggedvit.runtime.photos.make_images` builds them deterministically from the colour photos scikit-image
ships (the photos, their mirror images and seeded random-resized crops at several scales, half of them
flipped), in the model's input size and normalisation. Threshold-L2 (adaptive) thresholds are calibrated on
further generated images disjoint from the evaluated ones (keep rate ``CALIBRATION_KEEP_RATE`` per stage);
DynamicViT predictors without a checkpoint are a seed-0 random init shared by every layout and dtype. Random
model weights are seeded (0) as well.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..pruning import METHODS as REGISTRY
from ..pruning.threshold_l2 import CALIBRATION_KEEP_RATE
from ..runtime.arguments import split_names
from ..runtime.device import environment, resolve_attention, resolve_device, resolve_dtype
from ..runtime.errors import UsageError, run_command
from ..runtime.loading import WEIGHT_CHOICES, LoadedModel, check_model_name, load_model
from ..runtime.methods import build_pruned
from ..runtime.photos import make_images
from . import timing

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
VARIANTS = ("fixed", "adaptive")
TOLERANCE = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``raggedvit bench exactness``."""
    a = parser.add_argument
    a("--models", nargs="+", metavar="MODEL", help=f"timm models (default {' '.join(MODELS)}; deit_tiny etc. ok)")
    a("--methods", nargs="+", metavar="METHOD", help="default (or 'all'): every registered method, 'none' first")
    a("--variants", nargs="+", metavar="VARIANT", help="default: fixed adaptive")
    a("--num-images", type=int, help="evaluated images (default 256; --quick on CPU 32)")
    a("--calib-images", type=int, help="extra images for Threshold-L2 calibration (default 64; CPU quick 16)")
    a("--batch-size", type=int, default=64, help="images per forward (default 64)")
    a("--checkpoint", nargs="+", metavar="PATH", help="weights file(s), one per --models entry, in order")
    a("--weights", choices=WEIGHT_CHOICES, default="auto",
      help="without --checkpoint: timm pretrained when reachable (auto), required (pretrained) or random")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    a("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
      help="auto = float16 on cuda, float32 on cpu")
    a("--attention", default="auto", help="packed layout's backend: auto (triton on cuda, reference on cpu) or a name")
    a("--tol", type=float, help="max |logit diff| allowed (default 0.004 float16, 0.03 bfloat16, 1e-4 float32)")
    a("--seed", type=int, default=0, help="image generator seed (default 0)")
    a("--sample-data", action="store_true",
      help="the labelled ImageNet sample photos (raggedvit.sample_data: $RAGGEDVIT_DATA or ../shared/data) instead "
           "of generated crops: the first --num-images are evaluated (top-1 reported), the next --calib-images "
           "calibrate Threshold-L2")
    a("--quick", action="store_true", help="deit_small, 256 images (GPU, < 2 min); CPU: deit_tiny, 32 images")
    a("--strict", action="store_true", help="exit status 1 when a row fails its tolerance")
    a("--out", default="benchmarks/results", help="output folder (default benchmarks/results)")


def main(args) -> int:
    """Run the comparison; writes ``exactness-<device>-<stamp>.json`` and ``.md`` under ``--out``."""
    return run_command("bench exactness", lambda: _run(args))


def _settings(args, device: torch.device) -> dict:
    """Validated settings (defaults from ``--quick`` and the device); :class:`UsageError` on bad values."""
    cpu = device.type != "cuda"
    quick_models = ["deit_tiny_patch16_224" if cpu else "deit_small_patch16_224"]
    models = split_names(args.models) or (quick_models if args.quick else list(MODELS))
    models = [m + "_patch16_224" if m in ("deit_tiny", "deit_small", "deit_base") else m for m in models]
    for m in models:
        check_model_name(m)
    methods = split_names(args.methods) or ["all"]
    registered = tuple(REGISTRY)
    methods = list(dict.fromkeys(x for m in methods for x in (registered if m == "all" else [m])))
    bad = [m for m in methods if m not in registered]
    if bad:
        raise UsageError(f"unknown method(s) {', '.join(bad)}; valid: all, {', '.join(registered)}")
    variants = list(dict.fromkeys(split_names(args.variants) or VARIANTS))
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise UsageError(f"unknown variant(s) {', '.join(bad)}; valid: {', '.join(VARIANTS)}")
    n = args.num_images if args.num_images is not None else (32 if args.quick and cpu else 256)
    calib = args.calib_images if args.calib_images is not None else (16 if args.quick and cpu else 64)
    for flag, v in (("--num-images", n), ("--calib-images", calib), ("--batch-size", args.batch_size)):
        if v < 1:
            raise UsageError(f"{flag} {v}: must be at least 1")
    if args.checkpoint and len(args.checkpoint) != len(models):
        raise UsageError(f"--checkpoint: {len(args.checkpoint)} file(s) for {len(models)} model(s) "
                         f"({' '.join(models)}); pass one file per --models entry")
    if args.tol is not None and not args.tol > 0:
        raise UsageError(f"--tol {args.tol}: must be > 0")
    dtype = resolve_dtype(args.dtype, device)
    attention, why = resolve_attention(args.attention, device, dtype)
    combos = [(m, v) for m in methods for v in (["-"] if m == "none" else variants)]
    return dict(models=models, combos=combos, n=n, calib=calib, dtype=dtype, attention=attention,
                attention_note=why, tol=args.tol if args.tol is not None else TOLERANCE[dtype])


class _TF32Off:
    """Context: TF32 off in cuBLAS and cuDNN (a true float32 reference); restores the previous flags."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def _forward_all(fn, images: torch.Tensor, device, dtype, batch: int) -> dict:
    """Run ``fn(batch) -> (logits, stats or None)`` over ``images``; logits, kept counts and masks on the CPU."""
    logits, kept, masks = [], [], []
    with torch.inference_mode():
        for chunk in images.split(batch):
            out, st = fn(chunk.to(device=device, dtype=dtype))
            logits.append(out.float().cpu())
            if st is not None:
                kept.append(torch.stack(st.kept, 1).cpu() if st.kept else torch.zeros(len(chunk), 0, dtype=torch.long))
                masks.append(st.kept_patch_mask.cpu())
    res = {"logits": torch.cat(logits)}
    if kept:
        res.update(kept=torch.cat(kept), mask=torch.cat(masks))
    return res


def _same_decisions(a: dict, b: dict) -> torch.Tensor:
    """``(N,)`` bool: identical final patch mask and per-stage kept counts (True where one side has no stats)."""
    if "mask" not in a or "mask" not in b:
        return torch.ones(a["logits"].shape[0], dtype=torch.bool)
    return (a["mask"] == b["mask"]).all(1) & (a["kept"] == b["kept"]).all(1)


def _max(x: torch.Tensor) -> float | None:
    return float(x.max()) if x.numel() else None


def _compare(a: dict, b: dict, ref: dict) -> dict:
    """Max |logit diff| over all images and over identical-decision images; agreement counts; the largest
    top-1 - top-2 logit margin of ``ref`` (float32) among images whose top-1 differs (small = a near-tie)."""
    same = _same_decisions(a, b)
    diff = (a["logits"] - b["logits"]).abs().amax(1)
    flip = a["logits"].argmax(1) != b["logits"].argmax(1)
    top2 = ref["logits"].topk(2, dim=1).values
    return {"max_logit_diff": _max(diff), "max_logit_diff_same_decisions": _max(diff[same]),
            "top1_agree": int((~flip).sum()), "top1_flip_max_fp32_margin": _max((top2[:, 0] - top2[:, 1])[flip]),
            "decisions_identical": int(same.sum()), "decision_diff_images": (~same).nonzero().flatten().tolist()}


def _status(cmp: dict, n: int, tol: float) -> str:
    problems = []
    if cmp["max_logit_diff"] > tol:
        problems.append(f"max diff {cmp['max_logit_diff']:.2e} > {tol:g}")
    if cmp["top1_agree"] != n:
        problems.append(f"top-1 differs on {n - cmp['top1_agree']}/{n} (fp32 top-2 margin there "
                        f"<= {cmp['top1_flip_max_fp32_margin']:.1e})")
    flips = n - cmp["decisions_identical"]
    note = ""
    if flips:
        same = cmp["max_logit_diff_same_decisions"]
        note = f"keep decisions differ on {flips}/{n} image(s)" + (
            f"; identical-decision images: max diff {same:.2e}" if same is not None else "")
    if problems:
        return "FAIL: " + "; ".join(problems + ([note] if note else []))
    return "pass" + (f" ({note})" if note else "")


def _kept_stages(res: dict, blocks) -> list[dict]:
    if "kept" not in res:
        return []
    k = res["kept"].float()
    return [{"block": b, "mean": float(k[:, s].mean()), "min": int(k[:, s].min()), "max": int(k[:, s].max())}
            for s, b in enumerate(blocks)]


def _load(name: str, ckpt: str | None, args, s: dict, device) -> tuple[LoadedModel, LoadedModel]:
    """``(model in --dtype, float32 copy)`` with identical weights (random weights: seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = load_model(name, weights=args.weights, checkpoint=ckpt, device=device, dtype=torch.float32)
    if s["dtype"] == torch.float32:
        return ref, ref
    pred = None if ref.predictor_state is None else {k: v.to(s["dtype"]) for k, v in ref.predictor_state.items()}
    return LoadedModel(copy.deepcopy(ref.model).to(s["dtype"]).eval(), ref.weights, pred), ref


def _run_model(name: str, args, s: dict, device, bar) -> tuple[dict, list[dict]]:
    """All rows of one model; returns ``(model info, rows)``."""
    from timm.data import resolve_data_config

    ckpt = args.checkpoint[s["models"].index(name)] if args.checkpoint else None
    low, ref = _load(name, ckpt, args, s, device)
    fp32_same = low is ref
    labels = None
    if args.sample_data:
        images, labels = _sample_photos(low.model, s["n"] + s["calib"])
        descr = [f"sample photo {i}" for i in range(s["n"])]
        src = f"{s['calib']} sample photos disjoint from the {s['n']} evaluated ones (indices {s['n']}..)"
        labels = labels[: s["n"]]
    else:
        images, descr = make_images(s["n"] + s["calib"], resolve_data_config({}, model=low.model), seed=args.seed)
        src = (f"{s['calib']} generated images disjoint from the {s['n']} evaluated ones (generator indices "
               f"{s['n']}..{s['n'] + s['calib'] - 1})")
    evals, calib = images[: s["n"]], images[s["n"]:]
    info = {"weights": low.weights, "images": descr[: s["n"]], "notes": []}
    print(f"{name}: weights: {low.weights}", flush=True)
    cache_low, cache_ref, rows = {}, {}, []
    for method, variant in s["combos"]:
        t0 = time.perf_counter()
        bar.set_postfix_str(f"{name.split('_patch')[0]} {method} {variant}")
        if method == "none":
            packed, _ = build_pruned(low, "none", layout="packed", attention=s["attention"])
            runs = {"packed": lambda x, m=packed: (m(x), m.last_stats),
                    "padded": lambda x: (low.model(x), None), "fp32": lambda x: (ref.model(x), None)}
            blocks = ()
        else:
            kw = dict(variant=variant, calibration=calib.to(device=device, dtype=s["dtype"]),
                      calibration_source=src)
            packed, notes = build_pruned(low, method, layout="packed", attention=s["attention"], cache=cache_low, **kw)
            padded, more = build_pruned(low, method, layout="padded", attention="reference", cache=cache_low, **kw)
            if "threshold_l2" in cache_low:
                cache_ref.setdefault("threshold_l2", cache_low["threshold_l2"])  # same thresholds in fp32
            padded32, _ = build_pruned(ref, method, layout="padded", attention="reference", cache=cache_ref, **kw)
            if method == "dynamicvit" and not low.predictor_state:
                notes.append("dynamicvit: the float32 reference uses the same seed-0 predictors in float32")
            info["notes"] += [n for n in notes + more if n not in info["notes"]]
            runs = {k: (lambda x, m=m: (m(x), m.last_stats)) for k, m in
                    (("packed", packed), ("padded", padded), ("fp32", padded32))}
            blocks = tuple(pl.block for pl in packed.plan)
        runs["padded_math"] = runs["padded"]  # the noise floor: the same padded model, another SDPA kernel
        res = {}
        for layout, fn in runs.items():
            if layout == "fp32" and fp32_same:
                res["fp32"] = res["padded"]
            else:
                with _TF32Off() if layout == "fp32" or s["dtype"] == torch.float32 else contextlib.nullcontext(), \
                        sdpa_kernel([SDPBackend.MATH]) if layout == "padded_math" else contextlib.nullcontext():
                    dtype = torch.float32 if layout == "fp32" else s["dtype"]
                    res[layout] = _forward_all(fn, evals, device, dtype, args.batch_size)
            bar.update(1)
        row = dict(model=name, method=method, variant=variant, dtype=str(s["dtype"]).removeprefix("torch."),
                   attention=s["attention"], padded="timm forward" if method == "none" else "sdpa",
                   num_images=s["n"], tolerance=s["tol"], **_compare(res["packed"], res["padded"], res["fp32"]))
        noise = _compare(res["padded_math"], res["padded"], res["fp32"])
        row.update(noise_max_logit_diff=noise["max_logit_diff"], noise_decisions_identical=noise["decisions_identical"],
                   noise_top1_agree=noise["top1_agree"])
        for layout in ("packed", "padded"):
            c = _compare(res[layout], res["fp32"], res["fp32"])
            row[f"{layout}_vs_fp32"] = c["max_logit_diff"]
            row[f"{layout}_vs_fp32_same_decisions"] = c["max_logit_diff_same_decisions"]
            row[f"{layout}_vs_fp32_decisions_identical"] = c["decisions_identical"]
            row[f"{layout}_vs_fp32_top1_agree"] = c["top1_agree"]
            if labels is not None:  # top-1 against the ImageNet labels
                row[f"{layout}_top1"] = float((res[layout]["logits"].argmax(1) == labels).float().mean())
        row.update(kept_stages=_kept_stages(res["packed"], blocks), status=_status(row, s["n"], s["tol"]),
                   seconds=time.perf_counter() - t0)
        rows.append(row)
        del runs, res
    for note in info["notes"]:
        print(f"  {note}", flush=True)
    return info, rows


def _sample_photos(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` labelled sample photos in ``model``'s eval transform; UsageError if there are fewer."""
    from .. import sample_data

    root = sample_data.locate()
    if root is None:
        raise UsageError(f"--sample-data: {sample_data.missing_reason()}")
    total = len(sample_data.sample_files(root))
    if n > total:
        raise UsageError(f"--sample-data: --num-images + --calib-images = {n} > the {total} sample photos")
    return sample_data.load_images(model, range(n), root)


def _run(args) -> int:
    device = resolve_device(args.device)
    s = _settings(args, device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot create the folder ({e.strerror or e})") from None
    env = environment(device)
    dt = str(s["dtype"]).removeprefix("torch.")
    print(f"raggedvit bench exactness: {len(s['models'])} model(s) x {len(s['combos'])} method/variant(s), "
          f"{s['n']} images, batch {args.batch_size}, {dt} on {device} ({env['gpu'] or env['cpu']})")
    print(f"  packed layout: {s['attention']} ({s['attention_note']}); padded layout: SDPA baseline; "
          f"reference: padded layout in float32 (TF32 off); tolerance {s['tol']:g}")
    from tqdm import tqdm

    bar = tqdm(total=len(s["models"]) * len(s["combos"]) * 4, desc="bench exactness", file=sys.stderr)
    models, rows = {}, []
    for name in s["models"]:
        models[name], r = _run_model(name, args, s, device, bar)
        rows += r
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    settings = {k: v for k, v in s.items() if k not in ("combos", "dtype")}
    settings.update(dtype=dt, batch_size=args.batch_size, seed=args.seed, calibration_keep_rate=CALIBRATION_KEEP_RATE,
                    images="labelled ImageNet sample photos (raggedvit.sample_data)" if args.sample_data else
                    "scikit-image photos, their mirror images, seeded random-resized crops (see make_images)",
                    fp32_reference="padded layout in float32, TF32 off" if dt != "float32" else
                    "the padded layout itself (--dtype float32)")
    result = {"kind": "exactness", "env": env, "settings": settings, "models": models, "rows": rows}
    path = timing.write_json(result, out, "exactness", stamp=_dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    table = _table(rows)
    md = path.with_suffix(".md")
    md.write_text(_markdown(result, table, path))
    print(f"wrote {path}\nwrote {md}\n")
    print("\n".join(table))
    failed = sum(not r["status"].startswith("pass") for r in rows)
    print(f"\n{len(rows) - failed}/{len(rows)} rows pass (max |logit diff| <= {s['tol']:g} and identical top-1)")
    return 1 if failed and args.strict else 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2e}"


def _table(rows: list[dict]) -> list[str]:
    """Markdown table: one row per (model, method, variant)."""
    labelled = any("packed_top1" in r for r in rows)
    lines = ["| model | method | variant | max_logit_diff | max_logit_diff_same_decisions | top1_agree | "
             "decisions_identical | noise floor: decisions / top-1 | packed / padded vs fp32 | "
             + ("top-1 packed / padded | " if labelled else "") + "kept per stage: block mean [min..max] | status |",
             "|---|---|---|---:|---:|---:|---:|---|---|" + ("---|" if labelled else "") + "---|---|"]
    for r in rows:
        n = r["num_images"]
        kept = ", ".join(f"b{k['block']} {k['mean']:.1f} [{k['min']}..{k['max']}]" for k in r["kept_stages"]) or "-"
        top1 = f"{r['packed_top1']:.1%} / {r['padded_top1']:.1%} | " if labelled else ""
        lines.append(f"| {r['model'].removesuffix('_patch16_224')} | {r['method']} | {r['variant']} | "
                     f"{_fmt(r['max_logit_diff'])} | {_fmt(r['max_logit_diff_same_decisions'])} | "
                     f"{r['top1_agree']}/{n} | {r['decisions_identical']}/{n} | "
                     f"{r['noise_decisions_identical']}/{n} / {r['noise_top1_agree']}/{n} | "
                     f"{_fmt(r['packed_vs_fp32'])} / {_fmt(r['padded_vs_fp32'])} | {top1}{kept} | {r['status']} |")
    return lines


def _markdown(result: dict, table: list[str], path: Path) -> str:
    env, st = result["env"], result["settings"]
    head = [f"# raggedvit bench exactness ({env.get('gpu') or env.get('cpu')})", "",
            f"torch {env['torch']}, triton {env['triton']}, timm {env['timm']}, CUDA {env['cuda']}, "
            f"driver {env['driver']}, {env['date']}; `{env['command']}`", "",
            f"{st['n']} images ({st['images']}, seed {st['seed']}), {st['dtype']}, batch {st['batch_size']}; "
            f"packed layout: `{st['attention']}` attention; padded layout: SDPA (method none: timm's forward); "
            f"fp32 reference: {st['fp32_reference']}. Tolerance {st['tol']:g}. Raw data: {path.name}.", ""]
    for name, info in result["models"].items():
        head.append(f"* {name}: weights {info['weights']}")
        head += [f"  * {n}" for n in info["notes"]]
    head += ["", "Keep decisions identical = same final kept-patch mask and same kept count at every stage; "
             "max_logit_diff_same_decisions is over those images only. Kept counts include prefix tokens "
             "(and EViT's fused token), packed layout. Noise floor: the padded layout against itself run with "
             "PyTorch's math SDPA kernel instead of its default one (two correct implementations of the same "
             "model in the same dtype): the decisions and top-1 on which those agree. A rule whose decisions "
             "flip between those two flips between the layouts as often, and for the same reason.", ""]
    return "\n".join(head + table) + "\n"
