"""Pruning: pure tensor functions on ragged batches (metadata, segment selection, compaction, scores).

Imports only torch and :mod:`raggedvit.ops`. One module per method (:mod:`.dynamicvit`, :mod:`.evit`,
:mod:`.ats`, :mod:`.threshold_l2`) with its score and keep rules on dense ``(B, L)`` views of a stage;
:mod:`.ragged` holds the metadata and the compaction, :mod:`.cls_attention` the CLS attention row.
"""

from . import ats, dynamicvit, evit, threshold_l2
from .cls_attention import cls_attention, cls_attention_from_lse
from .ragged import RaggedMeta, Selection, compact, dense_view, packed_meta, padded_meta, uniform_meta

__all__ = ["RaggedMeta", "Selection", "compact", "dense_view", "packed_meta", "padded_meta", "uniform_meta",
           "cls_attention", "cls_attention_from_lse", "ats", "dynamicvit", "evit", "threshold_l2"]
