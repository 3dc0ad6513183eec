"""Tests for raggedvit.ops.checks (the device-side validation behind every op's check_lengths=True)."""

from __future__ import annotations

import pytest
import torch

from raggedvit.ops.checks import check_ragged

from conftest import DEVICE


def _t(values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("cu,msg", [
    ([-50, 100, 300], r"cu_seqlens\[0\] must be 0, got -50 \(a negative start\)"),
    ([3, 100, 300], r"cu_seqlens\[0\] must be 0, got 3$"),
    ([0, 200, 100], r"cu_seqlens must be non-decreasing, but cu_seqlens\[2\] = 100 < cu_seqlens\[1\] = 200"),
    ([0, 200, 600], r"cu_seqlens\[2\] = 600 exceeds the 300 rows of q \(past the row count\)"),
    ([0, 250, 300], r"sequence 0 has 250 rows, more than max_seqlen = 197"),
])
def test_offsets_name_the_problem(cu, msg):
    with pytest.raises(ValueError, match=r"^myop: " + msg):
        check_ragged("myop", 300, what="rows of q", cu_seqlens=_t(cu), max_len=197)


def test_well_formed_passes_and_order_of_checks():
    check_ragged("op", 300, cu_seqlens=_t([0, 0, 197, 300]), max_len=197)
    check_ragged("op", 10, starts=_t([0, 4, 4]), ends=_t([4, 4, 10]), max_len=6)
    check_ragged("op", 5, bounded=(("count", _t([0, 5], torch.int64), 0, 5),))
    # a negative start is reported before the decreasing pair it also causes
    with pytest.raises(ValueError, match="negative start"):
        check_ragged("op", 300, cu_seqlens=_t([-1, -5, 400]))


@pytest.mark.parametrize("starts,ends,msg", [
    ([0, -2], [3, 4], r"starts\[1\] = -2 is negative"),
    ([0, 5], [3, 4], r"ends\[1\] = 4 < starts\[1\] = 5 \(a decreasing range\)"),
    ([0, 5], [3, 11], r"ends\[1\] = 11 exceeds the 10 rows"),
    ([0, 1], [3, 9], r"sequence 1 has 8 rows, more than out_width = 6"),
])
def test_ranges_name_the_problem(starts, ends, msg):
    with pytest.raises(ValueError, match=msg):
        check_ragged("op", 10, starts=_t(starts), ends=_t(ends), max_len=6, max_name="out_width")


def test_bounded_values_name_index_value_and_range():
    rows = _t([[0, 1], [2, 99]], torch.int64)
    with pytest.raises(ValueError, match=r"dense_rows\[1, 1\] = 99 is outside \[0, 9\]"):
        check_ragged("op", 10, bounded=(("lengths", _t([2, 2], torch.int64), 0, 2), ("dense_rows", rows, 0, 9)))
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 is outside \[0, 2\]"):
        check_ragged("op", 10, bounded=(("lengths", _t([-1, 2], torch.int64), 0, 2), ("dense_rows", rows, 0, 9)))


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(cu_seqlens=torch.zeros(3, device=DEVICE)), TypeError, "int32 or int64"),
    (dict(cu_seqlens=torch.zeros(2, 2, dtype=torch.int32, device=DEVICE)), ValueError, "1-D"),
    (dict(cu_seqlens=torch.zeros(1, dtype=torch.int32, device=DEVICE)), ValueError, "at least 2 entries"),
    (dict(cu_seqlens=[0, 3]), TypeError, "torch.Tensor"),
    (dict(starts=torch.zeros(2, dtype=torch.int32, device=DEVICE), ends=torch.zeros(3, dtype=torch.int32,
                                                                                    device=DEVICE)),
     ValueError, "differ in shape"),
])
def test_wrong_dtype_or_shape(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        check_ragged("op", 10, **kw)
