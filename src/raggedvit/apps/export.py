"""``raggedvit export --out MODEL.pt2``: a pruned model as an AOTInductor package at a fixed batch size.

Builds the pruned model as the other commands do (``--model``, ``--checkpoint``/``--weights``, ``--method``,
``--variant``, ``--keep-rate``; the packed layout), exports it with ``torch.export`` for ``--batch-size``
images and compiles it with AOTInductor (``torch._inductor.aoti_compile_and_package``) into ``--out``.
``--check`` loads the package back and compares its logits with the eager pruned model on fresh images.

The package runs without raggedvit's Python forward, but its ``torch.ops.raggedvit.*`` kernels are
registered by raggedvit: load it in a process that has run ``import raggedvit`` (then
``raggedvit.models.export.load_package(path)(images)``); on CUDA, capture its call in a CUDA graph for speed
(``raggedvit.models.export.GraphedPackage``). See docs/export.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..runtime.arguments import add_common_arguments
from ..runtime.device import resolve_attention, resolve_device, resolve_dtype
from ..runtime.errors import UsageError, run_command
from ..runtime.loading import load_model
from ..runtime.methods import add_method_arguments, build_pruned, check_methods

ATOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def add_arguments(parser) -> None:
    """Arguments of ``raggedvit export``."""
    parser.add_argument("--out", required=True, metavar="PATH.pt2", help="the AOTInductor package to write")
    add_common_arguments(parser)
    parser.add_argument("--method", default="evit", metavar="METHOD", help="pruning method (default evit)")
    add_method_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="the batch size the package takes (fixed; default 8)")
    parser.add_argument("--check", action="store_true",
                        help="load the package back and compare its logits with the eager pruned model")
    parser.add_argument("--atol", type=float, metavar="X",
                        help="--check tolerance on max |logit difference| (default 1e-4 float32, 2e-2 float16, "
                             "1e-1 bfloat16)")


def main(args) -> int:
    """Export; returns the exit status (1 when ``--check`` finds a difference over the tolerance)."""
    return run_command("export", lambda: _run(args))


def _run(args) -> int:
    from ..models.export import example_images, export_pruned, load_package, package_pruned

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be at least 1")
    out = Path(args.out)
    if out.suffix != ".pt2":
        raise UsageError(f"--out {args.out}: the package name must end in .pt2")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {out.resolve().parent} does not exist")
    (method,) = check_methods([args.method]) if args.method != "all" else (None,)
    if method is None:
        raise UsageError("--method all: export takes one method")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention, attention_note = resolve_attention(args.attention, device, dtype)
    loaded = load_model(args.model, weights=args.weights, checkpoint=args.checkpoint, device=device, dtype=dtype)
    calibration = example_images(loaded.model, args.batch_size, seed=0)
    pruned, notes = build_pruned(loaded, method, layout="packed", attention=attention, variant=args.variant,
                                 keep_rate=args.keep_rate, calibration=calibration,
                                 calibration_source=f"{args.batch_size} random images (seed 0)")
    variant = getattr(pruned.method, "variant", "no pruning")
    print(f"raggedvit export: {args.model} + {method} ({variant}, packed) at batch {args.batch_size}, {device}, "
          f"{str(dtype).removeprefix('torch.')}")
    print(f"  weights   : {loaded.weights}")
    print(f"  attention : {attention}: {attention_note}")
    for note in notes:
        print(f"  {note}")
    t0 = time.perf_counter()
    program = export_pruned(pruned, images=calibration)
    t1 = time.perf_counter()
    path = package_pruned(program, out)
    t2 = time.perf_counter()
    print(f"  exported in {t1 - t0:.1f} s, AOTInductor package compiled in {t2 - t1:.1f} s: wrote {path}")
    print("  load it after `import raggedvit` (registers the raggedvit ops the package calls): "
          "raggedvit.models.export.load_package(path)(images)")
    if device.type == "cuda":
        print("  for speed, replay it in a CUDA graph: raggedvit.models.export.GraphedPackage(path, example)"
              "(images); called directly it runs about 100 ops through Python per forward (docs/export.md)")
    if not args.check:
        return 0
    images = example_images(pruned, args.batch_size, seed=1)
    with torch.no_grad():
        expected = pruned(images)
        got = load_package(path)(images)
    if isinstance(got, (list, tuple)):
        got = got[0]
    diff = (got.float() - expected.float()).abs().max().item()
    same_top1 = int((got.argmax(-1) == expected.argmax(-1)).sum())
    atol = ATOL[dtype] if args.atol is None else args.atol
    ok = diff <= atol
    print(f"  check     : package vs eager on {args.batch_size} new random images: max |logit diff| {diff:.3g} "
          f"(tolerance {atol:g}), same top-1 {same_top1}/{args.batch_size}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
