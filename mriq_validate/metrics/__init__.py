"""Metrics: a registry of measures with declared direction, input kind, valid range and needs."""

from .base import METRICS, Metric, PerImageMetric, Sample, create_metric, metric_names, register_metric

__all__ = ["METRICS", "Metric", "PerImageMetric", "Sample", "create_metric", "metric_names", "register_metric"]
