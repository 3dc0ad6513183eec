"""``check_ragged``: the one validation of ragged metadata behind every op's ``check_lengths=True``.

The kernels clamp whatever metadata they are given (the rule is in :mod:`raggedvit.ops.attention`), so
malformed offsets, lengths, counts or indices never cause an out-of-bounds access; they silently give the
clamped result. ``check_lengths=True`` turns them into errors while debugging: :func:`check_ragged` runs the
comparisons on the device, reads back one small flag tensor (a host sync), and raises ``ValueError`` naming
the first problem before the op launches anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_INT = (torch.int32, torch.int64)
Bounded = tuple[str, torch.Tensor, int, int]  # (name, tensor, lo, hi): every element must lie in [lo, hi]


def _int_tensor(op: str, name: str, t, dim: int | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INT:
        raise TypeError(f"{op}: {name} must be int32 or int64, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {tuple(t.shape)}")


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def _at(name: str, index: tuple[int, ...]) -> str:
    return f"{name}[{', '.join(map(str, index))}]"


def check_ragged(op: str, rows: int, *, what: str = "rows", cu_seqlens: torch.Tensor | None = None,
                 starts: torch.Tensor | None = None, ends: torch.Tensor | None = None, max_len: int | None = None,
                 max_name: str = "max_seqlen", bounded: Sequence[Bounded] = ()) -> None:
    """Validate ragged metadata on its device; raise ``ValueError`` (``TypeError`` for a wrong dtype) naming
    the first problem. Syncs once with the device (more only to describe a problem): debugging only.

    Args:
        op: the calling op, prefixed to every message.
        rows: the row count the offsets and ranges index (a host int from a tensor shape); ``what`` names
            those rows in messages (e.g. ``"rows of q"``).
        cu_seqlens: ``(B + 1,)`` offsets: ``cu_seqlens[0] == 0`` (a negative start is named as such),
            non-decreasing, no entry past ``rows``, no length over ``max_len``.
        starts, ends: ``(B,)`` row ranges: ``0 <= starts <= ends <= rows`` and ``ends - starts <= max_len``.
        max_len: host bound on every length (``max_name`` names it in messages), or None.
        bounded: ``(name, tensor, lo, hi)`` integer tensors (indices, counts, lengths) whose every element
            must lie in ``[lo, hi]``.

    Checks run in this order: negative start, decreasing, past the row count, longer than ``max_len``,
    then ``bounded`` in the given order.
    """
    checks: list[tuple[torch.Tensor, object]] = []  # (bad mask on the device, message builder)
    if cu_seqlens is not None:
        _int_tensor(op, "cu_seqlens", cu_seqlens, 1)
        if cu_seqlens.shape[0] < 2:
            raise ValueError(f"{op}: cu_seqlens needs at least 2 entries (batch + 1), got {cu_seqlens.shape[0]}")
        cu = cu_seqlens.long()
        lens = cu[1:] - cu[:-1]

        def start_msg(_m):
            v = int(cu[0])
            return f"cu_seqlens[0] must be 0, got {v}" + (" (a negative start)" if v < 0 else "")

        def dec_msg(m):
            (i,) = _first(m)
            return (f"cu_seqlens must be non-decreasing, but cu_seqlens[{i + 1}] = {int(cu[i + 1])} < "
                    f"cu_seqlens[{i}] = {int(cu[i])}")

        def past_msg(m):
            (i,) = _first(m)
            return f"cu_seqlens[{i}] = {int(cu[i])} exceeds the {rows} {what} (past the row count)"

        checks += [(cu[:1] != 0, start_msg), (lens < 0, dec_msg), (cu > rows, past_msg)]
    elif starts is not None or ends is not None:
        _int_tensor(op, "starts", starts, 1)
        _int_tensor(op, "ends", ends, 1)
        if starts.shape != ends.shape:
            raise ValueError(f"{op}: starts and ends differ in shape: {tuple(starts.shape)} vs {tuple(ends.shape)}")
        s, e = starts.long(), ends.long()
        lens = e - s

        def neg_msg(m):
            (b,) = _first(m)
            return f"starts[{b}] = {int(s[b])} is negative (a negative start)"

        def dec_msg(m):
            (b,) = _first(m)
            return f"ends[{b}] = {int(e[b])} < starts[{b}] = {int(s[b])} (a decreasing range)"

        def past_msg(m):
            (b,) = _first(m)
            return f"ends[{b}] = {int(e[b])} exceeds the {rows} {what} (past the row count)"

        checks += [(s < 0, neg_msg), (lens < 0, dec_msg), (e > rows, past_msg)]
    else:
        lens = None
    if lens is not None and max_len is not None:
        def long_msg(m):
            (b,) = _first(m)
            return f"sequence {b} has {int(lens[b])} rows, more than {max_name} = {max_len}"

        checks.append((lens > max_len, long_msg))
    for name, t, lo, hi in bounded:
        _int_tensor(op, name, t, None)

        def range_msg(m, name=name, t=t, lo=lo, hi=hi):
            i = _first(m)
            return f"{_at(name, i)} = {int(t[i])} is outside [{lo}, {hi}]"

        checks.append(((t < lo) | (t > hi), range_msg))
    if not checks:
        return
    flags = torch.stack([m.any() for m, _ in checks]).tolist()  # the one sync of a well-formed call
    for (mask, msg), bad in zip(checks, flags):
        if bad:
            raise ValueError(f"{op}: {msg(mask)}")


__all__ = ["check_ragged"]
