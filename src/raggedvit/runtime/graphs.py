"""Each model in its fastest mode for the commands: CUDA graphs per batch size on CUDA, eager elsewhere.

* :class:`DenseGraph` - timm's own forward of the dense model captured in a CUDA graph for one batch size
  (a plain ``torch.cuda.graph`` capture after a warm-up on a side stream: simpler and more predictable than
  ``torch.compile(mode="reduce-overhead")``, with no compile step, and the same treatment as the pruned
  models get from :func:`raggedvit.models.graph.capture`).
* :class:`DenseCompiled` - the dense model as a user deploys it: ``torch.compile(mode="reduce-overhead")``
  for one batch size, in the faster of two memory formats (contiguous or channels-last images and conv
  weight), both timed on the example batch.
* :class:`PaddedCompiled` - the padded baseline in its fastest mode: a padded ``PrunedViT`` at static
  capacity under ``torch.compile(mode="reduce-overhead")`` for one batch size.
* :class:`BatchGraphs` - a callable that replays one captured graph per batch size (a dense
  :class:`DenseCompiled` or :class:`DenseGraph`, a packed pruned :class:`~raggedvit.models.graph.GraphedViT`,
  or a padded :class:`PaddedCompiled`), capturing on first use; the
  last partial batch of a dataset gets its own graph (captured untimed by :meth:`BatchGraphs.prepare`), so
  no padding image ever enters a batch. ``last_stats`` mirrors :attr:`PrunedViT.last_stats`.
* :func:`graph_unavailable_reason` - why a model cannot run as a CUDA graph here (None when it can).

Graph outputs are static buffers rewritten by the next replay of the same graph: read them (argmax, stats)
before calling again with the same batch size.
"""

from __future__ import annotations

import copy
import time

import torch

from .device import synchronize

__all__ = ["DenseGraph", "DenseCompiled", "PaddedCompiled", "BatchGraphs", "graph_unavailable_reason", "MODES",
           "MEMORY_FORMATS"]

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

MODES = ("auto", "graph", "eager")


def graph_unavailable_reason(model: torch.nn.Module, device: torch.device) -> str | None:
    """None when ``model`` (a timm model or a ``PrunedViT``) can be captured on ``device``; else the reason."""
    from ..models.graph import check_graphable
    from ..models.pruned import PrunedViT

    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device, this run is on {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if isinstance(model, PrunedViT):
        try:
            check_graphable(model, device)
        except ValueError as e:
            return str(e).removeprefix("graph capture: ")
    return None


class DenseGraph:
    """timm ``model(images)`` captured in a CUDA graph for ``batch`` images of ``dtype`` on ``device``.

    Calling it copies the images into the static input, replays and returns the static logits.
    ``capture_s``: host seconds of warm-up plus capture.
    """

    def __init__(self, model: torch.nn.Module, batch: int, *, device: torch.device, dtype: torch.dtype,
                 example: torch.Tensor | None = None, warmup: int = 2) -> None:
        if model.training:
            raise ValueError("DenseGraph: the model is in training mode; call .eval() first")
        size = model.patch_embed.img_size
        in_chans = model.patch_embed.proj.in_channels
        self.model, self.batch, self.device, self.dtype = model, batch, device, dtype
        self.input = torch.empty((batch, in_chans, *size), device=device, dtype=dtype)
        if example is not None:
            self.input.copy_(example)
        else:
            self.input.normal_()
        t0 = time.perf_counter()
        with torch.no_grad():
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(max(1, warmup)):
                    model(self.input)
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.device(device), torch.cuda.graph(self.graph):
                self.output = model(self.input)
            torch.cuda.synchronize(device)
        self.capture_s = time.perf_counter() - t0
        self.stats = None

    def replay(self) -> torch.Tensor:
        """Replay on whatever :attr:`input` holds; returns the static :attr:`output`."""
        self.graph.replay()
        return self.output

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape) != tuple(self.input.shape):
            raise ValueError(f"DenseGraph: images have shape {tuple(images.shape)}, the graph was captured for "
                             f"{tuple(self.input.shape)}")
        self.input.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.output


def _reduce_overhead(module: torch.nn.Module):
    """``torch.compile`` as a user deploys for inference: CUDA graphs, one graph, static shapes."""
    return torch.compile(module, mode="reduce-overhead", fullgraph=True, dynamic=False)


