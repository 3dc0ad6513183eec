"""Device, dtype and attention backend from the command line; synchronizing, timing and the environment.

:func:`resolve_device`, :func:`resolve_dtype` and :func:`resolve_attention` turn ``--device``, ``--dtype`` and
``--attention`` into what this machine can run, or raise :class:`~.errors.UsageError` saying why not.
:func:`environment` records what a result depends on (the same keys in every JSON file the commands write).
"""

from __future__ import annotations

import datetime
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a device this machine has, else :class:`UsageError`."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available here (CUDA is not available to torch "
                             f"{torch.__version__}: torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: only cpu and cuda are supported")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on cuda, float32 on cpu. float16 on cpu is refused with the reason."""
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype = DTYPES[spec]
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype float16 needs a CUDA GPU: the packed layout's Triton kernel runs on the GPU and "
                         "raggedvit does not support float16 on CPU; use --dtype float32 (the CPU default) or "
                         "bfloat16, or --device cuda on a GPU machine")
    return dtype


def resolve_attention(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[str, str]:
    """(backend name, one-line reason) for ``--attention``; unknown or unavailable names raise UsageError."""
    from ..ops.backends import BACKENDS, get_backend

    if spec == "auto":
        if device.type == "cuda":
            return "triton", "raggedvit's Triton kernel (auto on cuda)"
        return "reference", "pure-PyTorch reference (auto on cpu: the Triton kernel needs a CUDA GPU)"
    try:
        backend = get_backend(spec)
    except ValueError:
        raise UsageError(f"unknown attention backend {spec!r}; valid: auto, {', '.join(sorted(BACKENDS))}") from None
    reason = backend.unavailable_reason(device, dtype)
    if reason is not None:
        usable = [n for n in sorted(BACKENDS) if BACKENDS[n].unavailable_reason(device, dtype) is None]
        raise UsageError(f"--attention {spec} cannot run on {device} with {str(dtype).removeprefix('torch.')}: "
                         f"{reason}. Usable here: {', '.join(usable) or 'none'}")
    return spec, backend.description


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, synchronizing each time."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU (<processor>, <N> threads)``, for printed headers."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True)
        return res.stdout.strip().splitlines()[0] or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing or broken optional package is just "unknown"
        return None


def environment(device: torch.device | str, command: str | None = None) -> dict[str, Any]:
    """What a result depends on: GPU, driver, CUDA, torch, triton, timm, Python, date, command, device, CPU."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    return {
        "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
        "driver": _driver_version() if on_gpu else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "timm": _version("timm"),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(sys.argv),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
    }
