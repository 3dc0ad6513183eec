"""One grid point of ``raggedvit bench e2e``: builds and times every pipeline on the same input images.

What a pipeline runs (layout, attention backend, timing mode) is data: :mod:`.pipelines`. Timing: warm-up,
then wall clock around many back-to-back forwards (graph replays, each after copying the images into the
graph's input as compiled models do on every call) with a sync at both ends, median of 3 rounds (1 on CPU);
the first pipeline run at a point is :data:`~.pipelines.BASELINE`, whose logits and kept counts the others
are compared with (and the oracle runs at).
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

from .. import prune
from ..ops.backends import get_backend
from ..pruning.stage import MID
from ..runtime.device import synchronize
from ..runtime.graphs import MEMORY_FORMATS, DenseCompiled
from . import timing
from .flops import tokens_per_block, vit_dims, vit_flops
from .oracle import OracleViT, oracle_widths
from .pipelines import BASELINE, PIPELINES


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


def _with_input_copy(replay, static_input: torch.Tensor):
    """A timed graph call as a user makes it: new images copied into the graph's static input, then the
    replay. ``torch.compile(mode="reduce-overhead")`` copies its inputs into its CUDA graphs' buffers on every
    call, so graph and compiled pipelines are timed alike (at batch 256 the copy is about 1 % of a forward)."""
    src = static_input.clone()

    def call():
        static_input.copy_(src)
        replay()
    return call


def compiled_model(model: torch.nn.Module):
    """``torch.compile`` of a packed or padded pruned model as a user would deploy it: ``mode="reduce-overhead"``
    (CUDA graphs), ``fullgraph=True``, ``dynamic=False`` (static shapes: one compile per batch size). Resets
    dynamo first: every point compiles a new model whose ``forward`` is the same code object, and dynamo's
    per-code recompile limit (8) would otherwise fail the ninth point. (The dense model:
    :class:`~raggedvit.runtime.graphs.DenseCompiled`.)"""
    torch._dynamo.reset()
    return torch.compile(model, mode="reduce-overhead", fullgraph=True, dynamic=False)


def _stage_summary(kept: list[list[int]], blocks) -> list[dict]:
    return [{"block": b, "mean": sum(k) / len(k), "min": min(k), "max": max(k)} for b, k in zip(blocks, kept)]


class Point:
    """One grid point: builds and times every pipeline on the same inputs; returns result rows."""

    def __init__(self, ctx, model, method, variant, batch, options, base: dict,
                 images: torch.Tensor | None = None) -> None:
        self.ctx, self.model, self.method, self.variant, self.batch = ctx, model, method, variant, batch
        self.options, self.base, self.dev = options, base, ctx["device"]
        if images is None:  # random-weight speed runs: seeded noise images
            g = torch.Generator().manual_seed(ctx["seed"] * 7919 + batch)
            images = torch.randn(batch, 3, *model.patch_embed.img_size, generator=g)
        elif images.shape[0] != batch:
            raise ValueError(f"Point: {images.shape[0]} images for batch {batch}")
        self.x = images.to(self.dev, ctx["dtype"])
        self.ref = self.kept = None
        self.pm = "dynamicvit" if method == "lengths" else method
        self.dims = vit_dims(model)
        self.n0 = self.dims.num_prefix + self.dims.num_patches

    def pruned(self, layout, attention="triton", padding="max"):
        live = self.ctx["live_rows"] if layout == "packed" else False
        return prune(self.model, self.pm, layout=layout, attention=attention, live_rows=live, padding=padding,
                     **self.options).eval()

    def run(self, pipeline: str) -> dict:
        row = dict(self.base, pipeline=pipeline, batch=self.batch, status="ok")
        try:
            row.update(self._run(pipeline))
        except Exception as e:  # noqa: BLE001 - recorded in the row, never swallowed silently
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        return row

    def _run(self, p: str) -> dict:
        pl, dev, on_gpu, budget = PIPELINES[p], self.dev, self.dev.type == "cuda", self.ctx["budget"]
        if pl.needs_cuda and not on_gpu:
            return {"status": "unavailable: CUDA graphs need a CUDA device"}
        if pl.layout == "oracle" and self.method == "none":
            return {"status": "unavailable: no pruning"}
        if pl.capacity and self.variant == "fixed":
            return {"status": "unavailable: fixed variant (capacity == kept counts; see oracle)"}
        backend = pl.backend_run(on_gpu)
        if backend:
            why = get_backend(backend).unavailable_reason(dev, self.ctx["dtype"])
            if why:
                return {"status": f"unavailable: {why}"}
        if backend == "nested_sdpa" and self.batch > self.ctx["nested_max_batch"]:
            return {"status": f"skipped: batch > --nested-max-batch {self.ctx['nested_max_batch']}"}
        extra: dict = {"attention": backend or ("sdpa" if pl.layout == "padded" else "timm")}
        stats, mode, fn, model, graph_input = None, "eager", None, None, self.x
        with torch.no_grad():
            if pl.mode == "compiled":
                if pl.layout == "dense":  # its best mode: the faster memory format at this batch size
                    torch._dynamo.reset()  # see compiled_model
                    dc = DenseCompiled(self.model, self.batch, device=dev, dtype=self.ctx["dtype"], example=self.x)
                    x = self.x.contiguous(memory_format=MEMORY_FORMATS[dc.memory_format])  # as a decoder hands it
                    extra.update(capture_s=dc.capture_s, memory_format=dc.memory_format,
                                 **{f"{k}_images_per_s": v for k, v in dc.trial_images_per_s.items()})
                    fn, net = (lambda: dc(x)), None  # noqa: E731
                else:
                    net = self.pruned(pl.layout, backend or "triton", pl.padding)
                    t0 = time.perf_counter()
                    cm = compiled_model(net)
                    for _ in range(3):  # reduce-overhead records its CUDA graph after warm-up calls
                        cm(self.x)
                    synchronize(dev)
                    extra["capture_s"] = time.perf_counter() - t0
                    fn = lambda: cm(self.x)  # noqa: E731
                kept, mode = [], "compiled"
                model = net
            elif pl.layout == "dense":
                fn = lambda: self.model(self.x)  # noqa: E731
                kept = []
            elif pl.layout == "oracle":
                widths = self.capacity if pl.capacity else oracle_widths(self.kept, self.dims.num_prefix)
                orc = OracleViT(self.model, self.blocks, self.mid, widths)
                fn = lambda: orc(self.x)  # noqa: E731
                kept = [[w] * self.batch for w in widths]
            else:
                model = self.pruned(pl.layout, backend or "triton", pl.padding)
                if pl.mode == "capture":
                    from ..models.graph import capture
                    gv = capture(model, self.batch, example=self.x)
                    extra.update(capture_s=gv.capture_s, warmup_s=gv.warmup_s)
                    out, replay, stats, mode, graph_input = gv.output, gv.replay, gv.stats, "graph", gv.input
                else:
                    fn = lambda: model(self.x)  # noqa: E731
            if fn is not None and mode == "compiled":
                out = fn()
                stats = getattr(model, "last_stats", None)  # this call's (a replay overwrites the last one's)
            elif fn is not None:
                t0 = time.perf_counter()
                out = fn()
                stats = getattr(model, "last_stats", None)
                extra["warmup_s"] = time.perf_counter() - t0
                extra["syncs_per_forward"] = _count_syncs(fn, dev)
                exact = pl.mode == "best" and on_gpu and all(stage.exact for stage in model.plan)
                if pl.mode == "graph" or exact:
                    replay, out, extra["capture_s"] = _graph(fn, dev)
                    mode = "graph"
            if mode == "compiled":
                call = fn
            elif mode == "graph":
                replay()
                extra["syncs_per_forward"] = _count_syncs(replay, dev)
                call = _with_input_copy(replay, graph_input)
            else:
                call = fn
            synchronize(dev)
            logits = out.float().clone()
            if stats is not None:
                kept = [k.tolist() for k in stats.kept]
            sec, iters = _time(call, dev, budget)
            if pl.mode == "best" and mode == "graph":  # also time eager, keep the faster
                sec_e, _ = _time(fn, dev, budget)
                extra["eager_latency_us"] = sec_e * 1e6
                if sec_e < sec:
                    sec, mode = sec_e, "eager"
        if p == BASELINE:
            self.ref, self.kept = logits, kept
        r = {"mode": mode, "latency_us": sec * 1e6, "images_per_s": self.batch / sec, "iters": iters, **extra}
        kept_all = kept if kept else []
        st = [(b, self.mid, k) for b, k in zip(self.blocks, kept_all)] if kept_all and pl.layout != "dense" else []
        attn, mlp = tokens_per_block(self.dims.depth, [self.n0] * self.batch, st)
        r["gflops"] = sum(vit_flops(self.dims, attn, mlp)) / self.batch / 1e9
        last = kept_all[-1] if kept_all else [self.n0] * self.batch
        r.update(kept_mean=sum(last) / len(last), kept_min=min(last), kept_max=max(last),
                 kept_stages=_stage_summary(kept_all, self.blocks),
                 tokens_mean=sum(map(sum, mlp)) / len(mlp) / self.batch)
        if pl.layout == "packed" and kept_all:
            cap = tokens_per_block(self.dims.depth, [self.n0] * self.batch,
                                   [(b, self.mid, [w] * self.batch) for b, w in zip(self.blocks, self.capacity)])[1]
            r["row_utilization"] = sum(map(sum, mlp)) / max(1, sum(map(sum, cap)))
        if self.ref is not None and pl.layout in ("padded", "packed"):
            r["max_logit_diff"] = float((logits - self.ref).abs().max())
            r["top1_agree"] = float((logits.argmax(1) == self.ref.argmax(1)).float().mean())
        return r

    def setup(self) -> None:
        """Host-side plan of this point (stage blocks, MID/PRE, buffer widths)."""
        plan = self.pruned("packed", "reference").plan
        self.blocks = [pl.block for pl in plan]
        self.mid = bool(plan and plan[0].site == MID)
        self.capacity = [pl.width_out for pl in plan]
