"""The pipelines of ``raggedvit bench e2e`` as data: what each one runs, read by :mod:`.e2e` and :mod:`.report`.

A pipeline is a token layout, an attention backend and a timing mode. Every packed pipeline runs
``prune(live_rows=...)`` as ``--live-rows`` says, so the packed ones differ in attention only.

Modes: ``eager`` (plain forwards), ``graph`` (the eager forward captured in a CUDA graph), ``capture`` (the
packed model captured whole by :func:`raggedvit.models.graph.capture`), ``compiled`` (``torch.compile(model,
mode="reduce-overhead", fullgraph=True, dynamic=False)``: Inductor kernels replayed in CUDA graphs, static
shapes: what a user runs instead of pruning; ``raggedvit_compiled`` runs it on the packed pruned model) and
``best`` (a CUDA graph when every stage has an exact count, i.e. fixed variants, also timed eager and the
faster one kept; adaptive stages padded to the batch maximum read it back, one sync per stage, so those run
eager).

The references: ``dense_compiled`` for every headline speed-up; the padded baseline in its best mode is the
fastest of ``padded_sdpa`` (batch-maximum padding), ``padded_static`` (static per-stage capacity, CUDA graph) and,
where it was timed, ``padded_compiled`` (the same under ``torch.compile``), named per point (``padded_best``).
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUTS = ("dense", "padded", "packed", "oracle")
MODES = ("eager", "graph", "capture", "compiled", "best")


@dataclass(frozen=True)
class Pipeline:
    """One pipeline of ``bench e2e``.

    Attributes:
        name: the ``pipeline`` value of a result row.
        layout: ``dense`` (timm's own forward, no pruning), ``padded`` (``prune(layout="padded")``: kept tokens
            padded to the batch maximum, SDPA with a key-padding mask), ``packed`` (``prune(layout="packed")``),
            or ``oracle`` (timm blocks on dense tensors at exactly the kept counts, the mean per stage for
            adaptive methods, no scoring cost: :mod:`.oracle`).
        backend: attention backend of the packed layout (:mod:`raggedvit.ops.backends`); None for the others.
        mode: how it is timed, one of :data:`MODES`; ``graph`` and ``capture`` need a CUDA device.
        capacity: oracle only: at the packed buffer widths (the rows raggedvit's token-wise layers process)
            instead of the kept counts; adaptive variants only.
        padding: padded layout only: ``prune(padding=...)``, ``"max"`` (batch maximum) or ``"static"``.
        cpu_backend: the backend run instead of ``backend`` on a machine without CUDA (None: ``backend``).
        cpu_quick: part of ``--quick``'s default pipelines on a machine without CUDA.
        description: one line for people.
    """

    name: str
    layout: str
    backend: str | None
    mode: str
    description: str
    capacity: bool = False
    padding: str = "max"
    cpu_backend: str | None = None
    cpu_quick: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS or self.mode not in MODES:
            raise ValueError(f"pipeline {self.name}: layout {self.layout!r} or mode {self.mode!r} unknown")

    @property
    def needs_cuda(self) -> bool:
        """Captured in a CUDA graph whatever the inputs: unavailable without a CUDA device."""
        return self.mode in ("graph", "capture", "compiled")

    def backend_run(self, on_gpu: bool) -> str | None:
        """The attention backend this pipeline runs: ``cpu_backend`` when set and there is no GPU, else ``backend``."""
        return self.cpu_backend if self.cpu_backend is not None and not on_gpu else self.backend


PIPELINES = {p.name: p for p in (
    Pipeline("dense", "dense", None, "eager", "timm's own forward, no pruning", cpu_quick=True),
    Pipeline("dense_graph", "dense", None, "graph", "timm's own forward in a CUDA graph"),
    Pipeline("dense_compiled", "dense", None, "compiled", "timm's forward under torch.compile(mode="
             "'reduce-overhead', fullgraph=True, dynamic=False), the faster of contiguous and channels-last "
             "images and conv weight: the reference of every headline speed-up"),
    Pipeline("padded_sdpa", "padded", None, "best", "the paper's baseline: kept tokens padded to the batch "
             "maximum, SDPA with a key-padding mask; the reference for max_logit_diff", cpu_quick=True),
    Pipeline("padded_static", "padded", None, "graph", "the padded baseline in a CUDA graph: kept tokens "
             "padded to each stage's static capacity (no host sync), SDPA with a key-padding mask",
             padding="static"),
    Pipeline("padded_compiled", "padded", None, "compiled", "the padded baseline compiled: static per-stage "
             "capacity (as padded_static) under torch.compile(mode='reduce-overhead', fullgraph=True, "
             "dynamic=False): Inductor fuses its torch ops, SDPA attention, CUDA graphs", padding="static"),
    Pipeline("packed_fa2", "packed", "fa2_varlen", "eager", "packed layout, torch's FlashAttention-2 varlen"),
    Pipeline("packed_fa2_graph", "packed", "fa2_varlen", "graph", "packed_fa2 in a CUDA graph"),
    Pipeline("packed_varlen_attn", "packed", "varlen_attn", "eager", "packed layout, torch's varlen_attn"),
    Pipeline("packed_nested", "packed", "nested_sdpa", "eager",
             "packed layout, NestedTensor SDPA (only up to --nested-max-batch)"),
    Pipeline("raggedvit_eager", "packed", "triton", "eager", "packed layout, raggedvit's Triton kernel "
             "(the reference backend on CPU)", cpu_backend="reference", cpu_quick=True),
    Pipeline("raggedvit_graph", "packed", "triton", "capture",
             "packed layout, raggedvit's Triton kernel, captured whole (raggedvit.models.graph)"),
    Pipeline("raggedvit_compiled", "packed", "triton", "compiled", "packed layout, raggedvit's Triton kernel, "
             "torch.compile(mode='reduce-overhead', fullgraph=True, dynamic=False) of the pruned model"),
    Pipeline("oracle", "oracle", None, "graph", "timm blocks at exactly the kept counts, CUDA graph, no "
             "scoring cost"),
    Pipeline("oracle_capacity", "oracle", None, "graph", "timm blocks at the packed buffer widths, CUDA graph "
             "(adaptive only)", capacity=True),
)}
CPU_QUICK = tuple(n for n, p in PIPELINES.items() if p.cpu_quick)

BASELINE = "padded_sdpa"  # runs first at every point: its logits and kept counts are the reference
REFERENCE = "dense_compiled"  # the reference of headline speed-ups
# the padded baseline's modes: the faster one at a point is its best mode (padded_compiled where it was timed)
PADDED_BEST = ("padded_sdpa", "padded_static", "padded_compiled")
# row key -> pipeline it is relative to (images/s ratio), per grid point
SPEEDUPS = (("speedup_vs_dense_compiled", REFERENCE), ("speedup_vs_padded", BASELINE),
            ("speedup_vs_oracle", "oracle"), ("speedup_vs_fa2", "packed_fa2"),
            ("speedup_vs_fa2_graph", "packed_fa2_graph"))
# select_share of this pipeline = 1 - its time over the oracle's at the same token rows (per variant)
SELECT_SHARE = ("raggedvit_graph", {"adaptive": "oracle_capacity", "fixed": "oracle"})
