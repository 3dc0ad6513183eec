"""Tests for raggedvit bench e2e: FLOP counting, calibration, lengths mode, oracle, and the CLI on CPU."""

from __future__ import annotations

import argparse
import json

import pytest
import timm
import torch

import raggedvit
from raggedvit.bench import calibrate as cal
from raggedvit.bench import e2e
from raggedvit.bench.flops import ViTDims, mean_gflops, tokens_per_block, vit_dims, vit_flops
from raggedvit.bench.oracle import OracleViT, oracle_widths
from raggedvit.bench.pipelines import BASELINE, CPU_QUICK, PADDED_BEST, PIPELINES, Pipeline
from raggedvit.pruning.dynamicvit import make_predictors
from raggedvit.runtime.errors import UsageError


def _tiny(size=96, depth=4):
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=size, depth=depth).eval()


def test_flops_hand_count():
    d = ViTDims(embed_dim=4, depth=2, mlp_hidden=8, patch_dim=5, num_patches=3, num_prefix=1, num_classes=2)
    # PRE stage before block 1 keeping 2 tokens (CLS + 1) for image 0 and 3 for image 1.
    attn, mlp = tokens_per_block(2, [4, 4], [(1, False, [2, 3])])
    assert attn == [[4, 4], [2, 3]] and mlp == attn
    f = vit_flops(d, attn, mlp)

    def block(n):  # qkv 2*n*C*3C + proj 2*n*C*C + attention 4*n^2*C + MLP 2*n*C*H*2
        return 2 * n * 4 * 12 + 2 * n * 4 * 4 + 4 * n * n * 4 + 2 * n * 4 * 8 * 2
    base = 2 * 3 * 5 * 4 + 2 * 4 * 2
    assert f == [base + block(4) + block(2), base + block(4) + block(3)]
    # MID stage: attention on the old count, MLP on the new one
    attn, mlp = tokens_per_block(2, [4], [(0, True, [2])])
    assert attn == [[4], [2]] and mlp == [[2], [2]]


def test_flops_deit_small_published():
    model = timm.create_model("deit_small_patch16_224", pretrained=False)
    g = mean_gflops(vit_dims(model), [], 1)
    assert 9.1 < g < 9.3  # 4.6 GMACs
    evit = mean_gflops(vit_dims(model), [(3, True, [139, 139]), (6, True, [98, 98]), (9, True, [69, 69])], 2)
    assert 5.5 < evit < 6.5


@pytest.mark.parametrize("method,variant,target", [("threshold_l2", "adaptive", 0.6), ("evit", "adaptive", 0.7),
                                                    ("ats", "adaptive", 0.7), ("evit", "fixed", 0.7)])
def test_calibration_hits_target(method, variant, target):
    model = _tiny()
    images = torch.randn(4, 3, 96, 96)
    opts = {"stages": (1, 2, 3)}
    with torch.no_grad():
        options, info = cal.calibrate(model, method, variant, images, keep_rate=target, options=opts, steps=6)
    assert info["target_keep_rate"] == target
    assert abs(info["achieved_keep_rate"] - target) < 0.08, info
    got = cal.measure_keep(model, method, options, images)
    assert got["keep_rate"] == pytest.approx(info["achieved_keep_rate"])
    assert len(got["kept"]) == 3 and len(got["kept"][0]) == 4


def test_lengths_mode_keeps_drawn_counts():
    model = _tiny()
    counts = cal.draw_lengths("uniform:0.3:1.0", 3, model.patch_embed.num_patches, 3, seed=1)
    assert counts.shape == (3, 3) and (counts >= 1).all() and (counts[1:] <= counts[:-1]).all()
    preds = cal.lengths_predictors(model.embed_dim, 3)
    cal.set_lengths(preds, counts)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        for layout in ("packed", "padded"):
            p = raggedvit.prune(model, "dynamicvit", variant="adaptive", stages=(1, 2, 3), predictors=preds,
                                layout=layout, attention="reference").eval()
            p(x)
            for k, c in zip(p.last_stats.kept, counts):
                assert k.tolist() == (c + 1).tolist()


@pytest.mark.parametrize("spec", ["uniform:0.5", "gauss:1:2", "uniform:0.9:0.1", "const:2"])
def test_parse_dist_errors(spec):
    with pytest.raises(ValueError, match="lengths distribution"):
        cal.parse_dist(spec)


def test_oracle_at_full_width_is_timm_and_cuts():
    model = _tiny()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        full = OracleViT(model, (1, 2), True, (37, 37))(x)
        torch.testing.assert_close(full, model(x), atol=1e-5, rtol=0)
        cut = OracleViT(model, (1, 2), False, (20, 10))(x)
    assert cut.shape == full.shape and not torch.allclose(cut, full)
    assert oracle_widths([[10, 12], [3, 3]], 1) == (11, 3)


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path), "--device", "cpu", *extra])


