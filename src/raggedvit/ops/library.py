"""``torch.library`` plumbing shared by the ops: the compile-time dispatch rule.

Every op of :mod:`raggedvit.ops` that launches a Triton kernel is also a ``torch.library`` custom op
(``torch.ops.raggedvit.<name>``) with a fake (meta) implementation. Its public Python function is the eager
fast path (checks, then a :class:`~raggedvit.ops.launch.DirectLauncher` launch: a few microseconds of host
time); under ``torch.compile`` / ``torch.export`` (:func:`torch.compiler.is_compiling`) it calls the
registered op instead, so dynamo never traces into a launcher and Inductor treats the kernel as an opaque
call (it never recompiles it). The op's real implementation is the public function itself, run eagerly
when the compiled graph executes.

Everything the ops need at run time is registered when :mod:`raggedvit` (or :mod:`raggedvit.ops`) is
imported: a process that loads an AOTInductor package or a saved ``torch.export`` program with these ops
must ``import raggedvit`` first.
"""

from __future__ import annotations

import torch

__all__ = ["is_compiling", "check_compilable", "batch_max", "NAMESPACE"]

NAMESPACE = "raggedvit"
is_compiling = torch.compiler.is_compiling


def check_compilable(op: str, out: torch.Tensor | None = None, check_lengths: bool = False) -> None:
    """ValueError for the eager-only options (``out=``, ``check_lengths=True``) under ``torch.compile``."""
    if out is not None or check_lengths:
        raise ValueError(f"{op}: out= and check_lengths=True are not supported under torch.compile / torch.export "
                         "(the compiled op allocates its output and never syncs)")


def batch_max(count: torch.Tensor, lo: int, hi: int) -> int:
    """``max(count)`` clamped to ``[lo, hi]``: the grid width the padded layout pads a stage to.

    Eager: a Python int (one device read). Under ``torch.compile`` / ``torch.export``: an unbacked SymInt in
    ``[lo, hi]``, the size of the output of ``torch.ops.raggedvit.batch_max_size`` (an op with a data-dependent
    output shape), so the compiled graph keeps padding to the batch maximum without ``.item()``."""
    if is_compiling():
        return torch.ops.raggedvit.batch_max_size(count, lo, hi).shape[0]
    return max(lo, min(hi, int(count.max())))


@torch.library.custom_op("raggedvit::batch_max_size", mutates_args=())
def _batch_max_size(count: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """An empty uint8 tensor of ``max(count)`` (clamped to ``[lo, hi]``) elements: carries the size."""
    return count.new_empty((batch_max(count, lo, hi),), dtype=torch.uint8)


@_batch_max_size.register_fake
def _(count, lo, hi):
    size = torch.library.get_ctx().new_dynamic_size(min=lo, max=hi)
    return count.new_empty((size,), dtype=torch.uint8)
