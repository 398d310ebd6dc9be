"""The method contract under its first name: ``from bench.protocol import Method`` still works.

The contract lives in :mod:`bench.contract` (one word per meaning: "protocol" no longer names
it). This module re-exports it unchanged, for adapters written before the rename; new code
imports :mod:`bench.contract`. Nothing is deprecated: both names stay.
"""

from __future__ import annotations

from bench.contract import (
    BaseClassifier,
    ClassifierMethod,
    Context,
    Cost,
    DatasetInfo,
    LogitClassifier,
    Method,
    ModelRef,
    ModelSource,
    Param,
    TrainContext,
    labels_from_logits,
)
from bench.data.layout import standard_layout

__all__ = ["BaseClassifier", "ClassifierMethod", "Context", "Cost", "DatasetInfo",
           "LogitClassifier", "Method", "ModelRef", "ModelSource", "Param", "TrainContext",
           "labels_from_logits", "standard_layout"]
