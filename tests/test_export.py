"""torch.export and AOTInductor packages of pruned models (raggedvit.models.export, ``raggedvit export``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import raggedvit
from raggedvit.cli import main
from raggedvit.models import export as rexport
from raggedvit.pruning import pruning_methods
from test_compile import tiny_model

from conftest import requires_gpu


def test_export_matches_eager_and_records_no_stats():
    pruned = raggedvit.prune(tiny_model(), "evit", variant="adaptive", stages=(1, 2, 3))
    images = rexport.example_images(pruned, 2, seed=5)
    with torch.no_grad():
        expected = pruned(images)
    pruned.last_stats = None
    program = rexport.export_pruned(pruned, images=images)
    assert pruned.last_stats is None  # exporting records no stats (no fake tensors left on the module)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(o.startswith("raggedvit.") for o in ops), ops  # the kernels are opaque custom ops
    # the embeddings are the model's parameters, not constants lifted through the unregistered timm backbone
    # (frozen copies that would not follow the model's weights)
    assert dict(program.constants) == {}, list(program.constants)
    assert {"cls_token", "pos_embed"} <= set(program.state_dict)
    with torch.no_grad():
        got = program.module()(images)
    assert (got - expected).abs().max().item() <= 1e-4


def _options(method, variant):
    if method == "tome":  # merges in every block, no stages
        return {"variant": variant, "r": 2}
    options = {"variant": variant, "stages": (1, 2, 3)}
    if method == "threshold_l2" and variant == "adaptive":
        options["alpha"] = 1.0  # a relative threshold (no calibration needed here)
    if method == "dynamicvit":
        options["random_predictors"] = True
    return options


@pytest.mark.parametrize("method", pruning_methods())
@pytest.mark.parametrize("variant", ["fixed", "adaptive"])
def test_every_method_exports(method, variant):
    """torch.export of every method and variant (packed) gives eager's logits on other images than the
    example's (the program's decisions are data-dependent, not traced constants)."""
    pruned = raggedvit.prune(tiny_model(), method, **_options(method, variant))
    program = rexport.export_pruned(pruned, images=rexport.example_images(pruned, 2, seed=2))
    for seed in (3, 4):
        images = rexport.example_images(pruned, 2, seed=seed) * (1 + seed)
        with torch.no_grad():
            expected = pruned(images)
            got = program.module()(images)
        assert (got - expected).abs().max().item() <= 1e-4, (method, variant, seed)


def test_export_rejects_bad_input():
    with pytest.raises(ValueError, match="only layout='packed'"):
        rexport.export_pruned(raggedvit.prune(tiny_model(), "evit", layout="padded", stages=(1,)), 2)
    with pytest.raises(ValueError, match="batch_size"):
        rexport.export_pruned(raggedvit.prune(tiny_model(), "evit", stages=(1,)), 0)
    with pytest.raises(ValueError, match="PrunedViT"):
        rexport.export_pruned(tiny_model(), 2)
    with pytest.raises(ValueError, match=".pt2"):
        rexport.package_pruned(None, "model.zip")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_aoti_package_runs_in_a_fresh_process(tmp_path):
    """AOTInductor package (C++ on CPU, ~30-50 s) of a 2-block model: loads and runs in a new process that
    imported raggedvit (no Python forward), same logits; without the import the raggedvit ops are missing."""
    pruned = raggedvit.prune(tiny_model(2), "evit", variant="adaptive", stages=(1,))
    images = rexport.example_images(pruned, 2, seed=1)
    with torch.no_grad():
        expected = pruned(images)
    path = rexport.package_pruned(rexport.export_pruned(pruned, images=images), tmp_path / "m.pt2")
    assert rexport.static_libstdcxx(path) == [], "this compiler links libstdc++ statically (docs/export.md)"
    torch.save({"images": images, "expected": expected}, tmp_path / "io.pt")
    code = ("import sys, torch\n"
            "if sys.argv[1] == '1':\n    import raggedvit\n"
            f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
            f"out = torch._inductor.aoti_load_package({path!r})(io['images'])\n"
            "print('DIFF', (out - io['expected']).abs().max().item())\n")
    run = [sys.executable, "-c", code]
    ok = subprocess.run(run + ["1"], capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert float(ok.stdout.split("DIFF")[1]) <= 1e-4
    bad = subprocess.run(run + ["0"], capture_output=True, text=True, timeout=240)
    assert bad.returncode != 0 and "raggedvit::" in bad.stderr


_GRAPH_CHILD = """
import sys, torch
from raggedvit.models.export import GraphedPackage
io = torch.load(sys.argv[1])
graphed = GraphedPackage(sys.argv[2], io["images"][0])
diffs = [(graphed(images) - expected).abs().max().item() for images, expected in zip(io["images"], io["expected"])]
print("DIFFS", max(diffs))
"""


@requires_gpu
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_aoti_package_replays_in_a_cuda_graph(tmp_path):
    """GraphedPackage: a CUDA package of an adaptive model, loaded single-threaded, captured once in a CUDA
    graph; replays on three batches give eager's logits."""
    pruned = raggedvit.prune(tiny_model(2), "evit", variant="adaptive", stages=(1,))
    batches = [rexport.example_images(pruned, 2, seed=s) for s in (1, 2, 3)]
    with torch.no_grad():
        expected = [pruned(b) for b in batches]
    path = rexport.package_pruned(rexport.export_pruned(pruned, images=batches[0]), tmp_path / "m.pt2")
    torch.save({"images": batches, "expected": expected}, tmp_path / "io.pt")
    done = subprocess.run([sys.executable, "-c", _GRAPH_CHILD, str(tmp_path / "io.pt"), path], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split("DIFFS")[1]) <= 1e-4


