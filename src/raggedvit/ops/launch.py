"""Dispatch-aware launching of Triton kernels.

Triton's ``JITFunction.run`` binds arguments, computes a specialization key and looks the kernel up in its
cache on every call: 10-12 us of host time, more than the maths of a pruned-ViT attention call. A
:class:`DirectLauncher` goes through that path once per *launch key* (a small tuple the caller computes
from what Triton specializes on: dtype, constexprs, strides, pointer alignment, device), keeps the compiled
kernel, and afterwards calls its launcher directly on the current raw CUDA stream (the one CUDA-graph
capture records on), passing pointers as ints (the launcher then skips a ``cuPointerGetAttribute`` per
tensor). On any miss (new key, another current device, Triton launch hooks installed by a profiler, the
Triton interpreter) the caller takes the normal JIT path; :attr:`DirectLauncher.stats` counts which path
ran, so nothing falls back silently.

Two direct conventions are used, chosen by inspecting the compiled kernel's launcher object:

* ``raw``: Triton 3.4-3.6's ``CudaLauncher`` (a ``launch`` C function taking
  ``(gx, gy, gz, stream, function, cooperative, pdl, global_scratch, profile_scratch, metadata,
  launch_metadata, enter_hook, exit_hook, *args)``; verified on an H100 with Triton 3.6), used only when
  the kernel needs no scratch memory. Skips a Python frame and two closures per call.
* ``run``: ``compiled.run(gx, gy, gz, stream, function, metadata, launch_metadata, enter_hook, exit_hook,
  *args)``, the convention ``JITFunction.run`` itself uses since Triton 3.3 (3.6, 3.8 ...).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from triton.runtime.jit import JITFunction

try:  # Triton >= 3.3 keeps launch hooks in knobs (3.6+: HookChain objects, empty by default).
    from triton import knobs as _knobs

    _RT = _knobs.runtime
    _ENTER, _EXIT = _RT.launch_enter_hook, _RT.launch_exit_hook

    def hooks_installed() -> bool:
        """True if a profiler or user installed Triton launch hooks (then launches go through the JIT path)."""
        enter, exit_ = _RT.launch_enter_hook, _RT.launch_exit_hook
        if enter is _ENTER and exit_ is _EXIT:  # the default objects: empty chains (or None) unless added to
            return bool(getattr(enter, "calls", enter)) or bool(getattr(exit_, "calls", exit_))
        return any(h is not None and getattr(h, "calls", True) for h in (enter, exit_))

except ImportError:  # pragma: no cover - old Triton
    from triton.compiler import CompiledKernel as _CK

    def hooks_installed() -> bool:
        """True if Triton launch hooks are installed (then launches go through the JIT path)."""
        return _CK.launch_enter_hook is not None or _CK.launch_exit_hook is not None


raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
current_device = getattr(torch._C, "_cuda_getDevice", None)


def _direct_entry(compiled: Any) -> tuple[Any, tuple, str]:
    """(callable, leading args after the stream, convention name) for launching ``compiled`` directly."""
    run = compiled.run
    raw_ok = (
        hasattr(run, "launch")
        and not hasattr(run, "arg_annotations")  # 3.7+ passes annotations + an args tuple: use ``run``
        and not getattr(run, "gsan_enabled", False)
        and getattr(run, "global_scratch_size", 1) == 0
        and getattr(run, "profile_scratch_size", 1) == 0
        and hasattr(run, "launch_cooperative_grid")
        and hasattr(run, "launch_pdl")
    )
    if raw_ok:
        prefix = (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                  compiled.packed_metadata, None, None, None)
        return run.launch, prefix, "raw"
    return run, (compiled.function, compiled.packed_metadata, None, None, None), "run"


class DirectLauncher:
    """Launch one ``@triton.jit`` kernel, skipping Triton's binder after the first call per key.

    Args:
        fn: the ``@triton.jit`` function.
        name: a label for error messages.

    :meth:`launch` is the hot path: a cache lookup, then one call of Triton's launcher with the per-call
    pointers and ints followed by ``constant``, the tail of the argument list that the key determines
    (strides, scalars, constexprs), cached at the first launch. ``ragged_attention`` inlines the same steps
    to save the Python frame.
    """

    def __init__(self, fn: Any, name: str):
        self.fn = fn
        self.name = name
        self.interpreted = not isinstance(fn, JITFunction)  # TRITON_INTERPRET=1 gives an InterpretedFunction
        self.cache: dict[tuple, tuple] = {}
        self.conventions: dict[tuple, str] = {}
        self.direct_launches = 0
        self._counts: Counter[str] = Counter()
        self._single_device = False  # set at the first compile: then the current-device check is skipped

    @property
    def stats(self) -> dict[str, int]:
        """Launch counts: ``direct`` (cached kernel), ``jit`` (Triton's JIT path), ``compiled_keys``."""
        return {"direct": self.direct_launches, **self._counts}

    def usable(self, device_index: int) -> bool:
        """Whether a cached kernel may be launched directly for tensors on ``device_index`` right now."""
        return (self._single_device or device_index == current_device()) and not hooks_installed()


    def launch(self, key: tuple | None, device_index: int, grid: tuple[int, int, int], ptrs: tuple[int, ...],
               ints: tuple, jit_args, **options: Any) -> None:
        """Launch on ``grid``: directly when ``key`` is cached, else through :meth:`launch_jit`.

        ``key``: what Triton specializes on (dtype, device, constexprs, strides, pointer alignment), or None
        (never cached, e.g. misaligned pointers). ``ptrs`` / ``ints``: the leading per-call arguments (data
        pointers, then ints such as lengths). ``jit_args``: a callable returning every kernel argument in
        order (tensors for the pointers), called only on the JIT path."""
        entry = self.cache.get(key) if key is not None else None
        if entry is not None and self.usable(device_index):
            call, prefix, constant = entry
            call(grid[0], grid[1], grid[2], raw_stream(device_index), *prefix, *ptrs, *ints, *constant)
            self.direct_launches += 1
        else:
            self.launch_jit(key, device_index, grid, jit_args(), n_per_call=len(ptrs) + len(ints), **options)

    def launch_jit(self, key: tuple | None, device_index: int, grid: tuple, args: tuple, *, n_per_call: int,
                   **options: Any) -> None:
        """Launch through ``JITFunction.run`` and, when ``key`` is not None, cache the compiled kernel.

        ``args``: every kernel parameter in order, constexprs included (pointers as tensors); the first
        ``n_per_call`` change from call to call, the rest must be fully determined by ``key``.
        """
        self._counts["jit"] += 1
        if self.interpreted or device_index < 0:
            self.fn[grid](*args, **options)
            return
        with torch.cuda.device(device_index):
            compiled = self.fn[grid](*args, **options)
        if key is not None and key not in self.cache:
            call, prefix, convention = _direct_entry(compiled)
            self.cache[key] = (call, prefix, tuple(args[n_per_call:]))
            self.conventions[key] = convention
            self._counts["compiled_keys"] += 1
            self._single_device = torch.cuda.device_count() == 1
