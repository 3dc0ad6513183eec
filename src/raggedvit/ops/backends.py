"""Attention backends behind one interface, for the pipelines and the benchmarks.

Every backend takes the packed varlen inputs of :func:`raggedvit.ragged_attention`
(``q, k, v: (total_tokens, heads, head_dim)``, int32 ``cu_seqlens``, host int ``max_seqlen``) and returns
``(total_tokens, heads, head_dim)``. A backend that cannot run on the current machine says why through
:meth:`AttentionBackend.unavailable_reason`; nothing falls back to another backend silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .attention import ragged_attention
from .reference import ragged_attention_reference


@dataclass(frozen=True)
class AttentionBackend:
    """A named varlen attention implementation.

    Attributes:
        name: registry name (``"triton"``, ``"reference"``, ...).
        fn: ``fn(q, k, v, cu_seqlens, max_seqlen, *, scale=None) -> Tensor``.
        description: one line for tables and ``--help``.
        graph_safe: True if a CUDA graph captured around ``fn`` stays correct when lengths change.
        check: returns None when the backend can run on ``device``, else the reason it cannot.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    description: str
    graph_safe: bool
    check: Callable[[torch.device], str | None]

    def unavailable_reason(self, device: torch.device | str) -> str | None:
        """None if this backend runs on ``device``, else a sentence saying why not."""
        return self.check(torch.device(device))

    def __call__(self, q, k, v, cu_seqlens, max_seqlen, *, scale=None) -> torch.Tensor:
        return self.fn(q, k, v, cu_seqlens, max_seqlen, scale=scale)


def _needs_cuda(device: torch.device) -> str | None:
    if device.type != "cuda":
        from .attention import launcher

        if launcher.interpreted:
            return None
        return "needs a CUDA device (or TRITON_INTERPRET=1 for the Triton interpreter on CPU)"
    return None


BACKENDS: dict[str, AttentionBackend] = {}


def register(backend: AttentionBackend) -> AttentionBackend:
    """Add ``backend`` to :data:`BACKENDS` under its name."""
    BACKENDS[backend.name] = backend
    return backend


register(AttentionBackend("triton", ragged_attention, "raggedvit Triton kernel, direct launch", True, _needs_cuda))
register(AttentionBackend("reference", ragged_attention_reference, "pure PyTorch (any device)", True,
                          lambda device: None))


def get_backend(name: str) -> AttentionBackend:
    """The backend called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(sorted(BACKENDS))}") from None
