"""``raggedvit demo``: real photos through a DeiT and every pruning method, in the padded and packed layouts.

Loads a timm DeiT (pretrained weights when reachable, ``--checkpoint PATH``, else random weights with a
printed notice), runs the colour photos scikit-image ships (astronaut, chelsea, coffee, rocket, cat,
motorcycle) as one batch through the dense model and through ``raggedvit.prune(model, method,
layout=..., attention=...)`` for each method and layout, and prints:

* the top-1 ImageNet class of every photo for the dense model and each method (``*`` = differs from dense);
* per method and layout: agreement with dense, tokens kept after each prune stage, time per batch, images/s;
* how far the padded and packed layouts differ (they compute the same pruned model).

One PNG per photo goes to ``--out`` (default ``demo_out/``): one panel per method, dropped patches greyed out.
On a CPU-only machine the packed layout uses the pure-PyTorch ``reference`` attention (the Triton kernel
needs a GPU) and timings are not GPU speed-ups; on a GPU the default is the Triton kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.arguments import add_common_arguments
from ..runtime.device import device_name, environment, resolve_attention, resolve_device, resolve_dtype, time_median
from ..runtime.errors import UsageError, run_command
from ..runtime.graphs import DenseCompiled, DenseGraph
from ..runtime.loading import load_model
from ..runtime.methods import (
    LAYOUTS,
    add_method_arguments,
    build_pruned,
    check_layouts,
    check_methods,
    usable_methods,
)
from ..runtime.photos import DEMO_PHOTOS, load_demo_photos
from .images import class_names, denormalize


def add_arguments(parser) -> None:
    """Arguments of ``raggedvit demo``."""
    add_common_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD",
                        help="pruning methods (default: all = every registered method)")
    add_method_arguments(parser)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), metavar="LAYOUT",
                        help=f"token layouts to run (default: {' '.join(LAYOUTS)})")
    parser.add_argument("--photos", nargs="+", metavar="NAME",
                        help=f"bundled photos to use (default: all of {', '.join(DEMO_PHOTOS)})")
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="folder for the PNGs (default demo_out)")
    parser.add_argument("--no-figures", action="store_true", help="do not write PNGs")
    parser.add_argument("--repeats", type=int, metavar="N",
                        help="timed forwards per pipeline, median reported (default 3 on cpu, 20 on cuda)")


def main(args) -> int:
    """Run the demo; returns the exit status."""
    return run_command("demo", lambda: _run(args))


@dataclass
class Result:
    """One pipeline's outputs on the demo batch."""

    method: str
    layout: str
    logits: torch.Tensor
    seconds: float
    kept: tuple[torch.Tensor, ...] = ()
    stage_blocks: tuple[int, ...] = ()
    kept_patches: torch.Tensor | None = None

    @property
    def top1(self) -> torch.Tensor:
        """``(B,)`` predicted class per image, on the CPU."""
        return self.logits.float().argmax(-1).cpu()


def _run(args) -> int:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention, attention_note = resolve_attention(args.attention, device, dtype)
    methods = check_methods(args.methods)
    layouts = check_layouts(args.layouts)
    repeats = args.repeats if args.repeats is not None else (20 if device.type == "cuda" else 3)
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: must be at least 1")
    out_dir = None if args.no_figures else _make_out_dir(args.out)
    photos = load_demo_photos(args.photos)
    loaded = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, device=device, dtype=dtype)
    methods, method_notes = usable_methods(args.methods, methods, loaded, args.random_predictors)
    model = loaded.model
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    transform = create_transform(**cfg)
    images = torch.stack([transform(img) for _, img in photos]).to(device=device, dtype=dtype)
    env = environment(device)
    print(f"raggedvit demo: {args.model}, {len(photos)} photos in one batch of {len(photos)}")
    print(f"  device    : {device} ({device_name(device)}), {str(dtype).removeprefix('torch.')}; torch {env['torch']}, "
          f"triton {env['triton']}, timm {env['timm']}")
    print(f"  weights   : {loaded.weights}")
    print(f"  attention : packed layout -> {attention}: {attention_note}")
    print("              padded layout -> torch SDPA with a boolean key-padding mask (the baseline)")
    print(f"  timing    : median of {repeats} forward(s) after a warm-up, whole batch" +
          (f"; eager rows, then each model in its fastest mode: the dense model "
           f"{'compiled (torch.compile, reduce-overhead)' if args.dense == 'compiled' else 'in a CUDA graph'}, "
           "each packed model captured in a CUDA graph ('graph' rows)" if device.type == "cuda" else ""))
    for note in method_notes:
        print(f"  note      : {note}")
    if device.type == "cpu":
        print("  note      : CPU run with the reference attention: timings show the pruning bookkeeping on CPU, not "
              "the GPU speed-up (run on a GPU for that)")
    names = [n for n, _ in photos]
    results: list[Result] = []
    with torch.inference_mode():
        dense_logits = model(images)
        warmup = 0 if device.type == "cpu" else 2  # the first forward above already ran
        results.append(Result("dense", "-", dense_logits, time_median(lambda: model(images), device, repeats,
                                                                      warmup=warmup)))
        if device.type == "cuda":  # the dense model in its best mode: the fair reference for graph rows
            results.append(_run_dense_fast(model, images, device, repeats, args.dense))
        cache: dict = {}
        for method in methods:
            for layout in layouts:
                pruned, notes = build_pruned(loaded, method, layout=layout, attention=attention,
                                             variant=args.variant, keep_rate=args.keep_rate, calibration=images,
                                             calibration_source=f"these {len(photos)} demo photos (no held-out "
                                             "calibration set here)", cache=cache,
                                             random_predictors=args.random_predictors)
                for note in notes:
                    print(f"  {note}")
                results.append(_run_pruned(pruned, method, layout, images, device, repeats))
                if layout == "packed" and device.type == "cuda":
                    results.append(_run_graph(pruned, method, images, device, repeats))
    _print_predictions(names, results)
    _print_summary(results, num_patches=int(model.patch_embed.num_patches))
    _print_layout_check(results)
    if out_dir is not None:
        pictures = denormalize(images, cfg["mean"], cfg["std"])
        for path in _write_figures(out_dir, names, pictures, results, model):
            print(f"wrote {path}")
    return 0


