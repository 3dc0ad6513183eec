"""``raggedvit bench attention``: one varlen attention call, every backend, side by side in one run.

For each grid point (batch x DeiT heads x keep rate x dtype, head dim 64, ragged per-image lengths) and
each backend of :mod:`raggedvit.ops.backends`, it measures host us per call (back-to-back calls), device
us (CUDA events, queue kept full), CUDA-graph replay us (graph-safe backends; the replay is also checked
after the lengths change) and the host cost as a multiple of the eager floor ``x.add_(1)`` measured in
the same run. Every output is first checked against :func:`raggedvit.ragged_attention_reference`.
A fixed headline point (batch 8, 6 heads, lengths 40-197, fp16) comes first.

Writes ``<out>/attention-<gpu-or-cpu>-<YYYYMMDD-HHMMSS>.json`` (``{"kind", "env", "floor", "rows"}``), a
PNG next to it (when matplotlib is installed) and prints a markdown table of the headline point last.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import torch

from ..ops.attention import launcher
from ..ops.backends import BACKENDS
from ..ops.reference import ragged_attention_reference
from ..runtime.arguments import comma_list
from ..runtime.device import environment, resolve_device, synchronize
from ..runtime.errors import run_command
from . import timing

HEAD_DIM = 64
N_PATCHES = 196
DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
FULL = {"batches": (1, 4, 16, 64, 256), "heads": (3, 6, 12), "keep_rates": (1.0, 0.7, 0.5, 0.3, 0.2),
        "dtypes": ("float16", "bfloat16")}
QUICK_CUDA = {"batches": (1, 4), "heads": (3, 6), "keep_rates": (0.7, 0.3), "dtypes": ("float16",)}
QUICK_CPU = {"batches": (1, 4), "heads": (3,), "keep_rates": (0.7, 0.3), "dtypes": ("float32",)}
HEADLINE = {"batch": 8, "heads": 6, "lo": 40, "hi": 1 + N_PATCHES}
HEADLINE_CPU_QUICK = {"batch": 2, "heads": 3, "lo": 40, "hi": 1 + N_PATCHES}  # keeps --quick on CPU short
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 3e-2, torch.float32: 1e-3}


def _backend(name: str) -> str:
    if name not in BACKENDS:
        raise argparse.ArgumentTypeError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return name


def _dtype(name: str) -> str:
    if name.lower() not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}; valid: float16, bfloat16, float32")
    return str(DTYPES[name.lower()]).removeprefix("torch.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _keep_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a keep rate in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"keep rate must be in (0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``raggedvit bench attention``."""
    parser.add_argument("--quick", action="store_true",
                        help="reduced grid (batch 1 and 4, 3 and 6 heads, keep 0.7 and 0.3, fp16; < 3 min on an "
                             "H100); on a CPU-only machine a tiny fp32 grid of the CPU-capable backends")
    parser.add_argument("--backends", type=comma_list(_backend), default=None,
                        help=f"comma-separated subset of: {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--dtypes",
                        type=comma_list(_dtype), default=None,
                        help="comma-separated: float16,bfloat16,float32 (default: float16,bfloat16)")
    parser.add_argument("--batches", type=comma_list(_positive_int), default=None,
                        help="comma-separated (default: 1,4,16,64,256)")
    parser.add_argument("--heads", type=comma_list(_positive_int), default=None,
                        help="comma-separated (default: 3,6,12: DeiT-T/S/B)")
    parser.add_argument("--keep-rates",
                        type=comma_list(_keep_rate), default=None,
                        help="comma-separated, in (0, 1] (default: 1,0.7,0.5,0.3,0.2)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help="timing rounds per number, median taken (default 3; 1 for --quick on CPU)")
    parser.add_argument("--calls", type=_positive_int, default=200, help="max back-to-back calls per round")
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="time per timing round, sets the call count (default 50 on CUDA, 5 on CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the lengths and inputs")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