def _example_images(who: str, shape: tuple, example: torch.Tensor | None, device, dtype) -> torch.Tensor:
    """``example`` if it has ``shape`` (else ValueError), or random images of ``shape``."""
    if example is None:
        return torch.randn(shape, device=device).to(dtype)
    if tuple(example.shape) != shape:
        raise ValueError(f"{who}: example has shape {tuple(example.shape)}, expected {shape}")
    return example


def _check_images(who: str, images: torch.Tensor, shape: tuple) -> None:
    if tuple(images.shape) != shape:
        raise ValueError(f"{who}: images have shape {tuple(images.shape)}, it was compiled for {shape}")


class DenseCompiled:
    """timm ``model(images)`` for ``batch`` images under ``torch.compile(mode="reduce-overhead", fullgraph=True,
    dynamic=False)`` (Inductor's kernels replayed as CUDA graphs, static shapes), in the faster memory format.

    Both :data:`MEMORY_FORMATS` are compiled (channels-last on a copy of ``model``: its 4-D weights, i.e. the
    patch-embedding conv; ``model`` itself is not modified) and timed over ``trials`` calls on ``example`` (or
    random images); the faster one is kept. On an H200 (ViT-Tiny, fp16) channels-last made cuDNN's patch conv
    532 instead of 868 us at batch 256 and the compiled model 6-10 % faster there, while contiguous was about
    10 % faster at batch 8 (``benchmarks/results/cudnn-benchmark-ab-nvidia-h200-20261130-152636.json``,
    ``frontier-nvidia-h200-20261130-152930`` / ``-153648``); ``cudnn.benchmark`` changed nothing.

    Calling it converts the images to the kept format (no copy when they already are in it) and returns the
    compiled model's logits (a CUDA-graph output on CUDA: read it before the next call). Attributes:
    ``memory_format`` (a key of :data:`MEMORY_FORMATS`), ``trial_images_per_s`` (per format), ``capture_s``
    (host seconds of compiling, warm-up and trials).
    """

    def __init__(self, model: torch.nn.Module, batch: int, *, device: torch.device, dtype: torch.dtype,
                 example: torch.Tensor | None = None, trials: int = 20) -> None:
        if model.training:
            raise ValueError("DenseCompiled: the model is in training mode; call .eval() first")
        shape = (batch, model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
        example = _example_images("DenseCompiled", shape, example, device, dtype)
        self.shape, self.stats = shape, None
        self.trial_images_per_s: dict[str, float] = {}
        t0 = time.perf_counter()
        best = None
        with torch.no_grad():
            for name, fmt in MEMORY_FORMATS.items():
                net = model if fmt is torch.contiguous_format else copy.deepcopy(model).to(memory_format=fmt)
                fn = _reduce_overhead(net)
                x = example.contiguous(memory_format=fmt)
                for _ in range(3):  # reduce-overhead records its CUDA graph after warm-up calls
                    fn(x)
                synchronize(device)
                t1 = time.perf_counter()
                for _ in range(max(1, trials)):
                    fn(x)
                synchronize(device)
                sec = (time.perf_counter() - t1) / max(1, trials)
                self.trial_images_per_s[name] = batch / sec
                if best is None or sec < best[0]:
                    best = (sec, name, fn)
        _, self.memory_format, self.fn = best
        self._format = MEMORY_FORMATS[self.memory_format]
        self.capture_s = time.perf_counter() - t0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images("DenseCompiled", images, self.shape)
        return self.fn(images.contiguous(memory_format=self._format))


# every PrunedViT shares one forward code object, so dynamo counts each model and batch size compiled in a process
# against one per-code recompile limit (8 by default): a run compiling several methods at two batch sizes needs more
_RECOMPILE_LIMIT = 64


class PaddedCompiled:
    """A padded pruned model at static capacity (``raggedvit.prune(..., layout="padded", padding="static")``)
    under ``torch.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)`` for ``batch`` images.

    The padded baseline's fastest mode on an H200: 1.2-2.6x its own CUDA graph on the trained ViT-Tiny, fp16
    (``benchmarks/results/frontier-nvidia-h200-20261130-194415``), because Inductor fuses its LayerNorms,
    selections and elementwise work. Built with ``example`` (or random images) for three warm-up calls, after
    which reduce-overhead replays its CUDA graphs. Calling it returns the logits (a CUDA-graph output on
    CUDA: read it before the next call); ``stats`` is that call's ``PruneStats``, ``capture_s`` the host
    seconds of compiling and warming up.
    """

    def __init__(self, model: torch.nn.Module, batch: int, *, device: torch.device, dtype: torch.dtype,
                 example: torch.Tensor | None = None) -> None:
        from ..models.pruned import PrunedViT

        if not isinstance(model, PrunedViT) or model.layout != "padded" or model.padding != "static":
            raise ValueError("PaddedCompiled: expected raggedvit.prune(..., layout='padded', padding='static'), got "
                             + (f"layout={model.layout!r}, padding={model.padding!r}" if isinstance(model, PrunedViT)
                                else type(model).__name__))
        if model.training:
            raise ValueError("PaddedCompiled: the model is in training mode; call .eval() first")
        embed = model.backbone.patch_embed
        self.shape = (batch, embed.proj.in_channels, *embed.img_size)
        example = _example_images("PaddedCompiled", self.shape, example, device, dtype)
        self.model, self.stats = model, None
        t0 = time.perf_counter()
        self.fn = _reduce_overhead(model)
        with torch.no_grad():
            for _ in range(3):  # reduce-overhead records its CUDA graph after warm-up calls
                self._call(example)
        synchronize(device)
        self.capture_s = time.perf_counter() - t0

    def _call(self, images: torch.Tensor) -> torch.Tensor:
        with torch._dynamo.config.patch(recompile_limit=max(_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)):
            out = self.fn(images)
        self.stats = self.model.last_stats
        return out

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_images("PaddedCompiled", images, self.shape)
        return self._call(images)


class BatchGraphs:
    """``model`` (timm dense, ``PrunedViT`` packed, or padded at static capacity) replayed from one CUDA graph
    per batch size (the padded one and, by default, the dense one compiled).

    Args:
        model: the model in eval mode on ``device``.
        device, dtype: where and in which dtype the graphs take their images.
        dense: how a dense model runs: ``"compiled"`` (:class:`DenseCompiled`, the default) or ``"graph"``
            (:class:`DenseGraph`: timm's forward in a plain CUDA graph, no compile step).

    Attributes:
        graphs: ``{batch size: DenseCompiled, DenseGraph, GraphedViT or PaddedCompiled}`` captured so far.
        capture_s: total host seconds spent warming up and capturing.
        last_stats: the :class:`~raggedvit.models.stats.PruneStats` of the last replay (None for dense).
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype,
                 dense: str = "compiled") -> None:
        if dense not in ("compiled", "graph"):
            raise ValueError(f"BatchGraphs: dense must be 'compiled' or 'graph', got {dense!r}")
        self.model, self.device, self.dtype, self.dense = model, device, dtype, dense
        self.graphs: dict[int, object] = {}
        self.capture_s = 0.0
        self.last_stats = None

    def prepare(self, images: torch.Tensor) -> None:
        """Capture the graph for ``images.shape[0]`` (with ``images`` as the warm-up example) unless it exists."""
        n = int(images.shape[0])
        if n in self.graphs:
            return
        from ..models.graph import capture
        from ..models.pruned import PrunedViT

        if isinstance(self.model, PrunedViT) and self.model.layout == "padded":
            g = PaddedCompiled(self.model, n, device=self.device, dtype=self.dtype, example=images)
            self.capture_s += g.capture_s
        elif isinstance(self.model, PrunedViT):
            g = capture(self.model, n, device=self.device, dtype=self.dtype, example=images)
            self.capture_s += g.warmup_s + g.capture_s
        else:
            kind = DenseCompiled if self.dense == "compiled" else DenseGraph
            g = kind(self.model, n, device=self.device, dtype=self.dtype, example=images)
            self.capture_s += g.capture_s
        self.graphs[n] = g

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (a static buffer of the batch size's graph: read it before the next call)."""
        self.prepare(images)
        g = self.graphs[int(images.shape[0])]
        out = g(images)
        self.last_stats = g.stats
        return out
