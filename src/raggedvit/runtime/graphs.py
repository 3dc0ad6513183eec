"""Each model in its fastest mode for the commands: CUDA graphs per batch size on CUDA, eager elsewhere.

* :class:`DenseGraph` - timm's own forward of the dense model captured in a CUDA graph for one batch size
  (a plain ``torch.cuda.graph`` capture after a warm-up on a side stream: simpler and more predictable than
  ``torch.compile(mode="reduce-overhead")``, with no compile step, and the same treatment as the pruned
  models get from :func:`raggedvit.models.graph.capture`).
* :class:`BatchGraphs` - a callable that replays one captured graph per batch size (a dense
  :class:`DenseGraph` or a pruned :class:`~raggedvit.models.graph.GraphedViT`), capturing on first use; the
  last partial batch of a dataset gets its own graph (captured untimed by :meth:`BatchGraphs.prepare`), so
  no padding image ever enters a batch. ``last_stats`` mirrors :attr:`PrunedViT.last_stats`.
* :func:`graph_unavailable_reason` - why a model cannot run as a CUDA graph here (None when it can).

Graph outputs are static buffers rewritten by the next replay of the same graph: read them (argmax, stats)
before calling again with the same batch size.
"""

from __future__ import annotations

import time

import torch

__all__ = ["DenseGraph", "BatchGraphs", "graph_unavailable_reason", "MODES"]

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


class BatchGraphs:
    """``model`` (timm dense or ``PrunedViT`` packed) replayed from one CUDA graph per batch size.

    Args:
        model: the model in eval mode on ``device``.
        device, dtype: where and in which dtype the graphs take their images.

    Attributes:
        graphs: ``{batch size: DenseGraph or GraphedViT}`` captured so far.
        capture_s: total host seconds spent warming up and capturing.
        last_stats: the :class:`~raggedvit.models.stats.PruneStats` of the last replay (None for dense).
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
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

        if isinstance(self.model, PrunedViT):
            g = capture(self.model, n, device=self.device, dtype=self.dtype, example=images)
            self.capture_s += g.warmup_s + g.capture_s
        else:
            g = DenseGraph(self.model, n, device=self.device, dtype=self.dtype, example=images)
            self.capture_s += g.capture_s
        self.graphs[n] = g

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (a static buffer of the batch size's graph: read it before the next call)."""
        self.prepare(images)
        g = self.graphs[int(images.shape[0])]
        out = g(images)
        self.last_stats = g.stats
        return out
