"""``raggedvit report``: benchmark JSON (attention and e2e) -> PNG plots + a markdown table with the env."""

from __future__ import annotations

import json

import pytest

from raggedvit.bench.report import add_speedups
from raggedvit.cli import main

ENV = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.65", "torch": "2.11.0+cu130", "triton": "3.6.0",
       "timm": "1.0.29", "date": "2026-05-01T10:00:00", "command": "raggedvit bench attention --batch 1 8"}
PNG = b"\x89PNG\r\n\x1a\n"


def _attention_rows():
    rows = []
    for backend, host in (("triton", 6.0), ("fa2_varlen", 19.0), ("padded_sdpa", 25.0)):
        for batch in (1, 8, 64):
            rows.append({"backend": backend, "dtype": "float16", "batch": batch, "heads": 3, "head_dim": 64,
                         "keep_rate": 0.7, "mean_len": 140.2, "min_len": 40, "max_len": 197,
                         "host_us": host + batch / 10, "device_us": host / 2 + batch,
                         "graph_us": 5.1 if backend == "triton" else None, "host_ratio_to_floor": host / 8.7,
                         "status": "ok"})
    rows.append({"backend": "varlen_attn", "dtype": "float16", "batch": 8, "status": "unavailable: torch < 2.10"})
    rows.append({"backend": "nested_sdpa", "batch": 8, "host_us": 2100.0})  # no status, few fields: still ok
    return rows


def _e2e_rows():
    rows = []
    for method in ("evit", "ats"):
        for batch in (1, 64):
            for pipeline, speed in (("padded_sdpa", 1.0), ("packed_fa2", 1.2), ("raggedvit_graph", 1.9)):
                for keep in (0.5, 0.7):
                    ips = 1000.0 * batch ** 0.5 * speed * (1.5 - keep)
                    rows.append({"model": "deit_small_patch16_224", "img_size": 224, "method": method,
                                 "variant": "fixed", "keep_rate": keep, "batch": batch, "pipeline": pipeline,
                                 "images_per_s": ips, "latency_us": batch * 1e6 / ips, "gflops": 3.1,
                                 "kept_mean": 69.0, "kept_min": 69, "kept_max": 69, "max_logit_diff": 0.002,
                                 "status": "ok"})
    rows.append({"model": "deit_base_patch16_224", "method": "ats", "batch": 8, "pipeline": "packed_nested",
                 "status": "error: out of memory"})
    return rows


@pytest.mark.parametrize("kind, rows, pngs", [
    ("attention", _attention_rows(), ["bench_host_us.png", "bench_device_us.png"]),
    ("e2e", _e2e_rows(), ["bench_speedup.png", "bench_latency_vs_keep.png"]),
])
def test_report_writes_pngs_and_markdown(tmp_path, capsys, kind, rows, pngs):
    src = tmp_path / "bench.json"
    src.write_text(json.dumps({"kind": kind, "env": ENV, "rows": rows}))
    out = tmp_path / "out"
    assert main(["report", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG, name
        assert f"wrote {out / name}" in printed
    md = (out / "bench.md").read_text()
    for value in ENV.values():
        assert value in md
    assert "## Not plotted: 1 row(s)" in md
    assert ("unavailable: torch < 2.10" if kind == "attention" else "error: out of memory") in md
    for name in pngs:
        assert f"({name})" in md
    if kind == "e2e":
        assert "| speedup |" in md.replace("speedup | latency_us", "speedup |")


def test_speedup_over_padded_sdpa_same_batch_and_settings():
    rows = [{"model": "m", "method": "evit", "batch": 8, "pipeline": "padded_sdpa", "images_per_s": 100.0},
            {"model": "m", "method": "evit", "batch": 8, "pipeline": "raggedvit_graph", "images_per_s": 250.0},
            {"model": "m", "method": "ats", "batch": 8, "pipeline": "raggedvit_graph", "images_per_s": 300.0},
            {"model": "m", "method": "evit", "batch": 8, "pipeline": "oracle", "images_per_s": 400.0,
             "status": "error"}]
    add_speedups(rows)
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] == 2.5
    assert "speedup" not in rows[2]  # no baseline for ats
    assert "speedup" not in rows[3]  # not ok


def test_report_e2e_without_baseline_and_missing_env(tmp_path, capsys):
    src = tmp_path / "nobase.json"
    src.write_text(json.dumps({"kind": "e2e", "rows": [
        {"model": "m", "method": "evit", "batch": b, "pipeline": "raggedvit_graph", "images_per_s": 10.0 * b}
        for b in (1, 4)]}))
    assert main(["report", str(src)]) == 0
    md = (tmp_path / "nobase.md").read_text()
    assert "not recorded" in md  # the env is missing and the report says so
    assert (tmp_path / "nobase_speedup.png").read_bytes()[:8] == PNG  # images/s instead of a speedup


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ('{"kind": "latency", "rows": []}', "valid: attention, e2e"),
    ('{"kind": "e2e", "rows": {}}', "'rows' must be a list"),
    ("[1, 2]", "expected a JSON object"),
])
def test_report_bad_input(tmp_path, capsys, content, needle):
    src = tmp_path / "r.json"
    if content is not None:
        src.write_text(content)
    assert main(["report", str(src)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "raggedvit report: error:" in err
