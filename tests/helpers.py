"""Shared test helpers: packed random batches, a float64 loop reference, verbose comparisons."""

from __future__ import annotations

import torch


def make_cu_seqlens(lengths, device) -> torch.Tensor:
    """int32 ``(batch + 1,)`` offsets for ``lengths``."""
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + int(n))
    return torch.tensor(cu, dtype=torch.int32, device=device)


def attention_loop_reference(q, k, v, lengths, scale=None) -> torch.Tensor:
    """Obviously-correct float64 reference: one dense softmax attention per sequence, rows past the end zero."""
    total, heads, head_dim = q.shape
    scale = head_dim**-0.5 if scale is None else scale
    out = torch.zeros(total, heads, head_dim, dtype=torch.float64)
    start = 0
    for n in lengths:
        n = int(n)
        if n:
            qs, ks, vs = (t[start:start + n].double().cpu().transpose(0, 1) for t in (q, k, v))  # (H, n, D)
            p = torch.softmax(qs @ ks.transpose(1, 2) * scale, dim=-1)
            out[start:start + n] = (p @ vs).transpose(0, 1)
        start += n
    return out


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> float:
    """Assert max |actual - expected| <= atol; on failure say where and how much. Returns the max error."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values"
    err = (a - e).abs()
    worst = err.max().item() if err.numel() else 0.0
    if worst > atol:
        bad = int((err > atol).sum())
        idx = tuple(int(i) for i in torch.nonzero(err == worst)[0])
        raise AssertionError(f"{what}: max |diff| {worst:.3g} > {atol:.3g} at {idx}; {bad}/{err.numel()} elements "
                             f"over tolerance")
    return worst


def launch_count(launcher) -> int:
    """Kernel launches of a :class:`raggedvit.ops.launch.DirectLauncher`, direct or through Triton's JIT (its
    ``compiled_keys`` counts compiles, not launches)."""
    stats = launcher.stats
    return stats["direct"] + stats.get("jit", 0)
