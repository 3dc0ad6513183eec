"""A/B of ``prune(live_rows=...)`` per batch size on the GPU: CUDA-graph replay time of the packed pipeline,
and kernels per forward, for the trained ViT-Tiny on real photos (fp16).

``live_rows="auto"`` picks cuBLAS or the fused Triton GEMMs by buffer size (``AUTO_MIN_ROWS``); this measures
each choice at every batch size in one run, so the policy rests on numbers from the card it runs on.
``auto-sep-add``: ``auto`` with ``RESIDUAL_IN_NORM`` off (cuBLAS buffers add the residual in a kernel of its own);
``auto-cublas-fc1``: with ``TRITON_GELU`` off (fc1 on cuBLAS, then a GELU kernel); ``auto-before``: both off;
``auto-fc2-triton``: ``auto`` with ``CUBLAS_NARROWING`` off (fc2 on the Triton GEMM where the others are);
``auto-fc2-triton-ragged``: with ``CUBLAS_NARROWING_RAGGED`` off (the same on buffers with unused rows only,
where cuBLAS computes the unused rows too);
``auto-slow-embed``: ``auto`` with ``forward.FAST_EMBED`` off (the patch matrix by reshape / permute, timm's
``_pos_embed``); ``auto-cublas-full``: ``auto`` with ``AUTO_MIN_ROWS_FULL`` unreachable (buffers without unused
rows, fixed stages and before pruning, run qkv / proj on cuBLAS: no dead rows to skip there, the GEMM quality
decides); ``auto-cublas-all``: both thresholds unreachable (every buffer's qkv / proj on cuBLAS, dead rows
computed); ``auto-triton-uniform``: ``auto`` with ``forward.UNIFORM_SDPA`` off (stages without unused rows
attended by the Triton kernel instead of SDPA); ``auto-uniform-sdpa-all``: ``auto`` with
``forward.UNIFORM_SDPA_MIN_ROWS`` 0 (every such stage on SDPA, whatever its size); ``auto-rational-gelu``:
``auto`` with the fc1 GELU epilogue before 2026-12-01 (``0.5 x (1 + erf(x / sqrt 2))``, see
``benchmarks/gelu_epilogue_ab.py``); ``auto-ats-norm-apart``: ``auto`` with ATS's value norms as before the
merge of branch atsnorm (a norm kernel of their own, multiplied in by the selection kernel) instead of in the
CLS op's head-mean kernel; ``auto-fa2-ragged``: ``auto`` with the stages that have unused rows attended by
torch's FlashAttention-2 varlen kernel (``fa2_varlen`` backend) instead of the Triton kernel;
``auto-tome-whole`` / ``auto-tome-split-all``: ToMe's merge kernels with one program walking every B column
and channel chunk at every batch size / split into one program per chunk at every batch size (``auto``: split
below ``ops.tome.SPLIT_BELOW_BATCH``); ``auto-tome-mean``: ToMe's matching on the fp32 head mean of the keys
(a ``torch.mean`` launch per block) instead of the per-head keys added in the kernel
(``pruning.tome.FOLD_HEADS``). (The A/B of
the atsnorm merge, ``auto-cls-before``, ran at commit 13a3744 with a copy of the previous CLS attention op,
``benchmarks/cls_attention_before.py``, removed since.) Usage:
``PYTHONPATH=src python benchmarks/live_rows_ab.py [--batches 1,8,64,256] [--settings 0,1] [--modes auto,off]
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

import raggedvit
from raggedvit import sample_data
from raggedvit.bench.timing import graph_replay_us
from raggedvit.models import calibrate_thresholds, forward, live_rows
from raggedvit.models import pruned as pruned_module
from raggedvit.models.graph import capture
from raggedvit.ops import linear as linear_op
from raggedvit.ops import tome as tome_op
from raggedvit.ops.backends import get_backend
from raggedvit.ops.select import ats_select, best_first_select
from raggedvit.pruning import ATS
from raggedvit.pruning import tome as tome_method
from raggedvit.pruning.ragged import Selection
from raggedvit.pruning.selection import fixed_count
from raggedvit.pruning.threshold_l2 import l2_scores
from raggedvit.runtime.device import environment

SETTINGS = [("evit", dict(variant="adaptive")), ("threshold_l2", dict(variant="adaptive", calibrate=0.85)),
            ("ats", dict(variant="adaptive")), ("evit", dict(variant="fixed")), ("tome", dict(variant="fixed")),
            ("none", {}), ("ats", dict(variant="fixed")), ("tome", dict(variant="adaptive"))]
NEVER = 1 << 62  # a row threshold no buffer reaches
# mode: (the live_rows argument, the module switches it sets for its run; see the docstring)
MODES = {"auto": ("auto", {}), "on": (True, {}), "off": (False, {}),
         "auto-sep-add": ("auto", {(live_rows, "RESIDUAL_IN_NORM"): False}),
         "auto-cublas-fc1": ("auto", {(live_rows, "TRITON_GELU"): False}),
         "auto-before": ("auto", {(live_rows, "RESIDUAL_IN_NORM"): False, (live_rows, "TRITON_GELU"): False}),
         "auto-fc2-triton": ("auto", {(live_rows, "CUBLAS_NARROWING"): False}),
         "auto-fc2-triton-ragged": ("auto", {(live_rows, "CUBLAS_NARROWING_RAGGED"): False}),
         "auto-slow-embed": ("auto", {(forward, "FAST_EMBED"): False}),
         "auto-cublas-full": ("auto", {(live_rows, "AUTO_MIN_ROWS_FULL"): NEVER}),
         "auto-cublas-all": ("auto", {(live_rows, "AUTO_MIN_ROWS_FULL"): NEVER, (live_rows, "AUTO_MIN_ROWS"): NEVER}),
         "auto-triton-uniform": ("auto", {(forward, "UNIFORM_SDPA"): False}),
         "auto-uniform-sdpa-all": ("auto", {(forward, "UNIFORM_SDPA_MIN_ROWS"): 0}),
         "auto-rational-gelu": ("auto", {(linear_op, "launcher"): "rational"}),  # built in main()
         "auto-ats-norm-apart": ("auto", {(ATS, "select"): None}),  # set below
         "auto-tome-whole": ("auto", {(tome_op, "SPLIT_BELOW_BATCH"): 0}),
         "auto-tome-split-all": ("auto", {(tome_op, "SPLIT_BELOW_BATCH"): NEVER}),
         "auto-tome-mean": ("auto", {(tome_method, "FOLD_HEADS"): False})}


def _ats_select_norm_apart(self, inp):
    """ATS's selection with the value norms in a kernel of their own (the code before 2026-12-01)."""
    plan, y, meta, P = inp.plan, inp.x, inp.meta, inp.num_prefix
    score = inp.cls_mean()
    v = inp.qkv[2]
    v_norm = l2_scores(v.reshape(v.shape[0], -1))
    if self.fixed:
        index, _, _ = best_first_select(score, y, meta.dense_rows, meta.lengths, P, plan.width_out, k=plan.keep,
                                        row_weight=v_norm, ascending=True)
        return Selection(index, fixed_count(meta.batch, plan.width_out, y.device), plan.width_out, True)
    index, count = ats_select(score, v_norm, meta.dense_rows, meta.lengths, P, plan.width_out, self.num_samples)
    return Selection(index, count, plan.width_out, False)


