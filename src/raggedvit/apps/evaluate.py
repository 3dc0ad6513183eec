"""``raggedvit eval --data DIR``: top-1, agreement with the dense model, kept tokens and images/s over a folder.

``DIR`` is an ImageFolder tree (class folders named by ImageNet synset id, e.g. ``n01440764``, give top-1;
other names give agreement only) or a flat folder of images. Images go through timm's eval transform for
the model (``resolve_data_config`` + ``create_transform``), loaded by ``torch.utils.data.DataLoader`` worker
processes. Every batch runs the dense model and each ``--method`` pruned with ``raggedvit.prune``.

Speed is model time only (data loading excluded), synchronized per batch; the first batch is a warm-up
and is not timed when there is more than one. Threshold-L2 is calibrated on the first batch (printed).
``--json OUT`` writes ``{"kind": "eval", "env": ..., "config": ..., "rows": [...]}``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..runtime.arguments import add_common_arguments
from ..runtime.device import environment, resolve_attention, resolve_device, resolve_dtype, synchronize
from ..runtime.errors import UsageError, run_command
from ..runtime.loading import load_model
from ..runtime.methods import LAYOUTS, add_method_arguments, build_pruned, check_methods
from .images import ImageFiles, collate_images, scan_folder


def add_arguments(parser) -> None:
    """Arguments of ``raggedvit eval``."""
    parser.add_argument("--data", required=True, metavar="DIR", help="ImageFolder tree or flat folder of images")
    add_common_arguments(parser)
    parser.add_argument("--method", nargs="+", default=["evit"], metavar="METHOD",
                        help="pruning method(s), or all (default evit)")
    add_method_arguments(parser)
    parser.add_argument("--layout", default="packed", choices=LAYOUTS, help="token layout (default packed)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="DataLoader worker processes (0 = load in the main process)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate a fixed subset of N images")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip image files that cannot be decoded (counted) instead of stopping")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")


def main(args) -> int:
    """Run the evaluation; returns the exit status."""
    return run_command("eval", lambda: _run(args))


@dataclass
class Tally:
    """Running totals of one pipeline over the dataset."""

    name: str
    method: str
    correct: int = 0
    agree: int = 0
    images: int = 0
    timed_images: int = 0
    seconds: float = 0.0
    stage_blocks: tuple[int, ...] = ()
    kept_sum: list[float] = field(default_factory=list)
    kept_min: list[int] = field(default_factory=list)
    kept_max: list[int] = field(default_factory=list)
    patches_sum: float = 0.0

    def add_stats(self, st) -> None:
        """Accumulate a ``last_stats`` object (kept tokens per stage, kept patches)."""
        self.stage_blocks = tuple(st.stage_blocks)
        kept = [k.detach().cpu() for k in st.kept]
        if not self.kept_sum:
            self.kept_sum = [0.0] * len(kept)
            self.kept_min = [10**9] * len(kept)
            self.kept_max = [0] * len(kept)
        for s, k in enumerate(kept):
            self.kept_sum[s] += float(k.sum())
            self.kept_min[s] = min(self.kept_min[s], int(k.min()))
            self.kept_max[s] = max(self.kept_max[s], int(k.max()))
        self.patches_sum += float(st.kept_patch_mask.sum())

    def row(self, labelled: bool) -> dict:
        """This pipeline as a JSON row."""
        n = max(self.images, 1)
        return {
            "pipeline": self.name, "method": self.method, "images": self.images,
            "top1": self.correct / n if labelled else None,
            "agreement": self.agree / n if self.method != "dense" else 1.0,
            "images_per_s": self.timed_images / self.seconds if self.seconds > 0 else None,
            "stage_blocks": list(self.stage_blocks),
            "kept_mean": [s / n for s in self.kept_sum], "kept_min": self.kept_min, "kept_max": self.kept_max,
            "patches_kept_mean": self.patches_sum / n if self.kept_sum else None,
        }


def _check_args(args) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be 0 or more")
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--json {args.json}: folder {parent} does not exist")


def _run(args) -> int:
    _check_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention, attention_note = resolve_attention(args.attention, device, dtype)
    methods = check_methods(args.method)
    index = scan_folder(args.data, args.limit)
    loaded = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, device=device, dtype=dtype)
    model, weights_note = loaded.model, loaded.weights
    from timm.data import create_transform, resolve_data_config
    from tqdm import tqdm

    transform = create_transform(**resolve_data_config({}, model=model))
    labelled = index.labels is not None
    print(f"raggedvit eval: {args.model} on {len(index.paths)} images from {index.root} ({index.layout})")
    for note in index.notes:
        print(f"  data      : {note}")
    print(f"  device    : {device}, {str(dtype).removeprefix('torch.')}; batch {args.batch_size}, "
          f"{args.workers} loader worker(s)")
    print(f"  weights   : {weights_note}")
    if args.layout == "packed":
        print(f"  attention : packed layout -> {attention}: {attention_note}")
    else:
        print("  attention : padded layout -> torch SDPA with a boolean key-padding mask (the baseline)")
    loader = torch.utils.data.DataLoader(
        ImageFiles(index.paths, index.labels, transform), batch_size=args.batch_size, shuffle=False,
        num_workers=args.workers, collate_fn=collate_images, pin_memory=device.type == "cuda")
    tallies = [Tally("dense", "dense")] + [Tally(f"{m} ({args.layout})", m) for m in methods]
    pruned: dict[str, torch.nn.Module] = {}
    skipped: list[str] = []
    timed_from = 1 if len(loader) > 1 else 0
    with torch.inference_mode():
        for step, batch in enumerate(tqdm(loader, desc="eval", unit="batch", dynamic_ncols=True)):
            if batch.errors:
                if not args.skip_unreadable:
                    raise UsageError(f"cannot read image {batch.errors[0]}. Remove the file or pass "
                                     "--skip-unreadable to skip such files")
                skipped += batch.errors
            if batch.images is None:
                continue
            x = batch.images.to(device=device, dtype=dtype, non_blocking=True)
            if not pruned:
                for m in methods:
                    pruned[m], notes = build_pruned(
                        loaded, m, layout=args.layout, attention=attention, variant=args.variant,
                        keep_rate=args.keep_rate, calibration=x,
                        calibration_source=f"the first batch ({x.shape[0]} images) of the evaluated data")
                    for note in notes:
                        tqdm.write(f"  {note}")
            dense_top1 = _step(tallies[0], model, x, batch.labels, None, device, step >= timed_from)
            for tally, m in zip(tallies[1:], methods):
                _step(tally, pruned[m], x, batch.labels, dense_top1, device, step >= timed_from)
    if tallies[0].images == 0:
        raise UsageError(f"--data {args.data}: none of the {len(index.paths)} image files could be read")
    rows = [t.row(labelled) for t in tallies]
    _print_table(rows, labelled, timed_from)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
    if args.json:
        config = {"model": args.model, "weights": weights_note, "data": str(index.root), "layout": args.layout,
                  "variant": args.variant, "keep_rate": args.keep_rate,
                  "attention": attention, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                  "batch_size": args.batch_size, "images": tallies[0].images, "labelled": labelled,
                  "skipped": len(skipped), "notes": index.notes}
        Path(args.json).write_text(json.dumps({"kind": "eval", "env": environment(device), "config": config,
                                               "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _step(tally: Tally, fn, x, labels, dense_top1, device, timed: bool) -> torch.Tensor:
    synchronize(device)
    t0 = time.perf_counter()
    logits = fn(x)
    synchronize(device)
    if timed:
        tally.seconds += time.perf_counter() - t0
        tally.timed_images += x.shape[0]
    top1 = logits.float().argmax(-1).cpu()
    tally.images += x.shape[0]
    tally.correct += int((top1 == labels).sum())
    if dense_top1 is not None:
        tally.agree += int((top1 == dense_top1).sum())
        tally.add_stats(fn.last_stats)
    return top1


def _print_table(rows: list[dict], labelled: bool, timed_from: int) -> None:
    note = "after a 1-batch warm-up" if timed_from else "single batch, includes warm-up"
    dense_speed = rows[0]["images_per_s"]
    print(f"\n{'pipeline':<22}{'top-1':>8}{'agree':>8}{'img/s':>10}{'vs dense':>9}  {'patches kept':>12}  "
          f"kept tokens per stage (mean[min-max])   [img/s: model time only, {note}]")
    for r in rows:
        top1 = f"{r['top1']:.2%}" if r["top1"] is not None else "-"
        agree = "-" if r["method"] == "dense" else f"{r['agreement']:.2%}"
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        ratio = f"{r['images_per_s'] / dense_speed:.2f}x" if r["images_per_s"] and dense_speed else "-"
        patches = "all" if r["patches_kept_mean"] is None else f"{r['patches_kept_mean']:.1f}"
        n = len(r["kept_mean"])  # with many stages (ATS), ranges only for the last one
        stages = " > ".join(f"{m:.0f}" + ("" if lo == hi or (n > 4 and s < n - 1) else f"[{lo}-{hi}]")
                            for s, (m, lo, hi) in enumerate(zip(r["kept_mean"], r["kept_min"], r["kept_max"])))
        print(f"{r['pipeline']:<22}{top1:>8}{agree:>8}{speed:>10}{ratio:>9}  {patches:>12}  {stages or '-'}")
    if not labelled:
        print("(no labels: top-1 not available; agreement = same top-1 class as the dense model)")
