"""The ``torch.ops.raggedvit.*`` custom ops: schemas and fake (meta) implementations (``torch.library.opcheck``)."""

from __future__ import annotations

import pytest
import torch

import raggedvit  # noqa: F401  (registers the ops)

from conftest import DEVICE


def _meta(B=2, L=4, C=16):
    dense_rows = torch.arange(B * L).view(B, L)
    lengths = torch.full((B,), L, dtype=torch.int64)
    return dense_rows, lengths, torch.randn(B * L, C)


def _cases():
    dense_rows, lengths, y = _meta()
    q, k, v = torch.randn(3, 7, 2, 16).unbind(0)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    score = torch.rand(2, 4) + 0.1
    x, w, b = torch.randn(6, 16), torch.randn(8, 16), torch.randn(8)
    live = torch.tensor([6], dtype=torch.int32)  # every row live: outputs fully defined
    index = torch.tensor([[0, 2, 4], [0, 1, 3]])
    tok = torch.arange(4, dtype=torch.int32).repeat(2, 1)
    ops = torch.ops.raggedvit
    return {
        "ragged_attention": (ops.ragged_attention, (q, k, v, cu, 4, None)),
        "cls_attention_mean": (ops.cls_attention_mean, (q, k, cu[:-1], cu[1:], 4, 0.25)),
        "compact_packed": (ops.compact_packed, (y, torch.randn(2, 16), dense_rows, index, torch.tensor([3, 2]), tok,
                                                3)),
        "compact_packed_no_extra": (ops.compact_packed, (y, None, dense_rows, index.clamp(max=3), torch.tensor([3, 3]),
                                                         tok, 3)),
        "ragged_linear": (ops.ragged_linear, (x, w, b, live, True, None)),
        "ragged_linear_residual": (ops.ragged_linear, (x, w, None, live, False, torch.randn(6, 8))),
        "tome_merge": (ops.tome_merge, (torch.randn(2, 7, 16), torch.randn(2, 7, 8), torch.rand(2, 7) + 1,
                                        torch.tensor([7, 4]), 1, 2, None, 0)),
        "tome_merge_adaptive": (ops.tome_merge, (torch.randn(2, 7, 16), torch.randn(2, 7, 8), None, None, 1, 3, 0.2,
                                                 1)),
        "ragged_layer_norm_shift": (ops.ragged_layer_norm_shift, (x, torch.randn(16), None, live, torch.randn(16),
                                                                  1e-5)),
        "ragged_layer_norm": (ops.ragged_layer_norm, (x, torch.randn(16), torch.randn(16), live, 1e-5)),
        "l2_select_fixed": (ops.l2_select, (y, dense_rows, lengths, 1, 3, 2, None, None, 1, None)),
        "l2_select_alpha": (ops.l2_select, (y, dense_rows, lengths, 1, 4, None, None, 1.0, 1, None)),
        "best_first_fuse": (ops.best_first_select, (score, y, dense_rows, lengths, 1, 4, 2, None, None, True, 1, None,
                                                    None, False)),
        "best_first_mass": (ops.best_first_select, (score, y, dense_rows, lengths, 1, 4, None, 0.6, None, False, 1,
                                                    None, None, False)),
        "ats_select": (ops.ats_select, (score, torch.rand(8) + 0.1, dense_rows, lengths, 1, 4, 3)),
    }


def _on_device(a):
    """The ops run their Triton kernels: on the GPU there, under the interpreter on CPU (conftest)."""
    return a.to(DEVICE) if isinstance(a, torch.Tensor) else a


@pytest.mark.parametrize("name", list(_cases()))
def test_opcheck(name):
    op, args = _cases()[name]
    args = tuple(_on_device(a) for a in args)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_batch_max_size_op():
    out = torch.ops.raggedvit.batch_max_size(torch.tensor([3, 9, 4]), 2, 8)
    assert out.shape == (8,) and out.dtype == torch.uint8