MODES["auto-ats-norm-apart"] = ("auto", {(ATS, "select"): _ats_select_norm_apart})


def _attend_fa2_ragged(backend):
    """``forward.attend_packed`` with the stages that have unused rows on the ``fa2_varlen`` backend."""
    inner, fa2 = forward.attend_packed(backend), get_backend("fa2_varlen")

    def attend(q, k, v, meta, scale, bias=None):
        if bias is None and not meta.uniform:
            return fa2(q, k, v, meta.cu_seqlens, meta.max_seqlen, scale=scale)
        return inner(q, k, v, meta, scale) if bias is None else inner(q, k, v, meta, scale, bias)
    return attend


MODES["auto-fa2-ragged"] = ("auto", {(pruned_module, "attend_packed"): _attend_fa2_ragged})


def kernels_per_replay(g, reps: int = 5) -> tuple[float, float]:
    """(kernels, device microseconds) per graph replay, from the profiler."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            g.replay()
        torch.cuda.synchronize()
    n = t = 0.0
    for e in prof.key_averages():
        dt = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dt > 0 and not e.key.startswith("cuda"):
            n += e.count
            t += dt
    return n / reps, t / reps


def gpu_sample(batches: str, n_images: int, parser: argparse.ArgumentParser | None = None):
    """``(args, device, model, images)`` of a GPU benchmark script: ``--batches`` (default ``batches``) and
    ``--out`` added to ``parser`` (a new one if None), the trained ViT-Tiny in fp16 on the GPU and the first
    ``n_images`` sample photos (on the host)."""
    ap = parser or argparse.ArgumentParser()
    ap.add_argument("--batches", default=batches)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = sample_data.load_model().to(dev, torch.float16).eval()
    images, _ = sample_data.load_images(model, range(n_images))
    return args, dev, model, images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(map(str, range(len(SETTINGS)))),
                    help="indices into SETTINGS, comma-separated")
    ap.add_argument("--modes", default=",".join(MODES), help="live_rows modes to compare, comma-separated")
    args, dev, model, images = gpu_sample("1,8,64,256", 320, ap)
    settings = [SETTINGS[int(i)] for i in args.settings.split(",")]
    modes = {m: MODES[m] for m in args.modes.split(",")}
    if "auto-rational-gelu" in modes:  # the previous GELU epilogue: a kernel variant built from the shipped source
        from gelu_epilogue_ab import rational_launcher
        modes["auto-rational-gelu"] = ("auto", {(linear_op, "launcher"): rational_launcher(Path(tempfile.mkdtemp()))})
    calib, images = images[:64].to(dev, torch.float16), images[64:].to(dev, torch.float16)
    rows = []
    for method, opts in settings:
        opts = dict(opts)
        if "calibrate" in opts:
            opts["thresholds"] = calibrate_thresholds(model, calib, keep_rate=opts.pop("calibrate"))
        for b in map(int, args.batches.split(",")):
            x = images[:b]
            for mode, (value, switches) in modes.items():
                with contextlib.ExitStack() as stack:  # the switches hold for this mode's capture only
                    for (module, name), setting in switches.items():
                        stack.enter_context(mock.patch.object(module, name, setting))
                    pruned = raggedvit.prune(model, method, live_rows=value, **opts).eval()
                    g = capture(pruned, b, example=x)
                us = graph_replay_us(g.graph, dev, replays=max(20, 4000 // b))
                nk, dev_us = kernels_per_replay(g)
                rows.append(dict(method=method, options={k: v for k, v in opts.items() if k != "thresholds"},
                                 batch=b, live_rows=mode, us=us, images_per_s=b / us * 1e6, kernels=nk,
                                 device_us=dev_us))
                print(f"{method:12s} {opts.get('variant', ''):8s} b{b:<4d} live_rows={mode:16s} {us:8.1f} us "
                      f"{b / us * 1e6:9.0f} img/s  {nk:5.0f} kernels {dev_us:8.1f} us device", flush=True)
                del g, pruned
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(dev)
    (out / "live-rows-ab.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
