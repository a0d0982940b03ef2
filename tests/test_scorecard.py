"""The ScoreCard view: every criterion of every shipped suite sits on one of the seven Cs, the rules that place a
criterion (suite field, subgroup, measure) in their order, the reference-dataset card says what the data do not state,
report.json validates with the section and not with a broken one, and report.html shows the seven-C table."""

from __future__ import annotations

import copy
import html
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mriq_validate.metrics import metric_names
from mriq_validate.report import build_report, validate_report, write_report
from mriq_validate.scorecard import (METRIC_PLACEMENTS, NOT_STATED, SECTIONS, SEVEN_CS, dataset_card, placement,
                                     scorecard_section)
from mriq_validate.suite import load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "mriq_validate" / "suites").glob("*.yaml"))


def _entry(cid: str, metric: str, **extra: Any) -> dict[str, Any]:
    """A plan entry of criterion ``cid``, or with ``verdict`` PASS or FAIL the record of its evaluation."""
    e = {"item_id": f"s.yaml::{cid}", "criterion_id": cid, "level": {}, "suite": "s.yaml", "gate": True, "kind": "model",
         "requirement": "r", "hazard": None, "rationale": "x", "metric_name": metric, **extra}
    if extra.get("verdict") in ("PASS", "FAIL"):
        est = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "se": 0.05, "n": 8, "n_boot": 100, "ci_level": 0.95}
        e.update(metric={"name": metric}, value=est, compared=est, bounds={"min": 0.0, "max": None}, checked=0.5, seed=1)
    return e


def _report(entries: list[dict[str, Any]], **run: Any) -> dict[str, Any]:
    context = {"data_spec": "builtin:mni-tumour", "model": {"spec": "builtin:real", "kind": "builtin"},
               "data": {"name": "builtin:mni-tumour", "n_train": 256, "n_test": 128, "item_kind": "slices", "contrasts": ["t1", "flair"],
                        "labels": {"oedema": 2}, "provenance": {"source": "MNI ICBM152 2009a nonlinear symmetric T1 (real)",
                                                                "generator": {"sites": [{}, {}, {}]}}}}
    suite = {"name": "s", "version": "1", "path": "s.yaml", "context_of_use": "training data for a tumour segmenter", "n_criteria": 1}
    return build_report(entries, {"settings": {"seed": 0}, "suites": [suite], "contexts": [context], **run})


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_criterion_of_every_shipped_suite_maps_to_a_c(path: Path) -> None:
    for crit in load_suite(path).criteria:
        p = placement({"criterion_id": crit.id, "metric_name": crit.metric, "kind": crit.kind,
                       "by": crit.by.name if getattr(crit, "by", None) else None, "scorecard": crit.scorecard})
        assert p.c in SEVEN_CS, (path.name, crit.id, p)
        assert p.section in SECTIONS and p.reason


def test_every_registered_measure_has_a_default_place() -> None:
    assert set(metric_names()) <= set(METRIC_PLACEMENTS), sorted(set(metric_names()) - set(METRIC_PLACEMENTS))
    assert {p.c for p in METRIC_PLACEMENTS.values()} <= set(SEVEN_CS)
    assert METRIC_PLACEMENTS["constraint_violation"].c == "constraint" and METRIC_PLACEMENTS["c2st_auc"].c == "congruence"
    assert METRIC_PLACEMENTS["copy_fraction"].c == "compliance" and METRIC_PLACEMENTS["dice"].section == "task_based_evaluation"


def test_the_rules_in_their_order() -> None:
    assert placement(_entry("A", "fid")).c == "congruence"
    by = placement(_entry("B", "dice", by="site"))
    assert (by.c, by.section, by.source) == ("consistency", "task_based_evaluation", "subgroup") and "site" in by.reason
    assert placement(_entry("C", "dice", by={"name": "lesion_size", "min_items": 20})).c == "consistency"
    suite = placement(_entry("D", "dice", by="site", scorecard="constraint"))
    assert (suite.c, suite.source) == ("constraint", "suite")  # the suite's own field wins
    unknown = placement(_entry("E", "no_such_measure"))
    assert unknown.c is None and unknown.source == "unmapped" and "scorecard:" in unknown.reason
    check = placement(_entry("F", "piqe", kind="sensitivity"))
    assert (check.c, check.section) == ("congruence", "ethics_limitations") and "self-check" in check.reason


