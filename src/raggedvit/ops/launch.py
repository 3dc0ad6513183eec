"""Dispatch-aware launching of Triton kernels.

Triton's ``JITFunction.run`` binds arguments, computes a specialization key and looks the kernel up in its
cache on every call: 10-12 us of host time, more than the maths of a pruned-ViT attention call. A
:class:`DirectLauncher` goes through that path once per *launch key* (a small tuple the caller computes
from what Triton specializes on: dtype, head dim, pointer alignment, stride divisibility, device), keeps
the compiled kernel, and afterwards calls the compiled kernel's C launcher directly on the current raw
CUDA stream (the one CUDA-graph capture records on). On any miss (new key, another current device,
Triton's launch hooks installed by a profiler, the Triton interpreter) it takes the normal JIT path, and
:attr:`DirectLauncher.stats` counts which path ran, so nothing falls back silently.

Calling convention of the cached launcher (Triton >= 3.3, checked against 3.6 and 3.8)::

    compiled.run(grid_x, grid_y, grid_z, stream, compiled.function, compiled.packed_metadata,
                 launch_metadata, enter_hook, exit_hook, *all_kernel_arguments_including_constexprs)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import triton
from triton.runtime.jit import JITFunction

try:  # Triton >= 3.3 keeps launch hooks in knobs; older versions on CompiledKernel.
    from triton import knobs as _knobs

    def _hooks_installed() -> bool:
        rt = _knobs.runtime
        return rt.launch_enter_hook is not None or rt.launch_exit_hook is not None

except ImportError:  # pragma: no cover - old Triton
    from triton.compiler import CompiledKernel as _CK

    def _hooks_installed() -> bool:
        return _CK.launch_enter_hook is not None or _CK.launch_exit_hook is not None


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_current_device = getattr(torch._C, "_cuda_getDevice", None)


class DirectLauncher:
    """Launch one ``@triton.jit`` kernel, skipping Triton's binder after the first call per key.

    Args:
        fn: the ``@triton.jit`` function.
        name: a label used in :attr:`stats` and error messages.
    """

    def __init__(self, fn: Any, name: str):
        self.fn = fn
        self.name = name
        self.interpreted = not isinstance(fn, JITFunction)  # TRITON_INTERPRET=1 gives an InterpretedFunction
        self._cache: dict[tuple, tuple] = {}
        self.stats: Counter[str] = Counter()

    def __call__(self, key: tuple, device_index: int, grid: tuple[int, int, int], args: tuple, **options: Any) -> None:
        """Launch with ``args`` (every kernel parameter in order, constexprs included) on the current stream.

        ``key`` must change whenever Triton would compile a different specialization for ``args``
        (callers include dtype, constexprs, 16-byte pointer alignment and stride divisibility by 16).
        ``device_index`` is the index of the CUDA device that owns the tensors (-1 for CPU tensors,
        which only the interpreter runs).
        """
        entry = self._cache.get(key)
        if entry is not None and device_index == _current_device() and not _hooks_installed():
            run, function, packed_metadata = entry
            run(grid[0], grid[1], grid[2], _raw_stream(device_index), function, packed_metadata, None, None, None,
                *args)
            self.stats["direct"] += 1
            return
        self._launch_jit(key, device_index, grid, args, options)

    def _launch_jit(self, key: tuple, device_index: int, grid: tuple, args: tuple, options: dict) -> None:
        self.stats["jit"] += 1
        if self.interpreted or device_index < 0:
            self.fn[grid](*args, **options)
            return
        with torch.cuda.device(device_index):
            compiled = self.fn[grid](*args, **options)
        if key not in self._cache:
            self.stats["compiled_keys"] += 1
        # ``compiled.run`` initialises the module handles lazily; the JIT launch above already did.
        self._cache[key] = (compiled.run, compiled.function, compiled.packed_metadata)

    def cached_keys(self) -> list[tuple]:
        """Launch keys whose compiled kernel is held for direct launches."""
        return list(self._cache)


def triton_version() -> str:
    """The installed Triton version string."""
    return triton.__version__
