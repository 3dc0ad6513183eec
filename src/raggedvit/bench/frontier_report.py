"""Results of ``raggedvit bench frontier``: the markdown table, the plot, the files, and the merge of runs taken
at different batch sizes (``--merge``)."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from ..runtime.errors import UsageError
from . import timing
from .pipelines import REFERENCE

UNPRUNED = "raggedvit, no pruning"  # the setting name of raggedvit_graph on method none (timed with the references)


def write(result: dict, out: str, stamp: str | None = None) -> int:
    """``frontier-<gpu>-<stamp>.json``, ``.md`` and ``.png`` under ``out``; prints the table."""
    stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = timing.write_json(result, out, "frontier", stamp=stamp)
    table = markdown_table(result)
    md = path.with_suffix(".md")
    md.write_text(f"# raggedvit bench frontier\n\n{describe(result)}\n\n{table}\n")
    plot = plot_frontier(result, path.with_suffix(".png"))
    print(table)
    print(f"wrote {path}, {md}" + (f", {plot}" if plot else ""))
    return 0


# what must agree between runs that are merged: the same model, photos, dtype and settings decided the same way
_SAME_CONFIG = ("model", "checkpoint", "images", "calibration", "dtype", "live_rows")
_SAME_SETTING = ("setting", "status", "top1", "kept_stages")
_SPEEDS = ("speed", "speed_unpruned")


def merge_results(results: list[dict]) -> dict:
    """One frontier result from runs at disjoint batch sizes (e.g. one device call per batch size, or a run a
    time limit cut short): settings matched by name, speeds side by side, every ratio the one measured in its own
    run against its own references; a setting missing from a run has no cells at its batch sizes. Raises
    :class:`UsageError` when the runs differ in anything but batch sizes and settings (model, photos, dtype,
    GPU), or a setting's top-1 or kept counts differ between runs."""
    first = results[0]
    batches: list[int] = []
    merged: dict[str, dict] = {}
    for r in results:
        if r.get("kind") != "frontier":
            raise UsageError(f"--merge: not a frontier result (kind {r.get('kind')!r})")
        diff = [k for k in _SAME_CONFIG if r["config"].get(k) != first["config"].get(k)]
        diff += ["gpu"] if r["env"].get("gpu") != first["env"].get("gpu") else []
        diff += [f"setting {s['setting']!r}" for s in r["settings"] if s["setting"] in merged
                 and [s.get(k) for k in _SAME_SETTING] != [merged[s["setting"]].get(k) for k in _SAME_SETTING]]
        twice = sorted(set(batches) & set(r["config"]["batches"]))
        diff += [f"batch {twice} (in more than one run)"] if twice else []
        if diff:
            raise UsageError(f"--merge: the runs differ in {', '.join(diff)}; only batch sizes may differ")
        batches += r["config"]["batches"]
        for s in r["settings"]:
            m = merged.setdefault(s["setting"], {k: v for k, v in s.items() if k not in _SPEEDS})
            for key in _SPEEDS:
                if key in s:
                    m.setdefault(key, {}).update({int(b): v for b, v in s[key].items()})
    env = dict(first["env"], command=" ; ".join(r["env"]["command"] for r in results),
               date=" ; ".join(r["env"]["date"] for r in results))
    complete = all(r["config"].get("complete", True) for r in results)
    config = dict(first["config"], batches=sorted(batches), complete=complete,
                  padded_compiled=sorted(b for r in results for b in r["config"].get("padded_compiled") or []))
    return {"kind": "frontier", "env": env, "config": config, "settings": list(merged.values()),
            "rows": [row for r in results for row in r["rows"]]}


def merge_files(paths: list[str], out: str) -> int:
    """``--merge``: read frontier JSONs, write their :func:`merge_results` under ``out``."""
    results = []
    for f in paths:
        try:
            results.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise UsageError(f"--merge: cannot read {f}: {e}") from None
    return write(merge_results(results), out)


def describe(result: dict) -> str:
    """The run in one paragraph: GPU, versions, model, photos, what the ratios are against, the command."""
    env, cfg = result["env"], result["config"]
    pc = cfg.get("padded_compiled") or []
    return (f"{env.get('gpu') or 'CPU'}, torch {env['torch']}, triton {env['triton']}, timm {env['timm']}, "
            f"{env['date']}. Model {cfg['model']} ({cfg['checkpoint']}), {cfg['images']} (one per class: a top-1 "
            f"figure has a standard error of about 1.8-1.9 points), {cfg['dtype']}; {cfg['calibration']}. "
            f"Speed: raggedvit's packed graph; `x compiled` = images/s over `{REFERENCE}` (torch.compile, "
            "reduce-overhead, static shapes, the faster memory format) at the same batch; "
            "`x padded` = over the padded baseline in its best "
            "mode (the faster of batch-maximum padding and static-capacity padding in a CUDA graph"
            + (f"; at batch {', '.join(map(str, pc))} also static-capacity padding under torch.compile" if pc else
               "; not compiled") + f"). Command: `{env['command']}`."
            + ("" if cfg.get("complete", True) else " **Incomplete: the run stopped before its last setting.**"))