def test_graphed_package_needs_a_cuda_example(tmp_path):
    with pytest.raises(ValueError, match="CUDA tensor"):
        rexport.GraphedPackage(tmp_path / "m.pt2", torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="CUDA tensor"):
        rexport.GraphedPackage(tmp_path / "m.pt2", None)


def _zip(path, members: dict) -> str:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def test_static_libstdcxx_lists_the_so_without_the_shared_library(tmp_path):
    path = _zip(tmp_path / "p.pt2", {"m/data/aotinductor/model/a.so": b"\x7fELF..libstdc++.so.6\x00..",
                                     "m/data/aotinductor/model/b.so": b"\x7fELF..libc.so.6\x00std::locale",
                                     "m/data/weights/w": b"no libstdc++ here, not a .so"})
    assert rexport.static_libstdcxx(path) == ["m/data/aotinductor/model/b.so"]
    assert rexport.static_libstdcxx(_zip(tmp_path / "q.pt2", {"x.so": b"libstdc++.so.6"})) == []
    (tmp_path / "not.pt2").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="not an AOTInductor package"):
        rexport.static_libstdcxx(tmp_path / "not.pt2")


def test_load_package_warns_before_loading_a_static_libstdcxx_package(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package",
                        lambda path, run_single_threaded: loaded.append((path, run_single_threaded)) or "runner")
    static = _zip(tmp_path / "s.pt2", {"a.so": b"\x7fELF static"})
    with pytest.warns(RuntimeWarning, match="static libstdc\\+\\+.*cxx_shared_libstdcxx.sh"):
        assert rexport.load_package(static) == "runner"
    shared = _zip(tmp_path / "d.pt2", {"a.so": b"\x7fELF libstdc++.so.6"})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rexport.load_package(shared, run_single_threaded=True) == "runner"
    assert loaded == [(static, False), (shared, True)]


def test_export_command(tmp_path, monkeypatch, capsys):
    """The command's wiring, with torch.export.save/load standing in for the (slow) AOTInductor compile."""
    monkeypatch.setattr(rexport, "package_pruned", lambda ep, path: (torch.export.save(ep, str(path)), str(path))[1])
    monkeypatch.setattr(rexport, "load_package", lambda path, **kw: torch.export.load(path).module())
    out = tmp_path / "m.pt2"
    rc = main(["export", "--model", "deit_tiny_patch16_224", "--weights", "random", "--method", "dynamicvit",
               "--batch-size", "2", "--out", str(out), "--check"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and "import raggedvit" in text and "check     :" in text and "OK" in text


@pytest.mark.parametrize("argv,msg", [
    (["--out", "m.zip"], "must end in .pt2"),
    (["--out", "m.pt2", "--batch-size", "0"], "--batch-size 0"),
    (["--out", "m.pt2", "--method", "nope"], "unknown pruning method"),
    (["--out", "/no/such/folder/m.pt2"], "does not exist"),
])
def test_export_command_errors(argv, msg, capsys):
    assert main(["export", "--weights", "random", *argv]) == 2
    assert msg in capsys.readouterr().err
