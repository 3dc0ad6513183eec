"""Pruning: method objects and pure tensor functions on ragged batches (metadata, selection, compaction).

Imports only torch and :mod:`raggedvit.ops`. One module per method (:mod:`.threshold_l2`,
:mod:`.dynamicvit`, :mod:`.evit`, :mod:`.ats`, :mod:`.tome`), each with one :class:`~.method.Method` dataclass and its
score and keep rules on dense ``(B, L)`` views; :data:`METHODS` (:mod:`.registry`) is the one list of them.
:mod:`.stage` runs a stage (selection, then compaction); :mod:`.ragged` holds the metadata and the
compaction, :mod:`.cls_attention` the CLS attention row.
"""

from . import ats, dynamicvit, evit, threshold_l2, tome
from .ats import ATS
from .cls_attention import cls_attention, cls_attention_from_lse
from .dynamicvit import DynamicViT
from .evit import EViT
from .method import BoundedPruner, Method, NoPruning, Pruner
from .ragged import RaggedMeta, Selection, compact, dense_view, packed_meta, padded_meta, uniform_meta
from .registry import METHODS, make_method, pruning_methods
from .stage import MID, PRE, StageInput, StagePlan
from .threshold_l2 import ThresholdL2
from .tome import ToMe

__all__ = ["METHODS", "make_method", "pruning_methods", "Method", "Pruner", "BoundedPruner", "NoPruning",
           "ThresholdL2", "DynamicViT", "EViT", "ATS", "ToMe", "StagePlan", "StageInput", "PRE", "MID", "RaggedMeta",
           "Selection", "compact", "dense_view", "packed_meta", "padded_meta", "uniform_meta", "cls_attention",
           "cls_attention_from_lse", "ats", "dynamicvit", "evit", "threshold_l2", "tome"]
