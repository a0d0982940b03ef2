"""Which criteria can apply to the data: a suite that does not fit says so once; a cohort without annotations runs the
criteria that need no masks and reports the others as not applicable (never as passed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mriq_validate.applicability import suite_fit
from mriq_validate.data.core import Split
from mriq_validate.suite import load_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"


def _healthy(data):  # type: ignore[no-untyped-def]
    """``data`` with its annotations removed (masks all zero, has_masks False)."""
    blank = lambda s: Split(s.images, torch.zeros_like(s.masks), s.ids, s.covariates)  # noqa: E731
    return replace(data, train=blank(data.train), test=blank(data.test), has_masks=False, labels={}, regions={})


def test_vessel_suite_on_tumour_data_is_one_misfit_said_once(mni) -> None:  # type: ignore[no-untyped-def]
    suite = load_suite(SUITES / "vessels.yaml")
    fit = suite_fit(suite, mni)
    problems = {c.id: fit.problem(c) for c in suite.criteria}
    vessel_criteria = [c.id for c in suite.criteria if (c.params or {}).get("region") == "vessel"]
    assert vessel_criteria, "the vessel suite measures the vessel region"
    full = [cid for cid, p in problems.items() if p is not None and "does not fit data" in p[1]]
    assert full == [fit.first_reporter], "the full explanation is given once"
    assert "'vessel'" in problems[full[0]][1] and "whole_tumour" in problems[full[0]][1]
    assert all(p is not None and p[0] == "error" for p in problems.values()), "no criterion of a misfit suite runs or passes"


def test_tumour_suite_fits_tumour_data(mni) -> None:  # type: ignore[no-untyped-def]
    suite = load_suite(SUITES / "brain_tumour.yaml")
    fit = suite_fit(suite, mni)
    assert fit.misfit is None and not fit.not_applicable


def test_healthy_cohort_runs_what_needs_no_masks(mni) -> None:  # type: ignore[no-untyped-def]
    suite = load_suite(SUITES / "brain_tumour.yaml")
    fit = suite_fit(suite, _healthy(mni))
    assert fit.misfit is None
    na = fit.not_applicable
    by_id = {c.id: c for c in suite.criteria}
    assert "DICE-WT" in na and "DICE-TSTR-WT" in na and "no annotations" in na["DICE-WT"]
    # measures of the images alone still apply
    for cid in ("INTENSITY-SCALE", "MEM-COPY"):
        assert cid in by_id and cid not in na
    # every criterion whose measure reads a region is among the not applicable ones
    for c in suite.criteria:
        if (c.params or {}).get("region"):
            assert c.id in na, c.id


def test_gate_run_of_a_misfit_suite_explains_once_and_is_not_cleared(run_plugin, pytester, cache_dir) -> None:  # type: ignore[no-untyped-def]
    import json

    result = run_plugin(str(SUITES / "vessels.yaml"), "--rootdir", str(pytester.path), "--mriq-model=builtin:real",
                        "--mriq-data=builtin:mni-tumour", "--mriq-report=out")
    text = result.stdout.str()
    assert result.ret != 0
    # the full explanation is given once among the errors; the short summary (untruncated when CI is set) is apart
    errors = text.split("short test summary info")[0]
    assert errors.count("does not fit data") == 1, text[-3000:]
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["decision"]["status"] != "CLEARED"
