"""What a study measured (:class:`StudyResult`) and its JSON form (``study.json``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .grid import TRUE_QUALITY, Condition

STUDY_VERSION = "1"
DETECT_K = 3.0  # |change| beyond 3 bootstrap SEs of the clean-real value, towards worse, counts as "moved"
CORR_BOOT = 1000  # bootstrap resamples over conditions for the correlation CIs


@dataclass
class StudyResult:
    """Everything the study measured (``as_dict`` is ``study.json``)."""

    config: dict[str, Any]
    region: str
    measures: list[dict[str, Any]]
    conditions: list[Condition]
    rows: list[dict[str, Any]]
    correlation: list[dict[str, Any]]
    memorisation: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    provenance: dict[str, Any]
    findings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (non-finite numbers as null)."""
        return json_safe({
            "study_version": STUDY_VERSION, "config": self.config, "region": self.region, "measures": self.measures,
            "conditions": [c.__dict__ for c in self.conditions], "sensitivity": self.rows, "correlation": self.correlation,
            "memorisation": self.memorisation, "ranking": self.ranking, "skipped": self.skipped, "findings": self.findings,
            "true_quality": {k: {"rank": v[0], "why": v[1]} for k, v in TRUE_QUALITY.items()},
            "rules": {"detected": f"worse > {DETECT_K:g} x SE of the clean-real value", "z": "worse / SE",
                      "se_set_measures": "SD over 80% subsets x sqrt(m/(n-m)) (delete-d jackknife)",
                      "correlation": "measure signed so higher = worse, vs Dice, across conditions; bootstrap over conditions"},
            "provenance": self.provenance,
        })


def json_safe(x: Any) -> Any:
    """``x`` with numpy scalars as Python numbers, tuples as lists and non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