def _points(args, device: torch.device) -> list[dict]:
    base = FULL if not args.quick else (QUICK_CUDA if device.type == "cuda" else QUICK_CPU)
    dtypes = args.dtypes or list(base["dtypes"])
    grid = {k: getattr(args, k) or list(base[k]) for k in ("batches", "heads", "keep_rates")}
    head_dtype = "float16" if "float16" in dtypes else dtypes[0]
    hl = HEADLINE_CPU_QUICK if args.quick and device.type == "cpu" else HEADLINE
    points = [{"point": "headline", "dtype": head_dtype, "batch": hl["batch"], "heads": hl["heads"], "keep_rate": None,
               "lengths": timing.uniform_lengths(hl["batch"], hl["lo"], hl["hi"], seed=args.seed)}]
    for dtype in dtypes:
        for heads in grid["heads"]:
            for keep in grid["keep_rates"]:
                for batch in grid["batches"]:
                    points.append({"point": "grid", "dtype": dtype, "batch": batch, "heads": heads, "keep_rate": keep,
                                   "lengths": timing.ragged_lengths(batch, keep, seed=args.seed, n_patches=N_PATCHES)})
    return points


def _reason(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    reason = BACKENDS[name].unavailable_reason(device, dtype)
    if reason is None and name == "triton" and device.type == "cpu" and launcher.interpreted:
        reason = "on CPU Triton runs only under the interpreter (TRITON_INTERPRET=1); its timings mean nothing"
    return reason


def _max_err(out: torch.Tensor, ref: torch.Tensor, n: int) -> float:
    diff = (out[:n].float() - ref[:n].float()).abs()
    return float(diff.max()) if diff.numel() else 0.0  # not timed: syncing here is fine


def _check_graph(be, graph, gout, q, k, v, cu, lengths: list[int], max_seqlen: int, tol: float) -> tuple[bool, float]:
    """Replay after changing the lengths in place (rotated, last one halved); compare with the reference."""
    new = lengths[1:] + lengths[:1]
    new[-1] = max(1, new[-1] // 2)
    old_cu = cu.clone()
    cu.copy_(torch.tensor([0] + [sum(new[:i + 1]) for i in range(len(new))], dtype=torch.int32))
    graph.replay()
    ref = ragged_attention_reference(q, k, v, cu, max_seqlen)
    n = sum(new)
    err = _max_err(gout, ref, n)
    tail_ok = not be.zero_tail or n == gout.shape[0] or float(gout[n:].float().abs().max()) == 0.0
    cu.copy_(old_cu)
    return bool(err <= tol and tail_ok and math.isfinite(err)), err


def _measure(be, point: dict, inputs: tuple, ref: torch.Tensor, device: torch.device, args, res: dict) -> None:
    """Check one backend against the reference, then time it; fills ``res`` (a row) as it goes."""
    q, k, v, cu, max_seqlen = inputs
    fn = lambda: be.fn(q, k, v, cu, max_seqlen)
    dtype = DTYPES[point["dtype"]]
    tol = TOLERANCE[dtype]
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    res["first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    err = _max_err(out, ref, q.shape[0])
    res["max_abs_err"] = err
    if not err <= tol:
        res["status"] = f"error: max |out - reference| = {err:.3g} > {tol:g}"
        return
    on_gpu = device.type == "cuda"
    budget = (args.budget_ms if args.budget_ms is not None else (50.0 if on_gpu else 5.0)) / 1e3
    calls = timing.calls_for_budget(fn, device, budget, max_calls=args.calls, min_calls=5 if on_gpu else 2,
                                    probe=3 if on_gpu else 1)
    res["calls"] = calls
    res["host_us"] = timing.host_us_per_call(fn, device, calls=calls, repeat=args.repeat, warmup=5 if on_gpu else 1)
    if device.type == "cuda":
        res["device_us"] = timing.cuda_event_us(fn, device, iters=min(100, calls), host_us_hint=res["host_us"])
        if be.graph_safe:
            graph, gout = timing.capture_graph(fn, device)
            res["graph_us"] = timing.graph_replay_us(graph, device, replays=calls, repeat=args.repeat)
            ok, gerr = _check_graph(be, graph, gout, q, k, v, cu, point["lengths"], max_seqlen, tol)
            res["graph_verified"] = ok
            del graph, gout
            if not ok:
                res["status"] = f"error: CUDA-graph replay wrong after the lengths changed (max err {gerr:.3g})"
                return
    res["status"] = "ok"


def _row(name: str, point: dict) -> dict:
    lengths = point["lengths"]
    return {"backend": name, "dtype": point["dtype"], "batch": point["batch"], "heads": point["heads"],
            "head_dim": HEAD_DIM, "keep_rate": point["keep_rate"], "mean_len": round(sum(lengths) / len(lengths), 2),
            "min_len": min(lengths), "max_len": max(lengths), "host_us": None, "device_us": None, "graph_us": None,
            "host_ratio_to_floor": None, "status": None, "point": point["point"], "total_tokens": sum(lengths),
            "max_seqlen": max(lengths), "graph_safe": BACKENDS[name].graph_safe, "syncs": BACKENDS[name].syncs}


def _run_point(point: dict, names: list[str], device: torch.device, floor_host: float, args) -> list[dict]:
    dtype = DTYPES[point["dtype"]]
    lengths = point["lengths"]
    gen = torch.Generator(device=device).manual_seed(args.seed + 7919 * point["batch"] + 31 * point["heads"])
    q, k, v = (torch.randn(sum(lengths), point["heads"], HEAD_DIM, dtype=dtype, device=device, generator=gen)
               for _ in range(3))
    cu = torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32, device=device)
    max_seqlen = max(lengths)
    ref = ragged_attention_reference(q, k, v, cu, max_seqlen)
    rows = []
    for name in names:
        row = _row(name, point)
        reason = _reason(name, device, dtype)
        if reason is not None:
            row["status"] = f"unavailable: {reason}"
        else:
            try:
                _measure(BACKENDS[name], point, (q, k, v, cu, max_seqlen), ref, device, args, row)
            except Exception as e:  # noqa: BLE001 - recorded in the row and reported, never hidden
                msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                row["status"] = f"error: {type(e).__name__}: {msg}"
                cu.copy_(torch.tensor([0] + [sum(lengths[:i + 1]) for i in range(len(lengths))], dtype=torch.int32))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
        if row["host_us"] is not None:
            row["host_ratio_to_floor"] = row["host_us"] / floor_host
        for key in ("host_us", "device_us", "graph_us", "host_ratio_to_floor"):
            if row[key] is not None:
                row[key] = round(row[key], 3)
        rows.append(row)
    return rows


def _fmt(x, suffix: str = "") -> str:
    return "-" if x is None else f"{x:.1f}{suffix}"


def markdown(result: dict) -> str:
    """Markdown summary of the headline point of a ``bench attention`` result."""
    rows = [r for r in result["rows"] if r["point"] == "headline"]
    if not rows:
        return "(no headline rows)"
    r0, env, floor = rows[0], result["env"], result["floor"]
    lines = [f"### attention, batch {r0['batch']}, {r0['heads']} heads, head dim {r0['head_dim']}, {r0['dtype']}, "
             f"lengths {r0['min_len']}-{r0['max_len']} (mean {r0['mean_len']}) on {env['gpu'] or 'CPU'}", "",
             "| backend | host us | device us | graph us | host / floor | status |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {_fmt(r['host_us'])} | {_fmt(r['device_us'])} | {_fmt(r['graph_us'])} | "
                     f"{_fmt(r['host_ratio_to_floor'], 'x')} | {r['status']} |")
    lines += ["", f"eager floor `x.add_(1)`: host {_fmt(floor['host_us'])} us, device {_fmt(floor['device_us'])} us"]
    by = {r["backend"]: r for r in rows}
    tri = by.get("triton")
    for other in ("fa2_varlen", "fa2_varlen_item"):
        o = by.get(other)
        if tri is None or o is None or tri["status"] != "ok" or o["status"] != "ok":
            why = "not measured" if o is None or tri is None else next(
                r["status"] for r in (o, tri) if r["status"] != "ok")
            lines.append(f"- {other} / triton: n/a ({why})")
            continue
        parts = [f"{key.split('_')[0]} {o[key] / tri[key]:.2f}x" for key in ("host_us", "device_us")
                 if o[key] and tri[key]]
        lines.append(f"- {other} / triton (> 1: triton faster): {', '.join(parts) or 'n/a'}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path | None:
    """PNG of the headline point (bars) and host us vs batch (lines); None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    head = [r for r in rows if r["point"] == "headline"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.27
    for j, key in enumerate(("host_us", "device_us", "graph_us")):
        heights = [r[key] if r[key] else float("nan") for r in head]
        ax1.bar([i + (j - 1) * width for i in range(len(head))], heights, width, label=key.replace("_us", ""))
    ax1.axhline(result["floor"]["host_us"], color="k", ls="--", lw=1, label="x.add_(1) host")
    ax1.set_xticks(range(len(head)), [r["backend"] for r in head], rotation=30, ha="right")
    ax1.set_ylabel("us per call")
    ax1.set_yscale("log")
    ax1.set_title("headline point" + (f" (batch {head[0]['batch']}, {head[0]['heads']} heads)" if head else ""))
    ax1.legend(fontsize=8)
    grid = [r for r in rows if r["point"] == "grid"]
    if grid:
        sel = {k: grid[0][k] for k in ("dtype", "heads", "keep_rate")}
        for name in dict.fromkeys(r["backend"] for r in grid):
            pts = sorted((r["batch"], r["host_us"]) for r in grid
                         if r["backend"] == name and all(r[k] == v for k, v in sel.items()))
            if pts:
                ax2.plot(*zip(*pts), marker="o", label=name)
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("batch")
        ax2.set_ylabel("host us per call")
        ax2.set_title(f"{sel['dtype']}, {sel['heads']} heads, keep {sel['keep_rate']}")
        ax2.legend(fontsize=8)
    fig.suptitle(f"raggedvit bench attention on {result['env']['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _command(args) -> str:
    parts = ["raggedvit bench attention"]
    for key, value in sorted(vars(args).items()):
        if key.startswith("_") or key in ("command", "subcommand") or value in (None, False):
            continue
        flag = "--" + key.replace("_", "-")
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(flag if value is True else f"{flag} {text}")
    return " ".join(parts)


def main(args: argparse.Namespace) -> int:
    """Run ``raggedvit bench attention``; 0 when every available backend ran correctly, 1 otherwise."""
    return run_command("bench attention", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    device = resolve_device(args.device or "auto")
    if device.type == "cuda" and device.index is None:  # results name the device: cuda:N
        device = torch.device("cuda", torch.cuda.current_device())
    warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")
    names = args.backends or list(BACKENDS)
    if args.repeat is None:
        args.repeat = 1 if args.quick and device.type == "cpu" else 3
    points = _points(args, device)
    for dtype in dict.fromkeys(p["dtype"] for p in points):
        for name in names:
            reason = _reason(name, device, DTYPES[dtype])
            if reason:
                print(f"unavailable: {name} ({dtype}): {reason}", file=sys.stderr)
    env = environment(device, command=_command(args))
    floor = timing.eager_floor(device, repeat=args.repeat)
    rows = []
    for point in tqdm(points, desc="bench attention", unit="point", file=sys.stderr, mininterval=1.0):
        rows.extend(_run_point(point, names, device, floor["host_us"], args))
    result = {"kind": "attention", "env": env, "floor": floor,
              "backends": {n: {"description": BACKENDS[n].description, "graph_safe": BACKENDS[n].graph_safe,
                               "syncs": BACKENDS[n].syncs, "zero_tail": BACKENDS[n].zero_tail} for n in names},
              "rows": rows}
    path = timing.write_json(result, args.out, "attention")
    print(f"wrote {path}")
    if not args.no_plot:
        png = plot(result, path.with_suffix(".png"))
        print(f"wrote {png}" if png else "matplotlib is not installed: no plot (pip install 'raggedvit[plots]')")
    errors = [r for r in rows if r["status"].startswith("error")]
    for r in errors:
        print(f"{r['backend']} {r['dtype']} batch {r['batch']} heads {r['heads']}: {r['status']}", file=sys.stderr)
    print(markdown(result))
    return 1 if errors else 0
