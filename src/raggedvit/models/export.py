"""``torch.export`` and AOTInductor packages of a pruned model at a fixed batch size.

The packed layout has static shapes for a given batch size (every buffer is sized from host ints), so a
pruned model exports to one graph: :func:`export_pruned`. Its raggedvit kernels appear in it as the
``torch.ops.raggedvit.*`` custom ops (see :mod:`raggedvit.ops.library`), whose implementations are Python
functions registered when :mod:`raggedvit` is imported. :func:`package_pruned` compiles an exported model
with AOTInductor into a ``.pt2`` file; :func:`load_package` loads one. The loaded package runs without
raggedvit's Python forward (no timm module, no pruning code), but its custom ops still dispatch to
raggedvit's registered implementations: **the loading process must** ``import raggedvit`` **first** (which
:func:`load_package` does, being part of it). Stats (``PrunedViT.last_stats``) are not produced: an exported
program returns the logits only.
"""

from __future__ import annotations

import os
import warnings
import zipfile

import torch

from .pruned import PrunedViT

__all__ = ["example_images", "export_pruned", "package_pruned", "load_package", "GraphedPackage", "static_libstdcxx"]


def example_images(model: torch.nn.Module, batch_size: int, *, seed: int = 0) -> torch.Tensor:
    """``(batch_size, C, H, W)`` standard-normal images (seeded) on the device and dtype of ``model`` (a
    :class:`PrunedViT` or a timm ViT)."""
    pe = getattr(model, "backbone", model).patch_embed
    weight = pe.proj.weight
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, pe.proj.in_channels, *pe.img_size, generator=gen)
    return x.to(device=weight.device, dtype=weight.dtype)


def export_pruned(pruned: PrunedViT, batch_size: int | None = None, *,
                  images: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``pruned`` (eval mode, no autograd) for images of one batch size.

    Args:
        pruned: a :class:`PrunedViT` with ``layout="packed"`` (the padded layout's adaptive stages have a
            data-dependent width: not supported here).
        batch_size: the batch size the program takes (every input must have it); or give ``images``.
        images: example input ``(B, C, H, W)`` on the model's device and dtype (default:
            :func:`example_images`).

    Returns:
        the ``ExportedProgram`` (``ep.module()(images)`` runs it). Raises ValueError for a non-PrunedViT, the
        padded layout or a batch size < 1.
    """
    if not isinstance(pruned, PrunedViT):
        raise ValueError(f"export_pruned: expected a raggedvit PrunedViT (raggedvit.prune(...)), got "
                         f"{type(pruned).__name__}")
    if pruned.layout != "packed":
        raise ValueError("export_pruned: only layout='packed' exports (static shapes at a fixed batch size); "
                         f"this model has layout={pruned.layout!r}")
    if images is None:
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"export_pruned: batch_size must be an int >= 1, got {batch_size!r}")
        images = example_images(pruned, batch_size)
    was_training = pruned.training
    pruned.eval()
    try:
        with torch.no_grad():
            return torch.export.export(pruned, (images,))
    finally:
        pruned.train(was_training)


def package_pruned(program: torch.export.ExportedProgram, path: str | os.PathLike) -> str:
    """Compile an exported program (:func:`export_pruned`) with AOTInductor into the package ``path``
    (``.pt2``). Returns the path. The package holds the weights and the compiled graph; the raggedvit ops
    in it need ``import raggedvit`` in the process that loads it."""
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"package_pruned: the package path must end in .pt2, got {path!r}")
    with torch.no_grad():
        path = torch._inductor.aoti_compile_and_package(program, package_path=path)
    _warn_if_static_libstdcxx(path, "package_pruned")
    return path


def load_package(path: str | os.PathLike, *, run_single_threaded: bool = False):
    """Load an AOTInductor package written by :func:`package_pruned`: a callable ``images -> logits``.

    Importing this module registered raggedvit's ops, which the package's graph calls. Warns first when the
    package carries its own libstdc++ (:func:`static_libstdcxx`).

    ``run_single_threaded=True`` loads it without AOTInductor's per-call thread synchronisation (it queries a
    CUDA event of the previous call, which invalidates a CUDA-graph capture): use it to capture the package's
    call in ``torch.cuda.graph`` (one thread per loaded package), see docs/export.md."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_package: no such file {path!r}")
    _warn_if_static_libstdcxx(path, "load_package")
    return torch._inductor.aoti_load_package(path, run_single_threaded=bool(run_single_threaded))


