"""Threshold overrides (``--mriq-threshold ID.field=value``, ini ``mriq_thresholds``): parsed, applied to a suite's
criteria and recorded as deviations; an override that matches no collected criterion is a usage error."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import SuiteError
from .suite import Suite, Threshold


_OVERRIDE_RE = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*?)\.(?P<field>min|max|relative|on|unit)=(?P<value>.+)$")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``ID.field=value`` (e.g. ``DICE-WT.min=-0.1``) → (id, field, value); ValueError explaining the form."""
    m = _OVERRIDE_RE.match(text.strip())
    if not m:
        raise ValueError(f"threshold override {text!r}: expected CRITERION_ID.FIELD=VALUE with FIELD one of min, max, relative, on, unit")
    value: Any = m["value"]
    if m["field"] in ("min", "max"):
        try:
            value = None if value.lower() == "none" else float(value)
        except ValueError:
            raise ValueError(f"threshold override {text!r}: {m['field']} must be a number or 'none'") from None
        if value is not None and not math.isfinite(value):
            raise ValueError(f"threshold override {text!r}: {m['field']} must be a finite number or 'none'")
    return m["id"], m["field"], value


def apply_overrides(suite: Suite, overrides: list[tuple[str, str, Any, str]], path: Path) -> tuple[Suite, list[dict[str, Any]]]:
    """Apply (id, field, value, source) overrides that name this suite's criteria; return the new suite and deviations."""
    deviations: list[dict[str, Any]] = []
    criteria = []
    for crit in suite.criteria:
        th = crit.threshold
        for cid, field, value, source in overrides:
            if cid == crit.id:
                before = getattr(th, field)
                try:
                    th = Threshold.model_validate({**th.model_dump(), field: value})
                except ValidationError as exc:
                    raise SuiteError(f"{path}: override {cid}.{field}={value} from {source}: {exc.errors()[0]['msg']}") from None
                deviations.append({"criterion": cid, "field": f"threshold.{field}", "suite_value": before, "value": value, "source": source})
        criteria.append(crit.model_copy(update={"threshold": th}))
    return suite.model_copy(update={"criteria": criteria}), deviations


def unmatched_overrides(overrides: list[tuple[str, str, Any, str]], criterion_ids: set[str]) -> list[str]:
    """One message per override whose criterion id matches no collected criterion, naming the close matches."""
    import difflib

    out = []
    for cid, field, value, source in overrides:
        if cid in criterion_ids:
            continue
        close = difflib.get_close_matches(cid, sorted(criterion_ids), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"collected criteria: {', '.join(sorted(criterion_ids)) or 'none'}"
        out.append(f"threshold override {cid}.{field}={value} (from {source}) matches no collected criterion; {hint}")
    return out
