"""``raggedvit report RESULTS.json``: plots (PNG) and a markdown table from benchmark JSON.

Input schema (written by ``raggedvit bench attention`` / ``raggedvit bench e2e``)::

    {"kind": "attention" | "e2e", "env": {"gpu", "driver", "torch", "triton", "timm", "date", "command", ...},
     "rows": [{...}, ...]}

* attention rows: ``backend, dtype, batch, heads, head_dim, keep_rate, mean_len, min_len, max_len, host_us,
  device_us, graph_us, host_ratio_to_floor, status`` (+ ``point``: "headline" / "grid"). Plots: host us per
  call and device us per backend vs batch (log-log), one panel per (point, dtype, heads, head_dim,
  keep_rate); CUDA-graph replay dashed; the eager floor (top-level ``floor``) dotted. A top-level
  ``backends`` object (description, graph_safe, syncs) becomes a table.
* e2e rows: ``model, img_size, method, variant, batch, pipeline, images_per_s, latency_us, gflops, kept_mean,
  kept_min, kept_max, max_logit_diff, status``. Plots: speedup of every pipeline over ``padded_sdpa`` vs batch
  (``speedup_vs_padded`` when the row has it, else computed), one panel per (model, img_size, method,
  variant, keep_rate, lengths_dist, k_max, dtype); latency vs keep rate when rows carry ``keep_rate`` with
  two or more values.

Missing fields and backends are tolerated (a panel shows what is there); rows whose ``status`` is not
``"ok"`` are listed in the markdown, never plotted. The markdown opens with the environment (GPU, versions,
date, command) so a table is never read without the machine it came from.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from ..runtime.errors import UsageError, run_command
from .pipelines import BASELINE, PIPELINES

KINDS = ("attention", "e2e")
ENV_ORDER = ("gpu", "driver", "torch", "triton", "timm", "cuda", "python", "date", "command")
COLUMNS = {
    "attention": ("point", "backend", "dtype", "batch", "heads", "head_dim", "keep_rate", "mean_len", "min_len",
                  "max_len", "host_us", "device_us", "graph_us", "host_ratio_to_floor", "max_abs_err", "status"),
    "e2e": ("model", "img_size", "method", "variant", "keep_rate", "lengths_dist", "k_max", "dtype", "batch",
            "pipeline", "mode", "images_per_s", "speedup", "latency_us", "gflops", "kept_mean", "kept_min", "kept_max",
            "max_logit_diff", "top1_agree", "syncs_per_forward", "status"),
}
PANEL_KEYS = {"attention": ("point", "dtype", "heads", "head_dim", "keep_rate"),
              "e2e": ("model", "img_size", "method", "variant", "keep_rate", "lengths_dist", "k_max", "dtype")}
HIDDEN = ("speedup_vs_padded",)  # shown as ``speedup``
MAX_PANELS = 12


def add_arguments(parser) -> None:
    """Arguments of ``raggedvit report``."""
    parser.add_argument("results", nargs="+", metavar="RESULTS.json", help="benchmark JSON file(s)")
    parser.add_argument("--out", metavar="DIR", help="folder for the PNG and markdown files (default: next to each "
                        "JSON file)")


def main(args) -> int:
    """Write ``<stem>.md`` and ``<stem>_*.png`` for every results file; prints what it wrote."""
    return run_command("report", lambda: _run(args))


def _run(args) -> int:
    for path in args.results:
        data = load_results(path)
        out = Path(args.out) if args.out else Path(path).parent
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
        written = write_report(data, out, Path(path).stem, source=str(path))
        for p in written:
            print(f"wrote {p}")
    return 0


def load_results(path: str | Path) -> dict:
    """Read and check a benchmark JSON file; :class:`UsageError` says what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file" if not p.exists() else f"{path}: not a file")
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object with 'kind', 'env' and 'rows', got {type(data).__name__}")
    if data.get("kind") not in KINDS:
        raise UsageError(f"{path}: 'kind' is {data.get('kind')!r}; valid: {', '.join(KINDS)}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f"{path}: 'rows' must be a list of objects")
    if not isinstance(data.get("env", {}), dict):
        raise UsageError(f"{path}: 'env' must be an object")
    return data


def _num(v) -> float | None:
    """``v`` as a finite float, else None (missing fields, strings, NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _ok(row: dict) -> bool:
    return row.get("status", "ok") == "ok"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if v == int(v):
            return str(int(v))
        return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def add_speedups(rows: list[dict]) -> None:
    """Set ``row["speedup"]`` = images/s over the ``padded_sdpa`` row of the same panel and batch (e2e).

    A row that already carries ``speedup_vs_padded`` (what ``raggedvit bench e2e`` writes) keeps that value.
    """
    base = {}
    for r in rows:
        if _ok(r) and r.get("pipeline") == BASELINE and _num(r.get("images_per_s")):
            base[(_panel(r, PANEL_KEYS["e2e"]), r.get("batch"))] = _num(r["images_per_s"])
    for r in rows:
        b = base.get((_panel(r, PANEL_KEYS["e2e"]), r.get("batch")))
        v = _num(r.get("images_per_s"))
        if _ok(r) and _num(r.get("speedup_vs_padded")) is not None:
            r["speedup"] = _num(r["speedup_vs_padded"])
        elif _ok(r) and b and v is not None:
            r["speedup"] = v / b


def _panel(row: dict, keys: tuple[str, ...]) -> tuple:
    return tuple((k, row[k]) for k in keys if row.get(k) is not None)


def _panel_title(panel: tuple) -> str:
    return ", ".join(f"{k}={v}" if k in ("heads", "head_dim", "keep_rate", "img_size", "batch") else str(v)
                     for k, v in panel) or "all rows"


def _line_order(names) -> list:
    order = {n: i for i, n in enumerate(PIPELINES)}
    return sorted(names, key=lambda n: (order.get(n, len(order)), str(n)))


def _grid(n: int):
    from matplotlib.figure import Figure

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _plot_lines(rows, keys, x, y, line, path, ylabel, title, *, log_x=True, log_y=True, dashed=None, hline=None):
    """One panel per distinct ``keys`` values, one line per ``line`` value; the path, or None if nothing to plot."""
    from matplotlib.ticker import NullLocator

    panels: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if _ok(r) and _num(r.get(x)) is not None and (_num(r.get(y)) is not None
                                                      or (dashed and _num(r.get(dashed)) is not None)):
            panels[_panel(r, keys)].append(r)
    if not panels:
        return None
    keys = sorted(panels, key=lambda p: tuple((0, v, "") if _num(v) is not None else (1, 0, str(v)) for _, v in p))
    keys = keys[:MAX_PANELS]
    names = _line_order({r.get(line, "?") for p in panels.values() for r in p})
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}  # one colour per line name in every panel
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        by_line = defaultdict(list)
        for r in panels[key]:
            by_line[r.get(line, "?")].append(r)
        for name in _line_order(by_line):
            color = colors[name]
            for field, style, suffix in ((y, "-o", ""), (dashed, "--s", " (graph)")):
                pts = sorted((_num(r[x]), _num(r.get(field))) for r in by_line[name]
                             if field and _num(r.get(field)) is not None)
                if pts:
                    ax.plot(*zip(*pts), style, color=color, label=f"{name}{suffix}", markersize=4)
        xs = sorted({_num(r[x]) for r in panels[key]})
        if hline is not None:
            ax.axhline(hline[0], color="grey", linestyle=":", linewidth=1, label=hline[1])
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_locator(NullLocator())
        if len(xs) <= 10:
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(ylabel)
        ax.set_title(_panel_title(key), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    more = f" (first {MAX_PANELS} of {len(panels)} panels)" if len(panels) > MAX_PANELS else ""
    fig.suptitle(title + more)
    fig.savefig(path, dpi=110)
    return path


def _plot_speedup(rows, path, title):
    """e2e: speedup over padded_sdpa vs batch; a panel without the baseline shows images/s instead."""
    with_speedup = [r for r in rows if r.get("speedup") is not None]
    if with_speedup:
        return _plot_lines(with_speedup, PANEL_KEYS["e2e"], "batch", "speedup", "pipeline", path,
                           f"speedup over {BASELINE} (images/s ratio)", title, log_y=False)
    return _plot_lines(rows, PANEL_KEYS["e2e"], "batch", "images_per_s", "pipeline", path,
                       f"images/s (no {BASELINE} rows: no speedup)", title)


def _plot_keep(rows, path, title):
    """e2e: latency vs keep rate per pipeline, one panel per (model, method, batch); None with < 2 keep rates."""
    ok = [r for r in rows if _ok(r) and _num(r.get("keep_rate")) is not None and _num(r.get("latency_us"))]
    if len({r["keep_rate"] for r in ok}) < 2:
        return None
    return _plot_lines(ok, ("model", "img_size", "method", "variant", "dtype", "batch"), "keep_rate", "latency_us",
                       "pipeline", path, "latency us per batch", title, log_x=False)


def _table(rows: list[dict], kind: str) -> list[str]:
    present = [c for c in COLUMNS[kind] if any(r.get(c) is not None for r in rows)]
    extra = sorted({k for r in rows for k in r if k not in COLUMNS[kind] and k not in HIDDEN and not k.startswith("_")
                    and not isinstance(r[k], (list, dict))})
    cols = present + extra
    text = ("point", "backend", "pipeline", "model", "method", "variant", "dtype", "mode", "lengths_dist", "status")
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in text else "---:" for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return lines


def _sort_key(kind: str):
    keys = PANEL_KEYS[kind] + ("batch", "backend" if kind == "attention" else "pipeline")
    order = {n: float(i) for i, n in enumerate(PIPELINES)}

    def key(r):
        """Numbers before text, pipelines in the order of the pipeline table."""
        out = []
        for k in keys:
            v = order.get(r.get(k)) if k == "pipeline" else _num(r.get(k))
            out.append((0, v, "") if v is not None else (1, 0.0, str(r.get(k))))
        return tuple(out)

    return key


def write_report(data: dict, out: Path, stem: str, source: str = "") -> list[Path]:
    """Write the markdown table and the PNG plots for one results object; returns the written paths."""
    kind = data["kind"]
    rows = [dict(r) for r in data["rows"]]
    if kind == "e2e":
        add_speedups(rows)
    rows.sort(key=_sort_key(kind))
    env = data.get("env", {})
    title = f"{kind}: {env.get('gpu') or env.get('device') or ''}".rstrip(": ")
    figures = []
    if kind == "attention":
        floor = data.get("floor") if isinstance(data.get("floor"), dict) else {}
        line = {k: (_num(floor.get(k)), "eager floor (one tiny op)") for k in ("host_us", "device_us")
                if _num(floor.get(k)) is not None}
        figures.append(("host us per call (CUDA-graph replay dashed)", _plot_lines(
            rows, PANEL_KEYS[kind], "batch", "host_us", "backend", out / f"{stem}_host_us.png", "host us per call",
            title + " - host wall time per call", dashed="graph_us", hline=line.get("host_us"))))
        figures.append(("device us per call", _plot_lines(
            rows, PANEL_KEYS[kind], "batch", "device_us", "backend", out / f"{stem}_device_us.png",
            "device us per call", title + " - device time per call", hline=line.get("device_us"))))
    else:
        figures.append((f"speedup over {BASELINE}", _plot_speedup(rows, out / f"{stem}_speedup.png",
                                                                   title + f" - speedup over {BASELINE}")))
        figures.append(("latency vs keep rate", _plot_keep(rows, out / f"{stem}_latency_vs_keep.png",
                                                          title + " - latency vs keep rate")))
    md = _markdown(data, rows, kind, source, figures)
    md_path = out / f"{stem}.md"
    md_path.write_text(md)
    return [p for _, p in figures if p is not None] + [md_path]


def _markdown(data, rows, kind, source, figures) -> str:
    env = data.get("env", {})
    lines = [f"# raggedvit benchmark report: {kind}", ""]
    if source:
        lines += [f"Source: `{source}`", ""]
    lines += ["| environment | |", "|---|---|"]
    for k in [*ENV_ORDER, *sorted(set(env) - set(ENV_ORDER))]:
        if k in env:
            v = f"`{_fmt(env[k])}`" if k == "command" else _fmt(env[k]) if env[k] is not None else "-"
            lines.append(f"| {k} | {v} |")
    missing = [k for k in ("gpu", "torch", "date", "command") if k not in env]
    if missing:
        lines.append(f"| (missing) | {', '.join(missing)} not recorded |")
    floor = data.get("floor")
    if isinstance(floor, dict) and floor:
        lines += ["", "Eager floor (one tiny torch op, back to back): "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in floor.items() if _num(v) is not None)]
    backends = data.get("backends")
    if isinstance(backends, dict) and backends:
        lines += ["", "| backend | description | graph safe | syncs |", "|---|---|---|---|"]
        lines += [f"| {n} | {_fmt(b.get('description'))} | {_fmt(b.get('graph_safe'))} | {_fmt(b.get('syncs'))} |"
                  for n, b in backends.items() if isinstance(b, dict)]
    ok = [r for r in rows if _ok(r)]
    bad = [r for r in rows if not _ok(r)]
    lines += ["", f"## Results ({len(ok)} ok row(s))", ""]
    if kind == "e2e" and ok:
        lines += [f"`speedup` = images/s over `{BASELINE}` at the same batch and settings.", ""]
    lines += _table(ok, kind) if ok else ["No rows with status ok."]
    lines += ["", "## Figures", ""]
    for label, path in figures:
        lines.append(f"![{label}]({path.name})" if path else f"- {label}: nothing to plot (no ok rows with it)")
    if bad:
        lines += ["", f"## Not plotted: {len(bad)} row(s) with status other than ok", ""] + _table(bad, kind)
    return "\n".join(lines) + "\n"
