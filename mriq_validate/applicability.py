"""Whether a suite's criteria can be evaluated on the data at hand, decided once per suite and data.

Two reasons a criterion cannot apply: the suite names regions the data do not have (the vessel suite on tumour data:
the whole suite does not fit, said once and referred to by its other criteria), or the data have no annotations (a
healthy cohort) and the criterion's measure needs label masks. Neither is ever a pass: a misfit is an ERROR, a
criterion that cannot apply is reported as not applicable and leaves the decision INCOMPLETE when it gates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.core import ReferenceData
from .metrics import create_metric
from .perturb import REGISTRY
from .subgroups import DERIVED
from .suite import Criterion, Suite


@dataclass(frozen=True)
class SuiteFit:
    """The suite's fit to the data: the criteria that cannot apply (id → reason) and, when the suite does not fit,
    the one message that says why (with the criterion that reports it in full)."""

    misfit: str | None = None
    first_reporter: str | None = None
    not_applicable: dict[str, str] = field(default_factory=dict)

    def problem(self, crit: Criterion) -> tuple[str, str] | None:
        """("error" | "not_applicable", message) for ``crit``, None when it applies."""
        if self.misfit is not None:
            if crit.id == self.first_reporter:
                return "error", self.misfit
            return "error", f"the suite does not fit the data (reported in full once, at {self.first_reporter})"
        if crit.id in self.not_applicable:
            return "not_applicable", self.not_applicable[crit.id]
        return None


def suite_fit(suite: Suite, data: ReferenceData) -> SuiteFit:
    """Check every criterion of ``suite`` against ``data``: the regions its measure reads, and its need for masks."""
    known = {*data.regions, *data.labels}
    missing: dict[str, list[str]] = {}
    not_applicable: dict[str, str] = {}
    for crit in suite.criteria:
        metric = create_metric(crit.metric, crit.params, where=f"criterion {crit.id}: ")
        for region in metric.regions():
            if region not in known and data.has_masks:  # (without annotations the data name no regions at all)
                missing.setdefault(region, []).append(crit.id)
        local_edit = crit.perturbation is not None and crit.perturbation.name in REGISTRY and REGISTRY[crit.perturbation.name].scope == "local"
        by_lesions = crit.by is not None and crit.by.name in DERIVED  # subgroups derived from the masks
        if not data.has_masks and (metric.uses_annotations() or local_edit or by_lesions):
            need = (f"perturbation {crit.perturbation.name!r} edits lesions" if local_edit and crit.perturbation else
                    f"metric {crit.metric!r} reads them" if metric.uses_annotations() or crit.by is None else
                    f"its subgroups (`by: {crit.by.name}`) are read from them")
            not_applicable[crit.id] = f"not applicable: data {data.name!r} have no annotations (no label masks), and {need}"
    if missing:
        first = next(c.id for c in suite.criteria if any(c.id in ids for ids in missing.values()))
        named = "; ".join(f"{r!r} (criteria {', '.join(ids)})" for r, ids in missing.items())
        msg = (f"suite {suite.name!r} does not fit data {data.name!r}: it measures regions the data do not have: {named}; the "
               f"data have regions {sorted(data.regions)} and labels {sorted(data.labels)}. Run this suite on data it was "
               f"written for (its data.default is {suite.data.default!r}), or give the data's label meanings with a "
               f"`labels:` map in the suite's data block.")
        return SuiteFit(misfit=msg, first_reporter=first)
    return SuiteFit(not_applicable=not_applicable)
