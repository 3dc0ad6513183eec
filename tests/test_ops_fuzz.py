"""The malformed-metadata fuzz of benchmarks/gpu_safety.py, small, under the Triton interpreter on CPU (and on
the GPU when present): every op gives the documented result for random well-formed and malformed metadata."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from conftest import DEVICE

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "gpu_safety.py")
_spec = importlib.util.spec_from_file_location("gpu_safety", _PATH)
gpu_safety = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_safety)


@pytest.mark.parametrize("chunk", range(4))
def test_fuzz_small(chunk):
    seed = int(torch.randint(0, 2**31, (1,)))
    summary = gpu_safety.fuzz(10, DEVICE, seed, small=True, log=lambda *a: None)
    assert not summary["failures"], f"seed {seed}: " + "\n".join(f["error"] + "\n" + f["trace"]
                                                                for f in summary["failures"])
    assert sum(s["calls"] for s in summary["per_op"].values()) == 10
    assert gpu_safety.healthy(DEVICE)["healthy"]


def test_clamp_rule_helper():
    assert gpu_safety._clamped_offsets([-50, 100, 300], 300) == [0, 100, 300]
    assert gpu_safety._clamped_offsets([0, 200, 600], 300) == [0, 200, 300]
    assert gpu_safety._clamped_offsets([0, 200, 100, 250], 300) == [0, 200, 200, 250]