class GraphedPackage:
    """An AOTInductor package (:func:`package_pruned`) loaded single-threaded and its call captured once in a
    CUDA graph, for inputs of ``example``'s shape, dtype and device; replayed per call.

    Called directly, a package dispatches every ``torch.ops.raggedvit.*`` op of the forward into its Python
    implementation (about 100 per forward for a ViT); in a CUDA graph those host costs are paid once, at
    capture. Calling the object copies the images into the static input buffer, replays and returns the
    static logits, which the next call overwrites (``clone=True`` returns a copy). Kept tokens are still
    decided per image on the device at every replay. One thread per object (``run_single_threaded``).

    Attributes: ``input`` (static input buffer), ``output`` (static logits), ``graph``, ``run`` (the loaded
    package).
    """

    def __init__(self, path: str | os.PathLike, example: torch.Tensor, *, warmup: int = 3) -> None:
        if not isinstance(example, torch.Tensor) or not example.is_cuda:
            got = f"a tensor on {example.device}" if isinstance(example, torch.Tensor) else type(example).__name__
            raise ValueError("GraphedPackage: example must be a CUDA tensor shaped like the package's input "
                             f"(CUDA graphs need a GPU), got {got}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"GraphedPackage: warmup must be an int >= 1, got {warmup!r}")
        self.run = load_package(path, run_single_threaded=True)
        self.input = example.detach().clone(memory_format=torch.contiguous_format)
        with torch.no_grad(), torch.cuda.device(self.input.device):
            for _ in range(warmup):  # outside the capture: allocations settle, lazy work happens here
                self.run(self.input)
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                out = self.run(self.input)
        self.output: torch.Tensor = out[0] if isinstance(out, (list, tuple)) else out

    def replay(self) -> torch.Tensor:
        """Replay on whatever :attr:`input` holds; returns the static :attr:`output`."""
        self.graph.replay()
        return self.output

    def __call__(self, images: torch.Tensor, *, clone: bool = False) -> torch.Tensor:
        if (not isinstance(images, torch.Tensor) or images.shape != self.input.shape
                or images.dtype != self.input.dtype or images.device != self.input.device):
            got = (f"{tuple(images.shape)} {images.dtype} on {images.device}" if isinstance(images, torch.Tensor)
                   else type(images).__name__)
            raise ValueError(f"GraphedPackage: expected images {tuple(self.input.shape)} {self.input.dtype} on "
                             f"{self.input.device} (the captured shape), got {got}")
        self.input.copy_(images)
        self.graph.replay()
        return self.output.clone() if clone else self.output


def static_libstdcxx(path: str | os.PathLike) -> list[str]:
    """The compiled ``.so`` files of an AOTInductor package that do not link ``libstdc++.so.6``.

    AOTInductor's runtime is C++; a ``.so`` that does not list the shared libstdc++ carries a static copy of
    its own (the compiler linked ``libstdc++.a``), and loading it into a process that already holds
    libstdc++ (torch does) crashed in ``std::regex`` on our H200 machine (docs/export.md). A byte search of
    each ``.so`` for the ``libstdc++.so.6`` name, without running anything. Raises ValueError if ``path`` is
    not a zip archive (a ``.pt2`` package is one)."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"static_libstdcxx: {path!r} is not an AOTInductor package (.pt2 zip archive)")
    with zipfile.ZipFile(path) as z:
        return [n for n in z.namelist() if n.endswith(".so") and b"libstdc++.so.6" not in z.read(n)]


def _warn_if_static_libstdcxx(path: str, who: str) -> None:
    static = static_libstdcxx(path)
    if static:
        cxx = torch._inductor.config.cpp.cxx[-1]
        warnings.warn(f"{who}: {path} holds {len(static)} compiled .so that carry their own static libstdc++ "
                      f"(the C++ compiler, {cxx!r}, links libstdc++.a); loading such a package crashed in "
                      "std::regex on a machine like that. Rebuild it with a compiler that links "
                      "libstdc++.so.6, e.g. REAL_CXX=<your g++> CXX=benchmarks/cxx_shared_libstdcxx.sh from "
                      "raggedvit's repository (docs/export.md).", RuntimeWarning, stacklevel=3)