def _make_out_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    return path


def _run_pruned(pruned, method: str, layout: str, images: torch.Tensor, device, repeats: int) -> Result:
    logits = pruned(images)
    st = pruned.last_stats
    kept = tuple(k.detach().cpu() for k in st.kept)
    mask = st.kept_patch_mask.detach().cpu()
    seconds = time_median(lambda: pruned(images), device, repeats, warmup=0 if device.type == "cpu" else 2)
    return Result(method, layout, logits, seconds, kept, tuple(st.stage_blocks), mask)


def _run_dense_fast(model, images: torch.Tensor, device, repeats: int, mode: str) -> Result:
    """timm's dense forward in its best mode: ``"compiled"`` (:class:`~raggedvit.runtime.graphs.DenseCompiled`,
    torch.compile reduce-overhead in the faster memory format) or ``"graph"`` (a plain CUDA graph,
    :class:`~raggedvit.runtime.graphs.DenseGraph`)."""
    if mode == "compiled":
        dense = DenseCompiled(model, images.shape[0], device=device, dtype=images.dtype, example=images)
        logits = dense(images).clone()
        return Result("dense", "compiled", logits, time_median(lambda: dense(images), device, repeats))
    graph = DenseGraph(model, images.shape[0], device=device, dtype=images.dtype, example=images)
    logits = graph(images).clone()
    return Result("dense", "graph", logits, time_median(graph.replay, device, repeats))


def _run_graph(pruned, method: str, images: torch.Tensor, device, repeats: int) -> Result:
    """The packed model captured once in a CUDA graph (raggedvit's fast path), replayed on the same photos."""
    from ..models.graph import capture

    graphed = capture(pruned, images.shape[0], example=images)
    logits = graphed(images, clone=True)
    kept = tuple(k.detach().cpu() for k in graphed.stats.kept)
    mask = graphed.stats.kept_patch_mask.detach().cpu()
    seconds = time_median(graphed.replay, device, repeats)
    return Result(method, "graph", logits, seconds, kept, tuple(graphed.stats.stage_blocks), mask)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "."


def _first_by_method(results: list[Result]) -> list[Result]:
    """The dense result and one result per method (packed layout when it ran)."""
    by_method: dict[str, Result] = {}
    for r in results:
        if r.method not in by_method or r.layout == "packed":
            by_method[r.method] = r
    return list(by_method.values())


def _print_predictions(names: list[str], results: list[Result]) -> None:
    labels = class_names()
    shown = _first_by_method(results)
    dense = shown[0].top1
    probs = shown[0].logits.float().softmax(-1).max(-1).values.cpu()
    width = 20
    print("\nTop-1 predictions (* = differs from dense; methods shown in the packed layout when it ran)")
    print(f"{'photo':<11}" + "".join(f"{r.method:<{width + 2}}" for r in shown))
    for i, name in enumerate(names):
        p = float(probs[i])
        cells = [f"{_short(labels[int(dense[i])], width - 7)} ({p:.0%})" if p >= 0.1 else
                 f"{_short(labels[int(dense[i])], width - 7)} ({p:.1%})"]
        for r in shown[1:]:
            cls = int(r.top1[i])
            cells.append(_short(labels[cls], width - 1) + ("*" if cls != int(dense[i]) else ""))
        print(f"{_short(name, 10):<11}" + "".join(f"{c:<{width + 2}}" for c in cells))


