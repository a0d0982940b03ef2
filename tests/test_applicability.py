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


HEALTHY_SUITE = """\
mriq_suite:
  name: healthy-run
  context_of_use: a cohort without annotations, through the plugin
  data:
    slicing: volume
    spacing_mm: 6.0
    shape: [32, 40, 32]
    test_fraction: 0.4
  criteria:
    - id: BRIGHTNESS
      requirement: the 95th percentile of brain intensity holds
      rationale: a measure of the images alone (a loose bound; the test is about which criteria apply)
      metric: brain_intensity
      params: {percentile: 95}
      n_boot: 20
      threshold: {min: -0.5, max: 0.5, relative: difference}
    - id: DICE-WT
      requirement: whole-tumour Dice holds
      rationale: needs the masks
      metric: dice
      params: {region: whole_tumour, segmenter: {channels: [8, 16, 32], strides: [2, 2], epochs: 24}}
      threshold: {min: -0.05, relative: difference}
    - id: SELF-ERASE
      kind: sensitivity
      requirement: brightness moves when lesions are erased
      rationale: the perturbation edits lesions, which a healthy cohort does not have
      metric: brain_intensity
      params: {percentile: 95}
      perturbation: {name: lesion_erase, amount: 1.0}
      threshold: {min: 0.0}
"""


def test_gate_run_on_a_healthy_cohort_is_incomplete_with_the_mask_criteria_not_applicable(run_plugin, pytester) -> None:  # type: ignore[no-untyped-def]
    """A real gate run on a NIfTI cohort without label files: the measure of the images alone runs and passes, the
    criteria that need masks (a Dice; a self-check whose perturbation edits lesions) are reported not applicable,
    never passed, and the decision is INCOMPLETE with a non-zero exit."""
    import json
    import math

    from mriq_validate.data.cohort_writer import write_cohort

    cohort = pytester.path / "healthy"
    write_cohort(cohort, "brats2021", 8, seed=3, voxel_mm=6.0, shape=(32, 40, 32))
    labels = sorted(cohort.rglob("*_seg.nii.gz"))
    assert len(labels) == 8
    for p in labels:
        p.unlink()
    pytester.makefile(".yaml", suite=HEALTHY_SUITE)
    result = run_plugin("--mriq-model=builtin:real", f"--mriq-data={cohort}", "--mriq-report=out", "--mriq-device=cpu", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret != 0  # exit 0 would read as a pass in CI
    result.stdout.fnmatch_lines(["*release decision: INCOMPLETE*"])
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    verdicts = {r["criterion_id"]: r for r in report["results"]}
    assert verdicts["BRIGHTNESS"]["verdict"] == "PASS" and math.isfinite(verdicts["BRIGHTNESS"]["value"]["value"])
    for cid, need in (("DICE-WT", "metric 'dice' reads them"), ("SELF-ERASE", "perturbation 'lesion_erase' edits lesions")):
        assert verdicts[cid]["verdict"] == "SKIP", verdicts[cid]
        assert "not applicable" in verdicts[cid]["message"] and "no annotations" in verdicts[cid]["message"], verdicts[cid]
        assert need in verdicts[cid]["message"], verdicts[cid]
    d = report["decision"]
    assert d["status"] == "INCOMPLETE" and d["failed_gating"] == [], d
    assert "suite.yaml::DICE-WT" in d["skipped_gating"], d  # the gating criterion that could not apply, by id
    assert any("skipped" in r and "DICE-WT" in r for r in d["incomplete_reasons"]), d
    assert {s["criterion_id"] for s in report["deviations"]["skipped"]} == {"DICE-WT", "SELF-ERASE"}
    assert not list((pytester.path / "out").glob("*segmenter*"))