def _fmt_speed(s: dict | None) -> str:
    if not s or s.get("status") != "ok":
        return "-" if not s else s.get("status", "-")[:30]
    out = f"{s['images_per_s']:,.0f}"
    if s.get("speedup_vs_dense_compiled") is not None:
        out += f" ({s['speedup_vs_dense_compiled']:.2f}x"
        if s.get("speedup_vs_padded_best") is not None:
            out += f" / {s['speedup_vs_padded_best']:.2f}x"
        out += ")"
    return out


def markdown_table(result: dict) -> str:
    """Settings table (top-1, kept tokens, images/s per batch) and, when present, the random-weight rows."""
    batches = result["config"]["batches"]
    head = ["setting", "top-1 %", "vs dense", "kept tokens / stage (mean)"] + [
        f"b{b} img/s (x compiled / x padded)" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in result["settings"]:
        if res.get("status") != "ok":
            lines.append(f"| {res['setting']} | {res['status'][:80]} |" + " |" * (len(head) - 2))
            continue
        kept = " / ".join(f"{s['mean']:.0f}" for s in res["kept_stages"]) or "-"
        delta = "-" if res["method"] == "none" else f"{res.get('top1_delta', 0):+.1f}"
        sp = [_fmt_speed(res.get("speed", {}).get(b)) for b in batches]
        lines.append(f"| {res['setting']} | {res['top1']:.1f} | {delta} | {kept} | " + " | ".join(sp) + " |")
        if res.get("speed_unpruned"):
            sp = [_fmt_speed(res["speed_unpruned"].get(b)) for b in batches]
            lines.append(f"| {UNPRUNED} | (dense) | - | - | " + " | ".join(sp) + " |")
    rnd = [r for r in result["rows"] if r.get("weights") == "random" and r["pipeline"] == "raggedvit_graph"]
    if rnd:
        note = "Speed only, RANDOM weights (fixed-count settings; kept counts do not depend on the weights):"
        lines += ["", note, "",
                  "| model | setting | batch | img/s | x compiled | x padded best |", "|---|---|---:|---:|---:|---:|"]
        for r in rnd:
            f = (lambda k, r=r: f"{r[k]:.2f}x" if isinstance(r.get(k), float) else "-")
            ips = f"{r['images_per_s']:,.0f}" if r.get("status") == "ok" else r.get("status", "")[:40]
            lines.append(f"| {r['model']} | {r['setting']} | {r['batch']} | {ips} | {f('speedup_vs_dense_compiled')} | "
                         f"{f('speedup_vs_padded_best')} |")
    return "\n".join(lines)


def plot_frontier(result: dict, path: Path) -> Path | None:
    """Top-1 against images/s, one panel per batch size, one line per method and variant; None without
    matplotlib or speed rows."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    batches = result["config"]["batches"]
    ok = [r for r in result["settings"] if r.get("status") == "ok" and r.get("speed")]
    if not ok:
        return None
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 4.0), squeeze=False)
    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault("dense (torch.compile)" if r["method"] == "none" else f"{r['method']} {r['variant']}",
                          []).append(r)
    # one colour per method and variant in every panel, and one legend for all panels (merged runs may have a
    # setting at some batch sizes only)
    colors = {name: f"C{i % 10}" for i, name in enumerate(n for n in groups if not n.startswith("dense"))}
    legend: dict[str, object] = {}

    def at(speed: dict, b: int) -> dict:  # batch keys are ints in memory, strings once read back from JSON
        return speed.get(b) or speed.get(str(b)) or {}

    for ax, b in zip(axes[0], batches):
        for name, rs in groups.items():
            pts = sorted((at(r["speed"], b)["images_per_s"], r["top1"]) for r in rs
                         if at(r["speed"], b).get("status") == "ok")
            if not pts:
                continue
            xs, ys = zip(*pts)
            if name.startswith("dense"):
                legend.setdefault(name, ax.plot(xs, ys, "k*", markersize=12)[0])
                un = [(at(r.get("speed_unpruned", {}), b), r["top1"]) for r in rs]
                un = [(s["images_per_s"], t) for s, t in un if s.get("status") == "ok"]
                if un:
                    legend.setdefault(UNPRUNED, ax.plot(*zip(*un), "k*", markersize=12, markerfacecolor="none")[0])
            else:
                legend.setdefault(name, ax.plot(xs, ys, "o-", color=colors[name], markersize=4)[0])
        ax.set_title(f"batch {b}")
        ax.set_xlabel("images/s")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 %")
    axes[0][-1].legend(list(legend.values()), list(legend), fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.02, 1.0))  # outside: no point hidden
    env = result["env"]
    fig.suptitle(f"{result['config']['model']} (trained), {result['config']['dtype']}, {env.get('gpu') or 'CPU'}: "
                 "top-1 against images/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["UNPRUNED", "describe", "markdown_table", "merge_results", "merge_files", "plot_frontier", "write"]
