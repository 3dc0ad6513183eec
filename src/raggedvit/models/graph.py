"""CUDA-graph capture of a whole packed pruned forward (patch embedding to logits), replayed for new images.

The packed layout of :class:`~raggedvit.models.pruned.PrunedViT` has static capacities: every buffer is
sized from host integers of the stage plan (:class:`~raggedvit.pruning.StagePlan`), ``cu_seqlens``
and the kept counts stay on the device, and the attention backend reads the true lengths from
``cu_seqlens``. Nothing reads a device value back, so one capture per (model, method, batch, dtype,
device) serves every later batch of images: only the *values* in the captured buffers change.

Usage::

    from raggedvit.models.graph import capture
    pruned = raggedvit.prune(model.half().cuda().eval(), method)
    graphed = capture(pruned, batch=64)       # warm-up (compiles Triton), capture
    logits = graphed(images)                  # copy in, replay, static logits (clone to keep them)
    graphed.stats.kept                        # per-stage kept counts of this replay (device tensors)

Rows past the live total: a packed stage buffer holds ``batch * width_out`` rows, ``width_out`` being the
plan's per-image bound (exact for fixed-count variants; the previous width, or ``k_max``, for adaptive
ones). Rows past ``cu_seqlens[-1]`` are skipped by the attention kernel (its grid covers ``max_seqlen``
per image, the lengths come from ``cu_seqlens``). The token-wise layers (LayerNorm, qkv, proj, MLP) skip
them too where ``prune(live_rows=...)`` runs :class:`~raggedvit.models.live_rows.LiveRows` (by default on
CUDA for buffers with unused rows from 1024 rows): their Triton kernels read the live row count on the
device and visit only the live tiles. Elsewhere timm's modules run on every buffer row, so the waste is
bounded by ``batch * width_out - live total`` rows per block: zero for fixed variants, up to the
per-image bound for adaptive ones. ``raggedvit bench e2e`` reports the measured row utilisation (live
rows / buffer rows) and an ``oracle_capacity`` run at the buffer widths next to every speed figure.

A captured graph holds the addresses of the model's parameters: after ``model.to(...)``/``.half()`` capture
again (in-place weight updates such as ``load_state_dict`` are seen by later replays).
"""

from __future__ import annotations

import time
import weakref

import torch

from ..ops.backends import BACKENDS, get_backend
from .inputs import check_images, input_spec
from .pruned import PrunedViT
from .stats import PruneStats

__all__ = ["GraphedViT", "capture", "graphed", "clear_cache", "check_graphable", "graph_safe_backends"]


def graph_safe_backends() -> list[str]:
    """Names of the registered attention backends that may be captured (``graph_safe`` and sync-free)."""
    return [n for n, b in BACKENDS.items() if b.graph_safe and not b.syncs]


