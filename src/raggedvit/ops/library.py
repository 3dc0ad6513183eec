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

__all__ = ["is_compiling", "check_compilable", "NAMESPACE"]

NAMESPACE = "raggedvit"
is_compiling = torch.compiler.is_compiling


def check_compilable(op: str, out: torch.Tensor | None = None, check_lengths: bool = False) -> None:
    """ValueError for the eager-only options (``out=``, ``check_lengths=True``) under ``torch.compile``."""
    if out is not None or check_lengths:
        raise ValueError(f"{op}: out= and check_lengths=True are not supported under torch.compile / torch.export "
                         "(the compiled op allocates its output and never syncs)")
