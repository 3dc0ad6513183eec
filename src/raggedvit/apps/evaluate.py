"""``raggedvit eval --data DIR``: top-1, agreement with the dense model, kept tokens and images/s over a folder.

``DIR`` is an ImageFolder tree (class folders named by ImageNet synset id, e.g. ``n01440764``, give top-1;
other names give agreement only) or a flat folder of images. Every batch runs the dense model and each
``--method`` pruned with ``raggedvit.prune``.

Each model runs in its fastest mode (``--mode auto``): on CUDA, one CUDA graph per batch size, the dense model
as a user deploys it, ``torch.compile(mode="reduce-overhead")`` in the faster memory format
(:class:`~raggedvit.runtime.graphs.DenseCompiled`; ``--dense graph``: timm's forward in a plain graph,
:class:`~raggedvit.runtime.graphs.DenseGraph`), and every packed pruned model captured whole
(:func:`raggedvit.models.graph.capture`); the last partial batch gets a graph of its own size (no padding
images). ``--layout padded`` runs the padded baseline in its fastest mode: every stage padded to its static
capacity, under ``torch.compile(mode="reduce-overhead")`` per batch size
(:class:`~raggedvit.runtime.graphs.PaddedCompiled`; ``--mode eager``: padded to the batch maximum, eager).
Graphs and compiles happen outside the timed region. An attention backend that cannot be captured runs
eagerly (said in the table). On the CPU everything is eager.

Images: ``--decode gpu`` (the default on CUDA) has DataLoader workers only read the files; the main process
decodes the batch's JPEGs in one nvJPEG call (``torchvision.io.decode_jpeg(..., device="cuda")``) and applies
timm's eval transform for the model on the GPU (:class:`~raggedvit.apps.images.TensorEvalTransform`: bicubic
resize of the short side to ``size / crop_pct``, centre crop, the model's mean/std). ``--decode cpu`` (the
default on the CPU) decodes with PIL and applies timm's own transform in the worker processes.

Speed, two figures per pipeline (the first batch is a warm-up and is not timed when there is more than one;
with ``--passes N`` the data is read N times as one stream, the first pass is the warm-up and passes 2..N are
timed: steady figures from a small folder, with compilation, capture and the loader workers' start-up behind,
and the workers reading ahead across the pass boundaries as they would in a larger folder):

* model: seconds inside the model calls only (input copy + replay, or the eager forward), synchronized before
  and after each call;
* end to end: the model seconds plus the batch's data seconds: waiting for the loader, host->device transfer,
  decoding and transform, synchronized (bookkeeping of the evaluation itself is excluded). All pipelines share
  one pass over the data, so with ``--decode cpu`` the loader workers keep decoding while the other pipelines
  compute: a pipeline run alone may wait longer (``--method X`` alone measures it exactly).

Threshold-L2 is calibrated on the first batch (printed). ``--json OUT`` writes ``{"kind": "eval", "env": ...,
"config": ..., "rows": [...]}``.
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
from ..runtime.graphs import MODES, BatchGraphs, graph_unavailable_reason
from ..runtime.loading import load_model
from ..runtime.methods import LAYOUTS, add_method_arguments, build_pruned, check_methods, usable_methods
from .images import (
    FileBytes,
    ImageFiles,
    TensorEvalTransform,
    collate_bytes,
    collate_images,
    decode_images,
    scan_folder,
)

DECODES = ("auto", "gpu", "cpu")


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
    parser.add_argument("--mode", default="auto", choices=MODES,
                        help="auto (default): CUDA graphs per batch size on CUDA where the model can be captured, "
                             "else eager; graph: require graphs (error otherwise); eager: no graphs")
    parser.add_argument("--decode", default="auto", choices=DECODES,
                        help="gpu: nvJPEG decoding + timm's eval transform on the GPU; cpu: PIL + timm's transform in "
                             "the loader workers; auto (default): gpu on CUDA when torchvision can, else cpu")
    parser.add_argument("--passes", type=int, default=1, metavar="N",
                        help="read the data N times: accuracy from the first pass, speed from passes 2..N (default "
                             "1: speed from every batch but the first)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")


def main(args) -> int:
    """Run the evaluation; returns the exit status."""
    return run_command("eval", lambda: _run(args))


@dataclass
class Tally:
    """Running totals of one pipeline over the dataset."""

    name: str
    method: str
    mode: str = "eager"
    correct: int = 0
    agree: int = 0
    images: int = 0
    timed_images: int = 0
    seconds: float = 0.0
    data_seconds: float = 0.0
    capture_seconds: float = 0.0
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
        e2e = self.seconds + self.data_seconds
        return {
            "pipeline": self.name, "method": self.method, "mode": self.mode, "images": self.images,
            "top1": self.correct / n if labelled else None,
            "agreement": self.agree / n if self.method != "dense" else 1.0,
            "images_per_s": self.timed_images / self.seconds if self.seconds > 0 else None,
            "images_per_s_e2e": self.timed_images / e2e if e2e > 0 else None,
            "timed_images": self.timed_images, "model_seconds": self.seconds, "e2e_seconds": e2e,
            "capture_seconds": self.capture_seconds,
            "stage_blocks": list(self.stage_blocks),
            "kept_mean": [s / n for s in self.kept_sum], "kept_min": self.kept_min, "kept_max": self.kept_max,
            "patches_kept_mean": self.patches_sum / n if self.kept_sum else None,
        }


def _check_args(args) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be 0 or more")
    if args.passes < 1:
        raise UsageError(f"--passes {args.passes}: must be at least 1")
    if args.json:
        parent = Path(args.json).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--json {args.json}: folder {parent} does not exist")


def gpu_decode_unavailable(device: torch.device) -> str | None:
    """None when ``--decode gpu`` can run on ``device``; else why not."""
    if device.type != "cuda":
        return f"it decodes on a CUDA device, this run is on {device}"
    try:
        import torchvision  # noqa: F401
        from torchvision.io import decode_jpeg  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401
    except ImportError as e:
        return f"torchvision with decode_jpeg and transforms.v2 is needed ({e})"
    return None


def resolve_decode(spec: str, device: torch.device) -> tuple[str, str]:
    """``(gpu|cpu, reason)`` for ``--decode``; :class:`UsageError` when ``gpu`` cannot run here."""
    reason = gpu_decode_unavailable(device)
    if spec == "gpu" and reason is not None:
        raise UsageError(f"--decode gpu: {reason}; use --decode cpu")
    if spec == "cpu":
        return "cpu", "PIL decoding + timm's eval transform in the loader workers (--decode cpu)"
    if reason is None:
        return "gpu", "nvJPEG decoding + timm's eval transform on the GPU" + (" (auto on cuda)" if spec == "auto"
                                                                              else "")
    return "cpu", ("PIL decoding + timm's eval transform in the loader workers (auto: GPU decoding unavailable, "
                   f"{reason})")


def _check_mode(mode: str, device: torch.device, layout: str, attention: str) -> None:
    """``--mode graph`` that cannot run here: :class:`UsageError` before any model is built."""
    if mode != "graph":
        return
    if device.type != "cuda":
        raise UsageError(f"--mode graph: CUDA graphs need a CUDA device, this run is on {device}; use --mode auto")
    if layout != "packed":
        raise UsageError("--mode graph: the padded layout is not captured whole; with --mode auto it runs at static "
                         "capacity under torch.compile (CUDA graphs inside), its fastest mode")
    from ..models.graph import graph_safe_backends

    if attention not in graph_safe_backends():
        raise UsageError(f"--mode graph: attention backend {attention!r} cannot be captured; graph-safe backends: "
                         f"{', '.join(graph_safe_backends())}")


class _Images:
    """Batches of model inputs from the loader: ``next_batch()`` -> ``(images on device or None, batch)``."""

    def __init__(self, args, index, cfg: dict, decode: str, device: torch.device, dtype: torch.dtype) -> None:
        from timm.data import create_transform

        self.decode, self.device, self.dtype = decode, device, dtype
        if decode == "gpu":
            self.tensor_transform = TensorEvalTransform(cfg)
            dataset, collate = FileBytes(index.paths, index.labels), collate_bytes
        else:
            dataset, collate = ImageFiles(index.paths, index.labels, create_transform(**cfg)), collate_images
        self.paths = index.paths
        n, size = len(index.paths), args.batch_size
        self.batches = [list(range(i, min(i + size, n))) for i in range(0, n, size)]  # one pass, in order
        # every pass's batches in one loader iteration: the workers read ahead across pass boundaries
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.batches * args.passes, num_workers=args.workers, collate_fn=collate,
            pin_memory=device.type == "cuda" and decode == "cpu")

    def __len__(self) -> int:
        """Batches per pass."""
        return len(self.batches)

    def __iter__(self):
        """``(pass, step within the pass, (images on device or None, batch))`` over every pass."""
        for k, batch in enumerate(self.loader):
            yield k // len(self.batches), k % len(self.batches), self._prepare(batch)

    def _prepare(self, batch):
        if self.decode == "cpu":
            x = None if batch.images is None else batch.images.to(device=self.device, dtype=self.dtype,
                                                                  non_blocking=True)
            return x, batch
        names = [str(self.paths[int(i)]) for i in batch.indices]
        decoded, errors = decode_images(batch.data, self.device, names)
        keep = [i for i, e in enumerate(errors) if e is None]
        batch.errors = batch.errors + [e for e in errors if e is not None]
        if len(keep) < len(decoded):
            batch.labels, batch.indices = batch.labels[keep], batch.indices[keep]
        if not keep:
            return None, batch
        return self.tensor_transform([decoded[i] for i in keep], self.dtype), batch


def _run(args) -> int:
    _check_args(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention, attention_note = resolve_attention(args.attention, device, dtype)
    decode, decode_note = resolve_decode(args.decode, device)
    _check_mode(args.mode, device, args.layout, attention)
    methods = check_methods(args.method)
    index = scan_folder(args.data, args.limit)
    loaded = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, device=device, dtype=dtype)
    methods, method_notes = usable_methods(args.method, methods, loaded, args.random_predictors)
    model, weights_note = loaded.model, loaded.weights
    from timm.data import resolve_data_config
    from tqdm import tqdm

    cfg = resolve_data_config({}, model=model)
    if decode == "gpu":
        try:
            TensorEvalTransform(cfg)
        except ValueError as e:
            if args.decode == "gpu":
                raise UsageError(f"--decode gpu: this model's eval transform has {e}; use --decode cpu") from None
            decode, decode_note = "cpu", f"PIL decoding + timm's eval transform in the loader workers (auto: {e})"
    labelled = index.labels is not None
    print(f"raggedvit eval: {args.model} on {len(index.paths)} images from {index.root} ({index.layout})")
    for note in index.notes:
        print(f"  data      : {note}")
    print(f"  device    : {device}, {str(dtype).removeprefix('torch.')}; batch {args.batch_size}, "
          f"{args.workers} loader worker(s)")
    print(f"  decoding  : {decode_note}")
    print(f"  weights   : {weights_note}")
    if args.layout == "packed":
        print(f"  attention : packed layout -> {attention}: {attention_note}")
    else:
        compiled = device.type == "cuda" and args.mode != "eager"
        how = "static per-stage capacity, torch.compile per batch size" if compiled else "batch maximum, eager"
        print(f"  attention : padded layout -> torch SDPA with a boolean key-padding mask (the baseline; {how})")
    for note in method_notes:
        print(f"  note      : {note}")
    images = _Images(args, index, cfg, decode, device, dtype)
    tallies = [Tally("dense", "dense")] + [Tally(f"{m} ({args.layout})", m) for m in methods]
    runners: list = []
    skipped: list[str] = []
    timed_from = 1 if len(images) > 1 else 0
    bar = tqdm(total=len(index.paths) * args.passes, desc="eval", unit="img", dynamic_ncols=True)
    with torch.inference_mode():
        t_data = time.perf_counter()
        for p, step, (x, batch) in images:
            if batch.errors and p == 0:
                if not args.skip_unreadable:
                    raise UsageError(f"cannot read image {batch.errors[0]}. Remove the file or pass "
                                     "--skip-unreadable to skip such files")
                skipped += batch.errors
            bar.update(len(batch.labels) + len(batch.errors))
            if x is None:
                t_data = time.perf_counter()
                continue
            synchronize(device)
            data_s = time.perf_counter() - t_data
            if not runners:
                runners = _build_runners(args, loaded, methods, tallies, attention, x, device, dtype, tqdm.write)
            timed = p >= 1 if args.passes > 1 else step >= timed_from
            dense_top1 = None
            for tally, run in zip(tallies, runners):
                if isinstance(run, BatchGraphs):
                    before = run.capture_s
                    run.prepare(x)  # a new batch size: capture outside the timed region
                    tally.capture_seconds += run.capture_s - before
                top1 = _step(tally, run, x, batch.labels, dense_top1, device, timed, counted=p == 0)
                if timed:
                    tally.data_seconds += data_s
                dense_top1 = top1 if dense_top1 is None else dense_top1
            bar.set_postfix_str(_speeds(tallies), refresh=False)
            t_data = time.perf_counter()
    bar.close()
    if tallies[0].images == 0:
        raise UsageError(f"--data {args.data}: none of the {len(index.paths)} image files could be read")
    rows = [t.row(labelled) for t in tallies]
    _print_table(rows, labelled, timed_from, decode, args.workers, args.passes)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}")
    if args.json:
        data_s = tallies[0].data_seconds
        config = {"model": args.model, "weights": weights_note, "data": str(index.root), "layout": args.layout,
                  "variant": args.variant, "keep_rate": args.keep_rate, "random_predictors": args.random_predictors,
                  "attention": attention, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                  "batch_size": args.batch_size, "workers": args.workers, "images": tallies[0].images,
                  "labelled": labelled, "skipped": len(skipped), "notes": index.notes + method_notes,
                  "mode": args.mode, "dense": args.dense, "decode": decode, "passes": args.passes,
                  "data_seconds": data_s,
                  "data_images_per_s": tallies[0].timed_images / data_s if data_s > 0 else None,
                  "timing": "images_per_s: model calls only (synchronized); images_per_s_e2e: model + loader wait, "
                            "host->device transfer, decoding and transform; first batch untimed when more than one "
                            "(passes > 1: the first pass untimed, accuracy from it); graph capture excluded "
                            "(capture_seconds)"}
        Path(args.json).write_text(json.dumps({"kind": "eval", "env": environment(device), "config": config,
                                               "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _build_runners(args, loaded, methods, tallies, attention, x, device, dtype, write) -> list:
    """The dense model and each pruned model, wrapped in :class:`BatchGraphs` where they run as CUDA graphs (the
    dense one compiled unless ``--dense graph``; padded ones at static capacity, compiled)."""
    models = [loaded.model]
    # the padded layout's fastest mode on CUDA: static capacity under torch.compile (PaddedCompiled)
    padded_compiled = args.layout == "padded" and device.type == "cuda" and args.mode != "eager"
    for m in methods:
        pruned, notes = build_pruned(
            loaded, m, layout=args.layout, attention=attention, variant=args.variant, keep_rate=args.keep_rate,
            calibration=x, calibration_source=f"the first batch ({x.shape[0]} images) of the evaluated data",
            random_predictors=args.random_predictors, padding="static" if padded_compiled else "max")
        for note in notes:
            write(f"  {note}")
        models.append(pruned)
    runners = []
    for tally, model in zip(tallies, models):
        if padded_compiled and tally.method != "dense":
            tally.mode = "compiled"
            runners.append(BatchGraphs(model, device=device, dtype=dtype))
            continue
        reason = None if args.mode == "eager" else graph_unavailable_reason(model, device)
        if args.mode == "eager" or reason is not None:
            if reason is not None and args.mode == "graph":  # pragma: no cover - _check_mode refuses these first
                raise UsageError(f"--mode graph: {tally.name} cannot run as a CUDA graph: {reason}")
            if reason is not None and device.type == "cuda":
                write(f"  {tally.name}: eager ({reason})")
            runners.append(model)
        else:
            tally.mode = args.dense if tally.method == "dense" else "graph"
            runners.append(BatchGraphs(model, device=device, dtype=dtype, dense=args.dense))
    return runners


def _step(tally: Tally, fn, x, labels, dense_top1, device, timed: bool, counted: bool = True) -> torch.Tensor:
    """One model call on ``x``: timed (``timed``) and counted towards accuracy and kept tokens (``counted``)."""
    synchronize(device)
    t0 = time.perf_counter()
    logits = fn(x)
    synchronize(device)
    if timed:
        tally.seconds += time.perf_counter() - t0
        tally.timed_images += x.shape[0]
    top1 = logits.float().argmax(-1).cpu()
    if not counted:
        return top1
    tally.images += x.shape[0]
    tally.correct += int((top1 == labels).sum())
    if dense_top1 is not None:
        tally.agree += int((top1 == dense_top1).sum())
        tally.add_stats(fn.last_stats)
    return top1


def _speeds(tallies: list[Tally]) -> str:
    return " ".join(f"{t.method} {t.timed_images / t.seconds:.0f}" for t in tallies[:4] if t.seconds > 0)


def _print_table(rows: list[dict], labelled: bool, timed_from: int, decode: str = "cpu", workers: int = 0,
                 passes: int = 1) -> None:
    note = (f"over passes 2-{passes} of the data, after a warm-up pass" if passes > 1
            else "after a 1-batch warm-up" if timed_from else "single batch, includes warm-up")
    dense, dense_e2e = rows[0]["images_per_s"], rows[0]["images_per_s_e2e"]
    print(f"\n{'pipeline':<22}{'mode':>9}{'top-1':>8}{'agree':>8}{'model img/s':>13}{'vs dense':>9}"
          f"{'e2e img/s':>11}{'vs dense':>9}  {'patches kept':>12}  kept tokens per stage (mean[min-max])")
    for r in rows:
        top1 = f"{r['top1']:.2%}" if r["top1"] is not None else "-"
        agree = "-" if r["method"] == "dense" else f"{r['agreement']:.2%}"
        speed = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
        ratio = f"{r['images_per_s'] / dense:.2f}x" if r["images_per_s"] and dense else "-"
        e2e = f"{r['images_per_s_e2e']:.1f}" if r["images_per_s_e2e"] else "-"
        ratio_e2e = f"{r['images_per_s_e2e'] / dense_e2e:.2f}x" if r["images_per_s_e2e"] and dense_e2e else "-"
        patches = "all" if r["patches_kept_mean"] is None else f"{r['patches_kept_mean']:.1f}"
        n = len(r["kept_mean"])  # with many stages (ATS), ranges only for the last one
        stages = " > ".join(f"{m:.0f}" + ("" if lo == hi or (n > 4 and s < n - 1) else f"[{lo}-{hi}]")
                            for s, (m, lo, hi) in enumerate(zip(r["kept_mean"], r["kept_min"], r["kept_max"])))
        print(f"{r['pipeline']:<22}{r['mode']:>9}{top1:>8}{agree:>8}{speed:>13}{ratio:>9}{e2e:>11}{ratio_e2e:>9}  "
              f"{patches:>12}  {stages or '-'}")
    print(f"(img/s {note}; model = synchronized model calls only (graph = CUDA graph replay, captured untimed; "
          "compiled = torch.compile reduce-overhead, compiled untimed); "
          f"e2e = model + loader wait, host->device copy, {'GPU' if decode == 'gpu' else 'CPU'} decoding and "
          "transform)")
    if decode == "cpu" and workers > 0 and len(rows) > 1:
        print("(CPU decoding in loader workers overlaps every pipeline's compute: one pipeline alone may wait longer "
              "for data; evaluate it alone for its exact e2e figure)")
    if not labelled:
        print("(no labels: top-1 not available; agreement = same top-1 class as the dense model)")
