"""Issue 11, item 4: the ATS sampling of the two layouts (torch :func:`raggedvit.pruning.ats.select_sampling`
for padded, the Triton kernels of :func:`raggedvit.ops.select.ats_select` for packed) decides the same on the
same significances, bit for bit.

Both compute an integer CDF (:func:`raggedvit.pruning.ats.fixed_point`) and integer sample points. Before,
both summed an fp32 CDF in their own order (torch's cumsum, the kernel's tile sums; on a GPU also an
approximate fp32 division in the kernel): a sample point within rounding of a midpoint between two CDF values
went either way. Integer-valued significances put sample points exactly on such midpoints: the float
versions disagreed on about 8% of these images; the exact rule (lower value on equal distance) is checked
here against a ``Fraction`` reference.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from conftest import DEVICE


def _kept(index: torch.Tensor, count: torch.Tensor) -> list[list[int]]:
    return [index[b, : int(count[b])].tolist() for b in range(count.shape[0])]


def _run_both(sig: torch.Tensor, lengths: torch.Tensor, num_prefix: int, num_samples: int):
    from raggedvit.ops.select import ats_select
    from raggedvit.pruning import ats

    B, L = sig.shape
    valid = torch.arange(L, device=sig.device)[None, :] < lengths[:, None]
    want = ats.select_sampling(sig, valid, num_prefix, num_samples=num_samples)
    rows = torch.arange(B * L, device=sig.device).view(B, L)  # the (B, L) grid as rows, significance x 1
    index, count = ats_select(sig.contiguous(), torch.ones(B * L, device=sig.device), rows, lengths, num_prefix,
                              want.width, num_samples)
    return want, index, count


def _fraction_reference(sig: list[float], num_samples: int) -> list[int]:
    """ATS in exact rational arithmetic on one image's candidate significances: kept indices in ascending
    significance order (ties: lower index first; nearest CDF value, the lower one on equal distance; the
    first rank of a value)."""
    order = sorted(range(len(sig)), key=lambda i: (sig[i], i))
    cdf, total = [], Fraction(0)
    for i in order:
        total += Fraction(sig[i])
        cdf.append(total)
    den = cdf[-1] - cdf[0]
    F = [(c - cdf[0]) / den if den > 0 else Fraction(0) for c in cdf]
    y0 = min([f for f in F if f > 0], default=Fraction(1))
    m = num_samples
    ys = [Fraction(1)] if m == 1 else [y0 + k * (1 - y0) / (m - 1) for k in range(m)]
    picks = set()
    for y in ys:
        best = min(range(len(F)), key=lambda r: (abs(F[r] - y), F[r]))  # nearest, the lower value on ties
        picks.add(F.index(F[best]))  # the first rank of that value
    return [order[r] for r in sorted(picks)]


def test_ats_cdf_bits_agree():
    from raggedvit.ops.select import ats_cdf_bits
    from raggedvit.pruning import ats

    for m in (1, 2, 49, 196, 197, 576, 4096, 1 << 20):
        assert ats_cdf_bits(m) == ats.cdf_bits(m)
    assert ats.cdf_bits(196) == 40


@pytest.mark.parametrize("num_samples", [196, 195, 64])
def test_ats_integer_significances_same_decisions(num_samples):
    """Small-integer significances (exact ties in distance): the torch and Triton selections agree exactly
    (before the integer CDF they disagreed on ~5 of these 64 images for each ``num_samples``)."""
    B, L, P = 64, 197, 1
    sig = torch.randint(1, 5, (B, L), device=DEVICE).float() * torch.rand(B, 1, device=DEVICE)
    sig[:, :P] = 0.0
    lengths = torch.full((B,), L, dtype=torch.int64, device=DEVICE)
    lengths[::7] = torch.randint(P + 1, L, (len(lengths[::7]),), device=DEVICE)  # ragged too
    want, index, count = _run_both(sig, lengths, P, num_samples)
    assert torch.equal(count, want.count), (count - want.count).nonzero().flatten().tolist()
    assert _kept(index, count) == _kept(want.index, want.count)


@pytest.mark.parametrize("num_samples", [1, 2, 7, 12, 30])
def test_ats_sampling_exact_rule(num_samples):
    """Both implementations against an exact rational reference, on integer-valued significances (exactly
    representable, so the integer CDF loses nothing) with zeros, ties and sample points on midpoints."""
    B, L, P = 24, 16, 1
    sig = torch.randint(0, 4, (B, L), device=DEVICE).float() * 2.0 ** torch.randint(-3, 4, (B, 1), device=DEVICE)
    sig[:, :P] = 0.0
    sig[0, P:] = 0.0  # nothing significant: the lowest rank only
    sig[1, P:] = 1.0  # all equal
    lengths = torch.randint(P, L + 1, (B,), device=DEVICE)
    lengths[:3] = L
    want, index, count = _run_both(sig, lengths, P, num_samples)
    for b in range(B):
        n = int(lengths[b])
        expected = [0] + [P + j for j in _fraction_reference(sig[b, P:n].tolist(), num_samples)] if n > P else [0]
        assert want.index[b, : int(want.count[b])].tolist() == expected, f"torch, image {b}"
        assert index[b, : int(count[b])].tolist() == expected, f"triton, image {b}"


def _run_uniform(sig: torch.Tensor, num_prefix: int, num_samples: int):
    """As :func:`_run_both` with every position live (``valid=None``: the reference's uniform path)."""
    from raggedvit.ops.select import ats_select
    from raggedvit.pruning import ats

    B, L = sig.shape
    want = ats.select_sampling(sig, None, num_prefix, num_samples=num_samples)
    rows = torch.arange(B * L, device=sig.device).view(B, L)
    lengths = torch.full((B,), L, dtype=torch.int64, device=sig.device)
    index, count = ats_select(sig.contiguous(), torch.ones(B * L, device=sig.device), rows, lengths, num_prefix,
                              want.width, num_samples)
    return want, index, count


def _assert_same(want, index, count):
    assert torch.equal(count, want.count), (count - want.count).nonzero().flatten().tolist()
    assert _kept(index, count) == _kept(want.index, want.count)
    assert index.shape == want.index.shape


def _edge_images(L: int, P: int) -> torch.Tensor:
    """Images that reach every branch of the per-value hit test (the kernel's ``ats_sample_fwd``)."""
    g = torch.Generator().manual_seed(L * 7 + P)
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    rows = [
        torch.zeros(L),  # D == 0: rank 0 only
        torch.ones(L),  # all equal: T_k on the values (step 1 per rank)
        torch.cat([torch.zeros(L - 1), torch.ones(1)]),  # one positive value: c0 == D, step 0
        torch.cat([torch.full((L - 1,), 1e-30), torch.ones(1)]),  # below 2**-40 of the max: q == 0 duplicates
        torch.cat([torch.zeros(L // 2), rand(L - L // 2)]),  # a run of zeros, then distinct values
        torch.cat([torch.full((L // 3,), 1e-20), rand(L - L // 3) + 1]),  # tiny (q == 0) then near-equal
        torch.randint(0, 3, (L,), generator=g).float(),  # integers: zeros, ties, midpoints
        torch.randint(1, 4, (L,), generator=g).float() * 0.375,
        (rand(L) ** 8),  # wide dynamic range, some q == 0
        rand(L),
        torch.cat([torch.ones(2), torch.zeros(L - 2)]),  # two positives, equal
        torch.cat([torch.tensor([3.0, 1.0]), torch.zeros(L - 2)]),
    ]
    sig = torch.stack(rows)[:, torch.randperm(L, generator=g)]
    sig[:, :P] = 0.0
    return sig.to(DEVICE)


@pytest.mark.parametrize("num_samples", [1, 2, 3, 5, 16, 196])
@pytest.mark.parametrize("P", [1, 2])
def test_ats_sampling_edge_cases(num_samples, P):
    """M == 1 (the single point D), M == 2 (the points c0 and D), step 0 (one positive CDF value), duplicate
    CDF values from zero integer significances, ties, and lengths 0, 1, the prefix only, prefix + 1, + 2."""
    L = 37
    sig = _edge_images(L, P)
    B = sig.shape[0]
    lengths = torch.full((B,), L, dtype=torch.int64, device=DEVICE)
    _assert_same(*_run_both(sig, lengths, P, num_samples))
    _assert_same(*_run_uniform(sig, P, num_samples))
    short = torch.tensor([0, 1, P, P + 1, P + 2, P + 3, 0, P, P + 1, L, L - 1, P + 2], device=DEVICE)
    _assert_same(*_run_both(sig, short, P, num_samples))
    ragged = torch.randint(0, L + 1, (B,), device=DEVICE)
    _assert_same(*_run_both(sig, ragged, P, num_samples))


@pytest.mark.parametrize("num_samples", [1, 2, 196, 576])
def test_ats_sampling_long_images(num_samples):
    """L = 577 (384 px, BLOCK_L = 1024), ragged and uniform, with zeros and ties."""
    B, L, P = 6, 577, 1
    sig = torch.rand(B, L, device=DEVICE) ** 4
    sig[0, 100:300] = 0.0
    sig[1] = torch.randint(0, 5, (L,), device=DEVICE).float()
    sig[2, ::3] = 1e-25
    sig[:, :P] = 0.0
    lengths = torch.tensor([L, 400, 577, 2, 1, 300], device=DEVICE)
    _assert_same(*_run_both(sig, lengths, P, num_samples))
    _assert_same(*_run_uniform(sig, P, num_samples))


def test_ats_sampling_fuzz_against_fraction_reference():
    """Random small images (zeros, ties, tiny values, integer midpoints) and sample counts: both
    implementations equal the exact rational reference (significances exactly representable, no value under
    ``2 ** -40`` of the maximum, so the integer CDF is exact)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(24):
        L, P = int(torch.randint(2, 12, (1,), generator=g)), 1
        m = [1, 2, 3, 4, 7, 10, 25][trial % 7]
        kind = trial % 3
        vals = torch.randint(0, 4 if kind else 2, (8, L), generator=g).float()
        if kind == 2:
            vals = vals * 2.0 ** torch.randint(-4, 5, (8, L), generator=g)
        sig = vals.to(DEVICE)
        sig[:, :P] = 0.0
        lengths = torch.randint(0, L + 1, (8,), generator=g).to(DEVICE)
        want, index, count = _run_both(sig, lengths, P, m)
        _assert_same(want, index, count)
        for b in range(8):
            n = int(lengths[b])
            if n > P:
                expected = [0] + [P + j for j in _fraction_reference(sig[b, P:n].tolist(), m)]
                assert index[b, : int(count[b])].tolist() == expected, (trial, b)
            else:
                assert int(count[b]) == P and index[b, 0] == 0, (trial, b)


@pytest.mark.parametrize("num_samples", [2, 4, 6, 196])
def test_ats_sampling_unit_steps(num_samples):
    """Integer significances of 1, 2, 3, 5 and 7 beside values near the maximum (multiples of ``2 ** -39``
    with the maximum in ``[0.5, 2)``: the integer CDF is exact), so sample points land on CDF values one
    apart and on half-integer midpoints (odd ``M - 1``): the rounding of ``floor((v + lo) / 2)`` matters."""
    g = torch.Generator().manual_seed(num_samples)
    B, L, P = 32, 9, 1
    unit = 2.0 ** -39
    small = torch.tensor([0, 1, 1, 2, 3, 5, 7], dtype=torch.float64)[torch.randint(0, 7, (B, L), generator=g)]
    large = torch.tensor([1.0, 0.5, 0.75, 1.5, 1 - 2.0 ** -23])[torch.randint(0, 5, (B, L), generator=g)]
    sig = torch.where(torch.rand(B, L, generator=g) < 0.6, small * unit, large.double()).float().to(DEVICE)
    sig[:, :P] = 0.0
    sig[:, -1] = 1.0
    lengths = torch.randint(P, L + 1, (B,), generator=g).to(DEVICE)
    lengths[:8] = L
    want, index, count = _run_both(sig, lengths, P, num_samples)
    _assert_same(want, index, count)
    for b in range(B):
        n = int(lengths[b])
        if n > P:
            expected = [0] + [P + j for j in _fraction_reference(sig[b, P:n].tolist(), num_samples)]
            assert index[b, : int(count[b])].tolist() == expected, b
