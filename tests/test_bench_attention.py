"""``raggedvit bench attention``: the quick run writes the documented JSON; bad arguments fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from raggedvit.bench import timing
from raggedvit.cli import main
from raggedvit.runtime.device import environment

from conftest import ON_GPU

pytestmark = pytest.mark.filterwarnings("ignore:.*nested tensors is in prototype stage")

ENV_KEYS = {"gpu", "driver", "cuda", "torch", "triton", "timm", "python", "date", "command", "device"}
ROW_KEYS = {"backend", "dtype", "batch", "heads", "head_dim", "keep_rate", "mean_len", "min_len", "max_len", "host_us",
            "device_us", "graph_us", "host_ratio_to_floor", "status"}


def test_quick_run_writes_json(tmp_path, capsys):
    assert main(["bench", "attention", "--quick", "--out", str(tmp_path)]) == 0
    files = list(tmp_path.glob("attention-*.json"))
    assert len(files) == 1, files
    assert files[0].name.startswith("attention-cpu-" if not ON_GPU else "attention-")
    data = json.loads(files[0].read_text())
    assert data["kind"] == "attention"
    assert ENV_KEYS <= set(data["env"])
    assert data["env"]["torch"] == torch.__version__
    assert data["floor"]["host_us"] > 0
    rows = data["rows"]
    assert rows and all(ROW_KEYS <= set(r) for r in rows)
    by_backend = {r["backend"] for r in rows}
    assert {"triton", "reference", "padded_sdpa", "nested_sdpa", "fa2_varlen", "fa2_varlen_item",
            "varlen_attn"} <= by_backend
    for r in rows:
        assert r["status"] == "ok" or r["status"].startswith("unavailable: "), r
        assert r["min_len"] <= r["mean_len"] <= r["max_len"] <= 197
        if r["status"] == "ok":
            assert r["host_us"] > 0 and r["host_ratio_to_floor"] > 0
            assert (r["device_us"] is not None) == ON_GPU
        else:
            assert r["host_us"] is None and len(r["status"]) > len("unavailable: ")
    ok = {r["backend"] for r in rows if r["status"] == "ok"}
    assert {"reference", "padded_sdpa"} <= ok
    if not ON_GPU:
        assert "fa2_varlen" not in ok
        assert any(r["point"] == "headline" for r in rows)
    out = capsys.readouterr()
    assert "| backend | host us | device us | graph us |" in out.out
    assert "fa2_varlen / triton" in out.out
    assert "unavailable: fa2_varlen" in out.err or ON_GPU
    pytest.importorskip("matplotlib")
    assert files[0].with_suffix(".png").exists()


def test_subset_of_backends_and_no_plot(tmp_path):
    args = ["bench", "attention", "--quick", "--backends", "reference,padded_sdpa", "--batches", "2",
            "--keep-rates", "0.5", "--dtypes", "fp32", "--device", "cpu", "--repeat", "1", "--no-plot",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (path,) = tmp_path.glob("attention-cpu-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert {r["backend"] for r in rows} == {"reference", "padded_sdpa"}
    assert {(r["batch"], r["keep_rate"], r["dtype"]) for r in rows if r["point"] == "grid"} == {(2, 0.5, "float32")}
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("bad, message", [
    (["--backends", "nope"], "unknown backend 'nope'"),
    (["--dtypes", "float8"], "unknown dtype"),
    (["--batches", "0"], "positive integer"),
    (["--batches", "two"], "positive integer"),
    (["--keep-rates", "1.5"], "keep rate"),
    (["--repeat", "-1"], "positive integer"),
])
def test_bad_arguments_fail_clearly(bad, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "attention", "--out", str(tmp_path), *bad])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(ON_GPU, reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "attention", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_lengths_are_seeded_ragged_and_bounded():
    a = timing.ragged_lengths(64, 0.3, seed=1)
    assert a == timing.ragged_lengths(64, 0.3, seed=1)
    assert a != timing.ragged_lengths(64, 0.3, seed=2)
    assert all(1 <= n <= 197 for n in a) and len(set(a)) > 5
    assert abs(sum(a) / len(a) - (1 + 0.3 * 196)) < 10
    assert timing.ragged_lengths(4, 1.0, seed=0) == [197] * 4
    h = timing.uniform_lengths(8, 40, 197, seed=0)
    assert len(h) == 8 and all(40 <= n <= 197 for n in h)


def test_write_json_names_the_file(tmp_path):
    env = environment("cpu", command="x")
    path = timing.write_json({"kind": "t", "env": env}, tmp_path / "sub", "t", stamp="20260101-000000")
    assert path.name == "t-cpu-20260101-000000.json"
    assert json.loads(path.read_text())["env"]["command"] == "x"
    assert timing.device_slug({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"


def test_graph_check_catches_a_stale_replay():
    """The in-benchmark CUDA-graph check, driven by stand-in graphs on CPU: live passes, stale fails."""
    from raggedvit.bench.attention import _check_graph
    from raggedvit.ops.backends import BACKENDS

    lengths, max_seqlen = [30, 12, 50], 50
    q, k, v = (torch.randn(sum(lengths), 2, 64) for _ in range(3))
    cu = torch.tensor([0, 30, 42, 92], dtype=torch.int32)
    be = BACKENDS["padded_sdpa"]

    class Live:
        def replay(self):
            gout.copy_(be(q, k, v, cu, max_seqlen))

    class Stale:
        def replay(self):
            pass

    gout = be(q, k, v, cu, max_seqlen)
    assert _check_graph(be, Live(), gout, q, k, v, cu, lengths, max_seqlen, 1e-3)[0]
    assert cu.tolist() == [0, 30, 42, 92]  # restored
    gout = be(q, k, v, cu, max_seqlen)
    ok, err = _check_graph(be, Stale(), gout, q, k, v, cu, lengths, max_seqlen, 1e-3)
    assert not ok and err > 1e-3
    assert cu.tolist() == [0, 30, 42, 92]


def test_cuda_timers_refuse_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        timing.cuda_event_us(lambda: None, "cpu")
    assert timing.host_us_per_call(lambda: None, "cpu", calls=10, repeat=2) > 0