def _model_device(pruned: torch.nn.Module) -> torch.device:
    p = next(pruned.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_graphable(pruned, device: torch.device | str | None = None) -> torch.device:
    """Raise ``ValueError`` unless ``pruned`` can be captured in a CUDA graph on ``device``; returns the device.

    Checked in this order, each with its own message: a :class:`PrunedViT`, in eval mode, ``layout="packed"``
    (the padded layout reads the batch maximum of every adaptive stage back to the host), a graph-safe,
    sync-free attention backend (see :func:`graph_safe_backends`), a CUDA device that CUDA is available on.
    ``device`` defaults to the device of the model's parameters.
    """
    if not isinstance(pruned, PrunedViT):
        raise ValueError(f"graph capture: expected a PrunedViT from raggedvit.prune(...), got {type(pruned).__name__}")
    if pruned.training:
        raise ValueError("graph capture: the model is in training mode; call .eval() first (inference only)")
    if pruned.layout != "packed":
        raise ValueError(f"graph capture: layout={pruned.layout!r} cannot be captured (the padded baseline reads "
                         "each adaptive stage's batch maximum back to the host); use prune(..., layout='packed')")
    backend = get_backend(pruned.attention)
    if not backend.graph_safe or backend.syncs:
        why = "synchronizes with the host" if backend.syncs else "is not CUDA-graph safe"
        raise ValueError(f"graph capture: attention backend {pruned.attention!r} {why}; graph-safe backends: "
                         f"{', '.join(graph_safe_backends())}")
    device = torch.device(device) if device is not None else _model_device(pruned)
    if device.type != "cuda":
        raise ValueError(f"graph capture: CUDA graphs need a CUDA device, the model is on {device}")
    if not torch.cuda.is_available():
        raise ValueError("graph capture: CUDA is not available")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class GraphedViT:
    """A packed pruned forward captured once for a fixed batch size, dtype and device; replayed per call.

    Build it with :func:`capture` (or :func:`graphed`, which caches). Calling it copies the images into
    the static input buffer, replays the graph and returns the static logits tensor, which the next call
    overwrites (``clone=True`` returns a copy). No call synchronizes with the host.

    Attributes:
        model: the :class:`PrunedViT` that was captured.
        batch, dtype, device: what the graph was captured for (inputs must match ``batch`` and the image size).
        input: static ``(batch, 3, H, W)`` input buffer (write into it and call :meth:`replay` to skip the copy).
        output: static ``(batch, num_classes)`` logits.
        stats: :class:`PruneStats` of the captured forward; its device tensors (kept counts per stage, ...) are
            rewritten by every replay.
        warmup_s, capture_s: host seconds of the eager warm-up (Triton compiles here) and of the capture.
    """

    def __init__(self, pruned: PrunedViT, batch: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, warmup: int = 2, example: torch.Tensor | None = None,
                 pool=None) -> None:
        device = check_graphable(pruned, device)
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"graph capture: batch must be an int >= 1, got {batch!r}")
        ref = next(pruned.parameters())
        self.model, self.batch, self.device = pruned, batch, device
        self.dtype = dtype if dtype is not None else ref.dtype
        size = pruned.backbone.patch_embed.img_size
        in_chans = pruned.backbone.patch_embed.proj.in_channels
        shape = (batch, in_chans, *size)
        if example is not None and tuple(example.shape) != shape:
            raise ValueError(f"graph capture: example has shape {tuple(example.shape)}, expected {shape}")
        self.input = torch.empty(shape, dtype=self.dtype, device=device)
        with torch.no_grad():
            if example is not None:
                self.input.copy_(example)
            else:
                self.input.normal_()
            t0 = time.perf_counter()
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # eager warm-up: Triton compiles, allocator settles
                for _ in range(max(1, warmup)):
                    pruned(self.input)
            torch.cuda.current_stream(device).wait_stream(stream)
            torch.cuda.synchronize(device)
            self.warmup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.device(device), torch.cuda.graph(self.graph, pool=pool):
                self.output = pruned(self.input)
            stats = pruned.last_stats
            torch.cuda.synchronize(device)
            self.capture_s = time.perf_counter() - t0
        self.stats: PruneStats = stats

    def replay(self) -> torch.Tensor:
        """Replay on whatever :attr:`input` holds; returns the static :attr:`output`."""
        self.graph.replay()
        return self.output

    def __call__(self, images: torch.Tensor, *, clone: bool = False) -> torch.Tensor:
        """Copy ``images`` ``(batch, 3, H, W)`` (any dtype/device; host tensors are copied asynchronously,
        pin them for a true async copy) into the input buffer, replay, return the logits."""
        check_images(images, **{**input_spec(self.model), "weight": None}, where="GraphedViT")
        if tuple(images.shape) != tuple(self.input.shape):
            raise ValueError(f"GraphedViT: images have shape {tuple(images.shape)}, the graph was captured for "
                             f"{tuple(self.input.shape)}")
        self.input.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.output.clone() if clone else self.output

    def __repr__(self) -> str:
        return (f"GraphedViT({self.model.method!r}, batch={self.batch}, dtype={self.dtype}, "
                f"device={self.device}, capture_s={self.capture_s:.3f})")


def capture(pruned: PrunedViT, batch: int, **kwargs) -> GraphedViT:
    """Warm up and capture ``pruned``'s whole forward for ``batch`` images; see :class:`GraphedViT`.

    Keyword arguments: ``device`` (default: the model's), ``dtype`` of the input buffer (default: the
    model's), ``warmup`` eager forwards before capture (default 2), ``example`` images for the warm-up and
    capture (default random), ``pool`` (a ``torch.cuda.graph_pool_handle()`` to share memory between graphs
    that are never replayed concurrently). Raises ``ValueError`` (see :func:`check_graphable`).
    """
    return GraphedViT(pruned, batch, **kwargs)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graphed(pruned: PrunedViT, batch: int, *, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> GraphedViT:
    """:func:`capture` once per ``(model, batch, dtype, device)`` and reuse the graph afterwards.

    The cache lives as long as ``pruned`` does; the method is part of ``pruned`` itself. Call
    :func:`clear_cache` after moving the model or changing its dtype.
    """
    per_model = _CACHE.setdefault(pruned, {})
    dev = check_graphable(pruned, device)
    key = (batch, dtype if dtype is not None else next(pruned.parameters()).dtype, dev)
    g = per_model.get(key)
    if g is None:
        g = per_model[key] = capture(pruned, batch, dtype=key[1], device=dev)
    return g


def clear_cache(pruned: PrunedViT | None = None) -> None:
    """Drop the cached graphs of ``pruned`` (or of every model), releasing their memory pools."""
    if pruned is None:
        _CACHE.clear()
    else:
        _CACHE.pop(pruned, None)

