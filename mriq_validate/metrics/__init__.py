"""Metrics: a registry of measures with declared direction, input kind, valid range and needs.

Importing the package registers every builtin metric (each implementation module registers its classes on import); the
registry lives in :mod:`.base`, the pure maths in :mod:`.functional`.
"""

from . import constraint, detectability, distribution, diversity, downstream, intensity, iqa, memorisation  # noqa: F401  (register on import)
from .base import METRICS, Metric, PerImageMetric, Sample, create_metric, metric_names, register_metric

__all__ = ["METRICS", "Metric", "PerImageMetric", "Sample", "create_metric", "metric_names", "register_metric"]
