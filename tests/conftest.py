"""Test setup: on a machine without CUDA, Triton kernels run under the interpreter on CPU tensors.

``TRITON_INTERPRET`` must be set before any ``@triton.jit`` function is created, so this runs before the
test modules import raggedvit.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
ON_GPU = DEVICE.type == "cuda"

requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def sample_data_root():
    """Root of the trained ViT-Tiny and the labelled ImageNet photos (``$RAGGEDVIT_DATA`` or ``../shared/data``).

    Missing data skips the test with the paths tried, except under ``CI=true``, where it fails: CI runs
    beside ``../shared``, so a missing folder there is a broken setup, not an optional extra."""
    from raggedvit import sample_data

    root = sample_data.locate()
    if root is None:
        reason = sample_data.missing_reason()
        if IN_CI:
            pytest.fail(f"CI=true and the trained-weights data is missing: {reason}")
        pytest.skip(reason)
    return root


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs every run; a failing test reports its seed (replay with RAGGEDVIT_SEED)."""
    seed = int(os.environ.get("RAGGEDVIT_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            rep.sections.append(("seed", f"rerun with RAGGEDVIT_SEED={seeds[0]}"))