def test_cli_cpu_writes_valid_json(tmp_path, capsys):
    args = _args(tmp_path, "--models", "deit_tiny", "--img-sizes", "64", "--batches", "2", "--methods", "evit",
                 "--variants", "adaptive", "--pipelines", "dense,padded_sdpa,raggedvit_eager,raggedvit_graph,oracle",
                 "--budget", "0.01", "--calib-images", "2", "--lengths-dist", "uniform:0.3:0.9", "--live-rows", "off")
    assert e2e.main(args) == 0
    files = sorted(tmp_path.glob("e2e-cpu-*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").exists()
    data = json.loads(files[0].read_text())
    assert data["kind"] == "e2e"
    env_keys = {"gpu", "driver", "cuda", "torch", "triton", "timm", "python", "date", "command", "device"}
    assert env_keys <= set(data["env"])
    required = {"model", "img_size", "method", "variant", "batch", "pipeline", "images_per_s", "latency_us", "gflops",
                "kept_mean", "kept_min", "kept_max", "max_logit_diff", "status"}
    rows = data["rows"]
    assert {r["method"] for r in rows} == {"evit", "lengths"}
    for r in rows:
        assert r["pipeline"] in PIPELINES and r["live_rows"] == "off"
        if r["pipeline"] in ("raggedvit_graph", "oracle"):
            assert r["status"].startswith("unavailable: CUDA graphs need a CUDA device")
            continue
        assert r["status"] == "ok", r
        assert required - {"max_logit_diff"} <= set(r)
        assert r["images_per_s"] > 0 and r["gflops"] > 0 and r["kept_min"] <= r["kept_mean"] <= r["kept_max"]
        if r["pipeline"] == "raggedvit_eager":
            assert r["attention"] == "reference" and r["max_logit_diff"] < 1e-3 and r["top1_agree"] == 1.0
            assert len(r["kept_stages"]) == 3
        if r["method"] != "lengths":
            assert r["calibration"]["param"] == "mass"
    assert "raggedvit_graph" in capsys.readouterr().out


def test_quick_grid_shapes():
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    g = e2e._grid(parser.parse_args(["--quick"]), torch.device("cuda"))
    assert g["models"] == ["deit_small"] and g["batches"] == [1, 8, 64, 256] and g["extra"][1] == 384
    assert set(g["pipelines"]) == set(PIPELINES)
    g = e2e._grid(parser.parse_args(["--quick"]), torch.device("cpu"))
    assert g["models"] == ["deit_tiny"]
    assert set(g["pipelines"]) == set(CPU_QUICK) == {"dense", "padded_sdpa", "raggedvit_eager"}
    with pytest.raises(SystemExit):
        e2e._grid(parser.parse_args(["--pipelines", "bogus"]), torch.device("cpu"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--live-rows", "maybe"])


def test_checkpoint_loaded_strictly(tmp_path, capsys):
    """``--checkpoint`` goes through the strict loader: a matching file loads (at --img-sizes), a file with
    missing or unexpected keys stops the run naming them (it used to be loaded with strict=False)."""
    state = timm.create_model("deit_tiny_patch16_224", img_size=64).state_dict()
    good = tmp_path / "good.pth"
    torch.save({"model": state}, good)
    loaded = e2e._load_model("deit_tiny", 64, torch.device("cpu"), torch.float32, _args(tmp_path, "--checkpoint",
                                                                                         str(good)))
    assert loaded.predictor_state is None and loaded.model.patch_embed.img_size == (64, 64)
    assert torch.equal(loaded.model.state_dict()["pos_embed"], state["pos_embed"])
    bad = tmp_path / "bad.pth"
    torch.save({k: v for k, v in state.items() if k != "head.bias"} | {"extra.weight": torch.zeros(1)}, bad)
    args = _args(tmp_path, "--models", "deit_tiny", "--img-sizes", "64", "--batches", "2", "--methods", "evit",
                 "--variants", "fixed", "--checkpoint", str(bad))
    assert e2e.main(args) == 2
    err = capsys.readouterr().err
    assert "raggedvit bench e2e: error:" in err and "missing key(s): head.bias" in err, err
    assert "unexpected key(s): extra.weight" in err and not list(tmp_path.glob("e2e-*.json"))


def test_dynamicvit_predictors_from_checkpoint_state():
    model = _tiny(depth=12)  # DynamicViT's default stages: blocks 3, 6, 9
    preds = make_predictors(model.embed_dim, 3)
    got = cal.dynamicvit_predictors(model, preds.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), preds.state_dict().values()))
    state = {k: v for k, v in preds.state_dict().items() if not k.startswith("2.")}
    with pytest.raises(UsageError, match=r"(?s)DynamicViT predictors do not fit.*Missing key\(s\).*2\.in_conv"):
        cal.dynamicvit_predictors(model, state)


def test_pipeline_table():
    """The table says what e2e's former name tuples and prefix branches said (names and order, backends, graphs)."""
    assert list(PIPELINES) == ["dense", "dense_graph", "dense_compiled", "padded_sdpa", "padded_static",
                               "padded_compiled", "packed_fa2", "packed_fa2_graph",
                               "packed_varlen_attn", "packed_nested", "raggedvit_eager", "raggedvit_graph",
                               "raggedvit_compiled", "oracle", "oracle_capacity"]
    assert {n: p.backend for n, p in PIPELINES.items() if p.backend} == {
        "packed_fa2": "fa2_varlen", "packed_fa2_graph": "fa2_varlen", "packed_varlen_attn": "varlen_attn",
        "packed_nested": "nested_sdpa", "raggedvit_eager": "triton", "raggedvit_graph": "triton",
        "raggedvit_compiled": "triton"}
    assert {n for n, p in PIPELINES.items() if p.needs_cuda} == {
        "dense_graph", "dense_compiled", "padded_static", "padded_compiled", "packed_fa2_graph", "raggedvit_graph",
        "raggedvit_compiled",
        "oracle", "oracle_capacity"}
    assert [n for n, p in PIPELINES.items() if p.padding == "static"] == ["padded_static", "padded_compiled"]
    assert set(PADDED_BEST) == {n for n, p in PIPELINES.items() if p.layout == "padded"}
    assert [n for n, p in PIPELINES.items() if p.backend_run(on_gpu=False) != p.backend] == ["raggedvit_eager"]
    assert PIPELINES["raggedvit_eager"].backend_run(on_gpu=False) == "reference"
    assert {p.layout for p in PIPELINES.values()} == {"dense", "padded", "packed", "oracle"}
    assert PIPELINES[BASELINE].layout == "padded" and PIPELINES[BASELINE].mode == "best"
    assert [n for n, p in PIPELINES.items() if p.capacity] == ["oracle_capacity"]
    with pytest.raises(ValueError, match="layout 'diagonal'"):
        Pipeline("x", "diagonal", None, "eager", "")


def test_padded_best_is_the_faster_padded_mode():
    """Each point's speed-ups against the padded baseline use its faster mode, named in the row."""
    def row(p, ips, point=0, mode="graph"):
        return dict(pipeline=p, images_per_s=ips, latency_us=1e6 / ips, status="ok", mode=mode, variant="adaptive",
                    _point=point)
    rows = [row("padded_sdpa", 100.0, mode="eager"), row("padded_static", 250.0), row("raggedvit_graph", 500.0),
            row("dense_compiled", 400.0, mode="compiled"),
            row("padded_sdpa", 300.0, 1, "eager"), row("padded_static", 200.0, 1), row("raggedvit_graph", 600.0, 1),
            row("padded_static", 200.0, 2), row("padded_compiled", 400.0, 2, "compiled"),
            row("raggedvit_graph", 600.0, 2)]
    e2e.finish_rows(rows)
    assert rows[2]["padded_best"] == "padded_static (graph)" and rows[2]["speedup_vs_padded_best"] == 2.0
    assert rows[2]["speedup_vs_dense_compiled"] == 1.25 and rows[2]["speedup_vs_padded"] == 5.0
    assert rows[6]["padded_best"] == "padded_sdpa (eager)" and rows[6]["speedup_vs_padded_best"] == 2.0
    assert "speedup_vs_dense_compiled" not in rows[6]  # no reference at that point
    assert rows[9]["padded_best"] == "padded_compiled (compiled)" and rows[9]["speedup_vs_padded_best"] == 1.5
    assert "padded_best" not in rows[0] and "padded_best" not in rows[1]


def test_sample_data_mode_runs_the_trained_model(tmp_path, sample_data_root):
    """--sample-data: the trained ViT-Tiny on real photos, the method's own kept counts (no calibration to a
    target count), every row labelled trained."""
    args = _args(tmp_path, "--sample-data", "--batches", "1", "--methods", "evit,threshold_l2", "--variants",
                 "adaptive", "--pipelines", "padded_sdpa,raggedvit_eager", "--budget", "0.01", "--live-rows", "off")
    assert e2e.main(args) == 0
    rows = json.loads(next(tmp_path.glob("e2e-cpu-*.json")).read_text())["rows"]
    assert {r["model"] for r in rows} == {"vit_tiny_trained"} and {r["weights"] for r in rows} == {"trained"}
    for r in rows:
        assert r["status"] == "ok", r
        if r["pipeline"] == "raggedvit_eager":
            assert r["max_logit_diff"] < 1e-3 and r["top1_agree"] == 1.0
    thr = [r for r in rows if r["method"] == "threshold_l2"]
    assert thr[0]["calibration"]["param"] == "thresholds"  # Threshold-L2's own calibration, on other photos
    assert "calibration" not in [r for r in rows if r["method"] == "evit"][0]
    with pytest.raises(SystemExit, match="fixes the model"):
        e2e.main(_args(tmp_path, "--sample-data", "--models", "deit_small"))



def test_graph_calls_are_timed_with_the_input_copy():
    """A timed graph call copies the images into the graph's static input before the replay, as
    torch.compile(mode="reduce-overhead") does on every call (graph and compiled pipelines timed alike)."""
    import torch

    from raggedvit.bench.e2e_point import _with_input_copy

    static = torch.randn(2, 3)
    want = static.clone()
    seen = []
    call = _with_input_copy(lambda: seen.append(static.clone()), static)
    static.fill_(float("nan"))  # what a previous call's images might have left there
    call()
    assert len(seen) == 1 and torch.equal(seen[0], want)