def _kept_text(kept: tuple[torch.Tensor, ...]) -> str:
    """``mean[min-max]`` per stage; with more than 4 stages, means only and the last stage's range."""
    parts = []
    for s, k in enumerate(kept):
        k = k.float()
        lo, hi = int(k.min()), int(k.max())
        ranged = lo != hi and (len(kept) <= 4 or s == len(kept) - 1)
        parts.append(f"{k.mean():.0f}[{lo}-{hi}]" if ranged else f"{k.mean():.0f}")
    return " > ".join(parts)


def _print_summary(results: list[Result], num_patches: int) -> None:
    dense = results[0]
    n = dense.logits.shape[0]
    print(f"\nPer pipeline (batch {n}; kept = tokens per image after each prune stage incl. CLS, mean[min-max])")
    print(f"{'method':<13}{'layout':<8}{'agree':>7}  {'ms/batch':>9}{'img/s':>9}{'vs dense':>9}  "
          f"{'patches kept':>12}  kept tokens per stage")
    dense_fast = next((r for r in results if r.method == "dense" and r.layout in ("compiled", "graph")), dense)
    for r in results:
        ref = dense_fast if r.layout == "graph" else dense  # compare like with like: graph vs graph, eager vs eager
        agree = int((r.top1 == dense.top1).sum())
        final = "" if r.kept_patches is None else f"{r.kept_patches.sum(1).float().mean():.0f}/{num_patches}"
        stages = "-" if not r.kept else f"blocks {','.join(map(str, r.stage_blocks))}: {_kept_text(r.kept)}"
        print(f"{r.method:<13}{r.layout:<8}{f'{agree}/{n}':>7}  {r.seconds * 1e3:>9.2f}{n / r.seconds:>9.1f}"
              f"{ref.seconds / r.seconds:>8.2f}x  {final or f'{num_patches}/{num_patches}':>12}  {stages}")
    if dense_fast is not dense:
        print(f"  (graph = the whole forward captured once in a CUDA graph and replayed; 'vs dense' compares graph "
              f"rows with the dense model {'compiled' if dense_fast.layout == 'compiled' else 'in a CUDA graph'}, "
              "eager rows with dense eager)")


def _print_layout_check(results: list[Result]) -> None:
    pairs = {}
    for r in results:
        pairs.setdefault(r.method, {})[r.layout] = r
    lines = []
    for method, by_layout in pairs.items():
        if {"padded", "packed"} <= by_layout.keys():
            a, b = by_layout["padded"], by_layout["packed"]
            diff = (a.logits.float() - b.logits.float()).abs().max().item()
            same = int((a.top1 == b.top1).sum())
            masks = "identical" if torch.equal(a.kept_patches, b.kept_patches) else \
                f"differ in {int((a.kept_patches != b.kept_patches).any(1).sum())} image(s)"
            flips = [(blk, x != y) for blk, x, y in zip(a.stage_blocks, a.kept, b.kept) if not torch.equal(x, y)]
            if flips:  # e.g. a Threshold-L2 score within rounding of its threshold: the layouts round differently
                images = int(torch.stack([f for _, f in flips]).any(0).sum())
                masks += (f"; kept counts differ at block(s) {','.join(str(blk) for blk, _ in flips)} in {images} "
                          "image(s) (a score within rounding of a decision boundary)")
            lines.append(f"  {method:<13} max |logit diff| {diff:.2e}, same top-1 {same}/{a.top1.numel()}, "
                         f"kept patches {masks}")
        if {"packed", "graph"} <= by_layout.keys():
            a, b = by_layout["packed"], by_layout["graph"]
            diff = (a.logits.float() - b.logits.float()).abs().max().item()
            lines.append(f"  {method:<13} CUDA-graph replay vs eager packed: max |logit diff| {diff:.2e}")
    if lines:
        print("\nPadded vs packed layout (same pruned model, different token layout):")
        print("\n".join(lines))


def _write_figures(out_dir: Path, names, pictures: torch.Tensor, results: list[Result], model) -> list[Path]:
    from .figures import Panel, save_kept_figure

    labels = class_names()
    shown = _first_by_method(results)
    dense = shown[0]
    grid = tuple(model.patch_embed.grid_size)
    n_patches = grid[0] * grid[1]
    paths = []
    for i, name in enumerate(names):
        d = int(dense.top1[i])
        panels = [Panel(f"dense: {n_patches}/{n_patches} patches\n{_short(labels[d], 26)}", None)]
        for r in shown[1:]:
            cls = int(r.top1[i])
            kept = r.kept_patches[i]
            panels.append(Panel(f"{r.method} ({r.layout}): {int(kept.sum())}/{n_patches}\n{_short(labels[cls], 26)}",
                                kept, cls == d))
        paths.append(save_kept_figure(out_dir / f"{name}.png", pictures[i], panels, grid,
                                      title=f"{name}: patches each method kept (grey = dropped)"))
    return paths