def test_the_section_covers_cs_sections_and_says_what_is_out_of_scope() -> None:
    entries = [_entry("DICE", "dice", verdict="FAIL"), _entry("COPY", "copy_fraction", verdict="PASS", gate=False),
               _entry("SENS", "piqe", kind="sensitivity", verdict="PASS")]
    report = _report(entries, planned={e["item_id"]: e for e in entries},
                     deselected=[_entry("FID", "fid", gate=False)])
    validate_report(json.loads(json.dumps(report, default=str)))
    sc = report["scorecard"]
    cs = {c["name"]: c for c in sc["cs"]}
    assert list(cs) == list(SEVEN_CS) and [s["key"] for s in sc["sections"]] == list(SECTIONS)
    assert cs["congruence"]["covered"] and cs["congruence"]["gating"] == ["DICE"] and cs["congruence"]["criteria"] == ["DICE", "FID"]
    assert cs["congruence"]["evaluated"] == ["DICE"]  # FID was not selected
    assert cs["compliance"]["criteria"] == ["COPY"] and not cs["constraint"]["covered"] and cs["constraint"]["note"]
    assert "SENS" not in cs["congruence"]["criteria"]  # a self-check judges the tool, not the data
    rows = {c["criterion_id"]: c for c in sc["criteria"]}
    assert rows["FID"]["verdicts"] == ["NOT SELECTED"] and rows["SENS"]["section"] == "ethics_limitations"
    sections = {s["key"]: s for s in sc["sections"]}
    assert sections["human_evaluation"]["status"] == "not covered"
    assert sections["task_based_evaluation"]["criteria"] == ["DICE"]
    assert sections["dataset_usage"]["content"]["context_of_use"][0]["text"].startswith("training data")
    assert sections["generation_process"]["content"]["models"][0]["spec"] == "builtin:real"
    topics = {o["topic"] for o in sc["out_of_scope"]}
    assert {"human evaluation", "privacy beyond memorisation"} <= topics


def test_the_reference_dataset_card_says_what_the_data_do_not_state() -> None:
    card = dataset_card({"data_spec": "x", "data": {"name": "nifti:/d", "n_train": 10, "n_test": 5, "item_kind": "volumes",
                                                    "provenance": {"source": "NIfTI folder /d (BraTS 2021, 15 cases)"}}})
    assert card["cases"] == 15 and card["split_sizes"] == {"train": 10, "test": 5, "unit": "volumes"}
    assert card["licence"] == card["sites"] == card["preprocessing"] == card["contrasts"] == NOT_STATED
    mni = dataset_card(_report([])["provenance"]["contexts"][0])
    assert mni["licence"].startswith("the MNI ICBM152 2009a template: Copyright (C) 1993-2009 Louis Collins")
    assert mni["sites"].startswith("3 simulated acquisition sites")


def test_a_broken_scorecard_fails_the_schema() -> None:
    report = json.loads(json.dumps(_report([_entry("DICE", "dice", verdict="PASS")]), default=str))
    validate_report(report)
    breakages = [
        lambda sc: sc["criteria"][0].update(c="beauty"),  # not one of the seven Cs
        lambda sc: sc["cs"].pop(),  # six Cs
        lambda sc: sc["sections"][0].update(key="marketing"),
        lambda sc: sc["sections"][3].pop("status"),
        lambda sc: sc.update(extra=1),
        lambda sc: sc["out_of_scope"].append({"topic": "x"}),
    ]
    for breakage in breakages:
        broken = copy.deepcopy(report)
        breakage(broken["scorecard"])
        with pytest.raises(jsonschema.ValidationError):
            validate_report(broken)


def test_a_suite_may_place_a_criterion_and_is_checked(tmp_path: Path) -> None:
    from mriq_validate.errors import SuiteError

    text = ("mriq_suite:\n  name: s\n  context_of_use: c\n  criteria:\n    - id: A\n      requirement: r\n      rationale: r\n"
            "      metric: brain_intensity\n      scorecard: {c}\n      threshold: {{min: 0.5}}\n")
    (tmp_path / "ok.yaml").write_text(text.format(c="constraint"))
    assert load_suite(tmp_path / "ok.yaml").criteria[0].scorecard == "constraint"
    (tmp_path / "bad.yaml").write_text(text.format(c="beauty"))
    with pytest.raises(SuiteError, match="scorecard"):
        load_suite(tmp_path / "bad.yaml")


def test_report_html_shows_the_seven_cs(tmp_path: Path) -> None:
    write_report(_report([_entry("DICE", "dice", verdict="FAIL")]), tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "ScoreCard view (7 Cs)" in page and "The seven Cs" in page and "The eight sections" in page
    assert all(f"<b>{c.capitalize()}</b>" in page for c in SEVEN_CS)
    assert all(html.escape(title) in page for title in SECTIONS.values())
    assert "not stated by the suite" in page and "privacy beyond memorisation" in page
