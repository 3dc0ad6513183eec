"""Timing primitives and JSON output shared by the ``raggedvit bench`` commands.

Three numbers per operation, never mixed (see ``docs/pitfalls.md``, "Benchmark hygiene"):

* :func:`host_us_per_call` - wall time per call of many back-to-back calls, the clock stopped *before*
  the final synchronize: what the CPU spends issuing one call (CUDA events hide this).
* :func:`cuda_event_us` - median CUDA-event time of one call with the launch queue kept full (a spin
  kernel runs ahead of each chunk of calls), so host launch gaps are not counted as device time.
* :func:`graph_replay_us` - wall time per replay of a captured CUDA graph, back-to-back, synchronized
  at the end: the per-call cost once host dispatch is gone (:func:`capture_graph` captures it).

Plus :func:`eager_floor` (``x.add_(1)`` on a tiny tensor), :func:`ragged_lengths` (seeded per-image
token counts after pruning) and :func:`write_json` (the environment it records comes from
:func:`raggedvit.runtime.device.environment`).
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..runtime.device import synchronize


def calls_for_budget(fn: Callable[[], Any], device: torch.device | str, budget_s: float,
                     max_calls: int = 200, min_calls: int = 5, probe: int = 3) -> int:
    """How many calls of ``fn`` fit in ``budget_s`` (estimated from ``probe`` synchronized calls), clamped."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(probe):
        fn()
    synchronize(device)
    per_call = max((time.perf_counter() - t0) / probe, 1e-7)
    return max(min_calls, min(max_calls, int(budget_s / per_call)))


def host_us_per_call(fn: Callable[[], Any], device: torch.device | str, *, calls: int = 200, repeat: int = 3,
                     warmup: int = 5) -> float:
    """Host microseconds per call: median over ``repeat`` rounds of ``calls`` back-to-back calls.

    Each round synchronizes, starts the clock, issues ``calls`` calls, stops the clock and only then
    synchronizes, so the number is the CPU's issue cost per call. It includes device time only when the
    call itself waits for the device (``.item()``) or the launch queue fills up (about a thousand pending
    launches): where the device is the bottleneck it tends to the device time per call.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        synchronize(device)
        times.append((t1 - t0) / calls * 1e6)
    return statistics.median(times)


def _cycles_per_us(device: torch.device) -> float:
    """GPU clock cycles per microsecond, rounded up to at least 2000 (over-sleeping only costs time)."""
    rate = getattr(torch.cuda.get_device_properties(device), "clock_rate", 0) or 0  # kHz in CUDA's cudaDeviceProp
    mhz = rate / 1000.0 if rate > 100_000 else float(rate)  # accept a value reported in MHz too
    return max(mhz, 2000.0)


def cuda_event_us(fn: Callable[[], Any], device: torch.device | str, *, iters: int = 100, warmup: int = 5,
                  host_us_hint: float | None = None, chunk: int = 10) -> float:
    """Median device microseconds of one call, from CUDA events recorded around each call.

    Calls are issued in chunks of ``chunk``; before each chunk ``torch.cuda._sleep`` keeps the GPU busy
    for about 1.5x the host time of the chunk (``host_us_hint`` per call, measured if None; at most 0.1 s),
    so the calls then run back-to-back on the device and host launch gaps do not count as device time.
    A call that synchronizes by itself still includes its own wait. CUDA only.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"cuda_event_us needs a CUDA device, got {device}")
    if host_us_hint is None:
        host_us_hint = host_us_per_call(fn, device, calls=20, repeat=1, warmup=warmup)
    else:
        for _ in range(warmup):
            fn()
    sleep_us = min(1.5 * host_us_hint * chunk + 20.0, 100_000.0)  # capped: slow calls need no head start
    cycles = int(sleep_us * _cycles_per_us(device))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    with torch.cuda.device(device):
        synchronize(device)
        for i0 in range(0, iters, chunk):
            torch.cuda._sleep(cycles)
            for i in range(i0, min(i0 + chunk, iters)):
                starts[i].record()
                fn()
                ends[i].record()
        synchronize(device)
    return statistics.median(s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends))


def capture_graph(fn: Callable[[], Any], device: torch.device | str, *, warmup: int = 3):
    """Capture one call of ``fn`` in a CUDA graph; returns ``(graph, output_of_the_captured_call)``.

    ``fn`` runs ``warmup`` times on a side stream first (compiles kernels, settles the allocator), as
    ``torch.cuda.graphs`` recommends. Replaying the graph rewrites the returned output in place.
    """
    device = torch.device(device)
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        synchronize(device)
    return graph, out


def graph_replay_us(graph, device: torch.device | str, *, replays: int = 200, repeat: int = 3) -> float:
    """Microseconds per replay of ``graph``: median over ``repeat`` rounds of ``replays`` back-to-back
    replays, synchronized before the clock starts and before it stops (the throughput of replays)."""
    graph.replay()
    times = []
    for _ in range(max(1, repeat)):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        synchronize(device)
        times.append((time.perf_counter() - t0) / replays * 1e6)
    return statistics.median(times)


def eager_floor(device: torch.device | str, *, calls: int = 200, repeat: int = 3) -> dict[str, float | None]:
    """Host (and, on CUDA, device) microseconds of ``x.add_(1)`` on a 1-element tensor: the eager floor."""
    device = torch.device(device)
    x = torch.zeros(1, device=device)
    fn = lambda: x.add_(1)
    host = host_us_per_call(fn, device, calls=calls, repeat=repeat)
    dev = cuda_event_us(fn, device, host_us_hint=host) if device.type == "cuda" else None
    return {"host_us": host, "device_us": dev}


def ragged_lengths(batch: int, keep_rate: float, *, seed: int, n_patches: int = 196, prefix: int = 1,
                   spread: float = 0.5) -> list[int]:
    """Seeded per-image sequence lengths after token pruning: ``prefix + kept patches``.

    The kept count of each image is ``round(u * keep_rate * n_patches)`` with ``u`` uniform in
    ``[1 - spread, 1 + spread]``, clipped to ``[0, n_patches]`` (threshold-style pruning keeps a different
    number per image). ``keep_rate >= 1`` means no pruning: every image keeps all ``n_patches``.
    """
    if keep_rate >= 1.0:
        return [prefix + n_patches] * batch
    rng = random.Random(f"{seed}-{batch}-{keep_rate}")
    mean = keep_rate * n_patches
    return [prefix + min(n_patches, max(0, round(rng.uniform(1 - spread, 1 + spread) * mean)))
            for _ in range(batch)]


def uniform_lengths(batch: int, lo: int, hi: int, *, seed: int) -> list[int]:
    """Seeded lengths drawn uniformly from the integers ``lo..hi`` (e.g. the 40-197 headline point)."""
    rng = random.Random(f"{seed}-{batch}-{lo}-{hi}")
    return [rng.randint(lo, hi) for _ in range(batch)]


def device_slug(env: dict[str, Any]) -> str:
    """File-name slug of the machine: the GPU name (``nvidia-h100-80gb-hbm3``) or ``cpu``."""
    name = env.get("gpu") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def write_json(result: dict[str, Any], out_dir: str | Path, kind: str, *, stamp: str | None = None) -> Path:
    """Write ``result`` to ``<out_dir>/<kind>-<device slug>-<YYYYMMDD-HHMMSS>.json`` and return the path.

    The slug comes from ``result["env"]`` (see :func:`raggedvit.runtime.device.environment`); the directory is
    created if needed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{kind}-{device_slug(result.get('env', {}))}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return path
