"""The evidence report: report.json against its schema, the self-contained report.html, determinism, pytest-xdist
merging, and INCOMPLETE reports for interrupted or failing runs."""

from __future__ import annotations

import hashlib
import html
import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from mriq_validate.decision import decision
from mriq_validate.integrity import report_schema, validate_report
from mriq_validate.report import VOLATILE_FIELDS, build_report, strip_volatile, write_report

SUITE = textwrap.dedent(
    """\
    mriq_suite:
      name: report-test
      version: "2"
      description: A small suite for the report tests.
      context_of_use: Synthetic T1 slices with tumours used to train a tumour segmenter (report tests).
      criteria:
        - id: DICE-WT
          requirement: whole-tumour Dice on generated images is at most 0.05 below real
          hazard: missed tumours
          rationale: test threshold
          metric: dice
          n_boot: 200
          params: {region: whole_tumour}
          threshold: {min: -0.05, relative: difference}
        - id: DICE-ET
          requirement: enhancing-tumour Dice on generated images is at most 0.1 below real
          hazard: wrong enhancing rim
          rationale: test threshold
          metric: dice
          n_boot: 200
          params: {region: enhancing_tumour}
          threshold: {min: -0.1, relative: difference}
        - id: SELF-PIQE-RICIAN
          requirement: PIQE worsens under Rician noise
          rationale: known answer for the measure
          kind: sensitivity
          gate: false
          metric: piqe
          n_boot: 100
          perturbation: {name: rician, sigma: [0.0, 0.1]}
          threshold: {min: 0.5}
    """
)
ITEMS = ["suite.yaml::DICE-WT", "suite.yaml::DICE-ET", "suite.yaml::SELF-PIQE-RICIAN[sigma=0.0]", "suite.yaml::SELF-PIQE-RICIAN[sigma=0.1]"]
RESOURCE_RE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def load(pytester: pytest.Pytester, folder: str = "out") -> dict[str, Any]:
    return json.loads((pytester.path / folder / "report.json").read_text())


def test_report_json_follows_the_schema_and_html_is_self_contained(pytester: pytest.Pytester,
                                                                   run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    result = run_plugin("--mriq-model=builtin:tumour-eraser", "--mriq-report=out", "--mriq-threshold=DICE-ET.min=-1")
    result.assert_outcomes(failed=1, passed=3)
    result.stdout.fnmatch_lines(["*release decision: NOT CLEARED (failing gates: suite.yaml::DICE-WT)*", "*report: *report.json*report.html*"])
    out = pytester.path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["perturbations-mni-tumour.png", "report.html", "report.json"]
    report = load(pytester)

    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validate_report(report)

    d = report["decision"]
    assert d["status"] == "NOT CLEARED" and d["complete"] and d["failed_gating"] == ["suite.yaml::DICE-WT"]
    assert d["counts"] == {"PASS": 2, "FAIL": 2, "ERROR": 0, "SKIP": 0, "NOT RUN": 0}
    assert [r["item_id"] for r in report["results"]] == ITEMS  # suite order, sweep levels in order
    (suite,) = report["suites"]
    assert suite["context_of_use"].startswith("Synthetic T1 slices") and suite["version"] == "2"
    assert suite["sha256"] == hashlib.sha256((pytester.path / "suite.yaml").read_bytes()).hexdigest()
    assert set(suite["git"]) == {"commit", "dirty"}
    (override,) = report["deviations"]["threshold_overrides"]
    assert override["criterion"] == "DICE-ET" and override["value"] == -1.0 and override["source"] == "--mriq-threshold"
    assert set(report["limitations"]["measures"]) == {"dice", "piqe"}
    assert any("Deo et al. 2025" in n for n in report["limitations"]["measures"]["piqe"])
    statements = {s["item_id"]: s for s in report["limitations"]["sensitivity"]}
    assert statements["suite.yaml::SELF-PIQE-RICIAN[sigma=0.1]"]["detected"] is True
    assert statements["suite.yaml::SELF-PIQE-RICIAN[sigma=0.1]"]["statement"].startswith("piqe detects rician (sigma=0.1)")
    assert statements["suite.yaml::SELF-PIQE-RICIAN[sigma=0.0]"]["statement"].startswith("piqe does not detect rician (sigma=0.0)")
    assert [c["item_id"] for c in report["self_check"]["criteria"]] == ITEMS[2:]
    assert report["self_check"]["known_answer_tests"]
    prov = report["provenance"]
    assert {"mriq-validate", "torch", "monai", "pyiqa", "numpy"} <= set(prov["packages"])
    (ctx,) = prov["contexts"]
    assert set(ctx["data"]["digests"]) >= {"train", "test"} and ctx["model"]["spec"] == "builtin:tumour-eraser"
    assert prov["seed"] == 0 and len(prov["devices"]) == 1 and prov["devices"][0] in ("cpu", "cuda", "cuda:0")
    wt = report["results"][0]
    assert wt["verdict"] == "FAIL" and wt["metric"]["name"] == "dice" and wt["compared"]["n_boot"] == 200
    assert wt["requirement"].startswith("whole-tumour Dice") and wt["hazard"] == "missed tumours" and wt["suite_line"] == SUITE.splitlines().index("    - id: DICE-WT") + 1

    page = (out / "report.html").read_text()
    assert not RESOURCE_RE.search(page), RESOURCE_RE.search(page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "NOT CLEARED" in page and "Context of use" in page and "report-test" in page
    # criteria vs thresholds, dose-response, the real-vs-generated sample grid filled from the run, and the worst-case
    # gallery of the two gating Dice criteria
    assert page.count('<img src="data:image/png;base64,') == 5 and "Samples: real vs generated" in page
    assert "DICE-WT: the 8 worst items by dice" in page and "ScoreCard view (7 Cs)" in page
    for item_id in ITEMS:
        assert f"<td class='mono'>{html.escape(item_id)}</td>" in page
    for text in ("missed tumours", "does not detect rician", "Known-answer tests", "--mriq-threshold", "Deo et al. 2025"):
        assert html.escape(text) in page, text


@pytest.mark.heavy
def test_same_command_gives_the_same_report_also_under_xdist(pytester: pytest.Pytester,
                                                             run_plugin: Callable[..., pytest.RunResult]) -> None:
    """Two serial runs give the same report but for the volatile fields; a pytest-xdist run (-n 2) gives one
    merged report, written by the controller, with the same content (only the process layout differs)."""
    pytester.makefile(".yaml", suite=SUITE)
    run_plugin("--mriq-model=builtin:tumour-eraser", "--mriq-report=a").assert_outcomes(failed=2, passed=2)
    run_plugin("--mriq-model=builtin:tumour-eraser", "--mriq-report=b").assert_outcomes(failed=2, passed=2)
    a, b = load(pytester, "a"), load(pytester, "b")
    assert a["decision"]["status"] == "NOT CLEARED"
    assert a["run"]["command_line"] != b["run"]["command_line"]  # the report folder differs ...
    assert all(r["duration_s"] is not None for r in a["results"])
    assert strip_volatile(a) == strip_volatile(b)  # ... and nothing else does
    assert "run.started" in VOLATILE_FIELDS and "results.*.duration_s" in VOLATILE_FIELDS
    assert "started" not in strip_volatile(a)["run"] and "duration_s" not in strip_volatile(a)["results"][0]

    result = run_plugin("--mriq-model=builtin:tumour-eraser", "--mriq-report=xdist", "-n", "2")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(["*2 workers*", "*release decision: NOT CLEARED*"])
    assert result.stdout.str().count("release decision:") == 1
    assert sorted(p.name for p in (pytester.path / "xdist").iterdir()) == ["perturbations-mni-tumour.png", "report.html", "report.json"]
    merged = load(pytester, "xdist")
    validate_report(merged)
    assert merged["run"]["xdist_workers"] == 2 and a["run"]["xdist_workers"] == 0
    assert {r["item_id"]: r["verdict"] for r in merged["results"]} == {r["item_id"]: r["verdict"] for r in a["results"]}
    # auto training processes are the usable cores over the xdist workers: recorded per run, the same trainings
    strip = [*VOLATILE_FIELDS, "run.xdist_workers", "provenance.contexts.*.training_processes"]
    assert strip_volatile(merged, strip) == strip_volatile(a, strip)


def _assert_incomplete(report: dict[str, Any], page: str, ran: list[str], reason: str) -> None:
    validate_report(report)
    d = report["decision"]
    assert d["status"] == "INCOMPLETE" and not d["complete"]
    assert reason in (d["interruption"] or ""), d
    assert [r["item_id"] for r in report["results"]] == ran
    assert d["not_run"] == [i for i in ITEMS if i not in ran]
    assert "INCOMPLETE" in page and ("NOT RUN" in page or not d["not_run"])


def test_exitfirst_after_a_failure_is_reported_incomplete(pytester: pytest.Pytester, run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    result = run_plugin("--mriq-model=builtin:tumour-eraser", "--mriq-report=out", "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["NOT RUN*DICE-ET*", "*release decision: INCOMPLETE (failing gates: suite.yaml::DICE-WT)*"])
    report = load(pytester)
    _assert_incomplete(report, (pytester.path / "out" / "report.html").read_text(), ITEMS[:1], "stopping after 1 failures")
    assert report["decision"]["failed_gating"] == ["suite.yaml::DICE-WT"]
    assert "cannot be cleared" in report["decision"]["summary"]


def test_keyboard_interrupt_is_reported_incomplete(pytester: pytest.Pytester, run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    pytester.makeconftest("def pytest_runtest_teardown(item):\n    if item.name == 'DICE-WT':\n        raise KeyboardInterrupt\n")
    result = run_plugin("--mriq-model=builtin:real", "--mriq-report=out", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = load(pytester)
    _assert_incomplete(report, (pytester.path / "out" / "report.html").read_text(), ITEMS[:1], "KeyboardInterrupt")
    assert report["results"][0]["verdict"] == "PASS" and report["run"]["exit_status"] == int(pytest.ExitCode.INTERRUPTED)


def test_collection_error_in_one_suite_is_reported_incomplete(pytester: pytest.Pytester,
                                                              run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE, broken=SUITE.replace("metric: piqe", "metric: piqee").replace("report-test", "broken"))
    result = run_plugin("--mriq-model=builtin:real", "--mriq-report=out")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = load(pytester)
    _assert_incomplete(report, (pytester.path / "out" / "report.html").read_text(), [], "error during collection")
    (err,) = report["deviations"]["collection_errors"]
    assert err["node_id"] == "broken.yaml" and err["suite_file"] and "unknown metric 'piqee'" in err["message"]
    assert [s["name"] for s in report["suites"]] == ["report-test"]


# ---------------------------------------------------------------------------------- without pytester (fast)


def _record(item: str, verdict: str, gate: bool = True, **extra: Any) -> dict[str, Any]:
    cid = item.split("::")[-1].split("[")[0]
    return {"item_id": item, "criterion_id": cid, "level": {}, "suite": "s.yaml", "gate": gate, "kind": "model",
            "requirement": "r", "hazard": None, "rationale": "x", "verdict": verdict, "message": "m", **extra}


@pytest.mark.parametrize(
    "verdicts, kwargs, status",
    [
        ([("PASS", True), ("FAIL", False)], {}, "CLEARED"),
        ([("PASS", True), ("FAIL", True)], {}, "NOT CLEARED"),
        ([("PASS", True), ("ERROR", False)], {}, "INCOMPLETE"),
        ([("SKIP", True)], {}, "INCOMPLETE"),
        ([("FAIL", False)], {}, "INCOMPLETE"),  # no gating criterion
        ([("PASS", True)], {"interruption": "KeyboardInterrupt"}, "INCOMPLETE"),
        ([("PASS", True)], {"not_run": [{"item_id": "s::B", "criterion_id": "B", "gate": False}]}, "INCOMPLETE"),
        ([("PASS", True)], {"deselected": [{"item_id": "s::B", "criterion_id": "B", "gate": True}]}, "INCOMPLETE"),
        ([("PASS", True)], {"deselected": [{"item_id": "s::B", "criterion_id": "B", "gate": False}]}, "CLEARED"),
    ],
)
def test_decision_rules(verdicts: list[tuple[str, bool]], kwargs: dict[str, Any], status: str) -> None:
    results = [_record(f"s::C{i}", v, g) for i, (v, g) in enumerate(verdicts)]
    d = decision(results, **kwargs)
    assert d["status"] == status and d["complete"] == (status != "INCOMPLETE")


def _estimate(v: float) -> dict[str, Any]:
    return {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "se": 0.05, "n": 8, "n_boot": 100, "ci_level": 0.95}


def test_sample_grid_is_optional_and_nan_is_written_as_null(tmp_path: Path) -> None:
    evaluated = {"metric": {"name": "dice", "region": "whole_tumour"}, "value": _estimate(0.7), "baseline": _estimate(0.8),
                 "compared": {**_estimate(-0.1), "se": float("nan")}, "threshold": {"min": -0.05, "relative": "difference"},
                 "bounds": {"min": -0.05, "max": None}, "checked": -0.1, "seed": 1}
    results = [_record("s.yaml::DICE-WT", "FAIL", **evaluated), _record("s.yaml::X", "ERROR")]
    report = build_report(results, {"settings": {"seed": 0, "device": "cpu"}, "suites": []})
    validate_report(json.loads(json.dumps(report, default=str).replace("NaN", "null")))
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 1, 32, 32), np.int64)
    masks[:, :, 10:20, 12:22] = 1
    masks[:, :, 13:17, 14:18] = 3
    samples = {"real": rng.random((6, 1, 32, 32), np.float32), "generated": rng.random((6, 32, 32)), "masks": masks}
    write_report(report, tmp_path / "with", sample_images=samples)
    write_report(report, tmp_path / "without")
    written = json.loads((tmp_path / "with" / "report.json").read_text())
    assert written["results"][0]["compared"]["se"] is None
    validate_report(written)
    with_page, without_page = ((tmp_path / f / "report.html").read_text() for f in ("with", "without"))
    assert "Samples: real vs generated" in with_page and "Samples: real vs generated" not in without_page
    assert with_page.count('<img src="data:image/png;base64,') == 2 and without_page.count('<img src="data:image/png;base64,') == 1
    assert "NOT CLEARED" not in with_page and "INCOMPLETE" in with_page  # an ERROR makes the run incomplete


def test_a_workers_payload_merges_into_the_controllers_run() -> None:
    """What a pytest-xdist worker hands the controller (suites, plan, overrides, sample images) arrives intact, once."""
    import torch

    from mriq_validate.run_state import MriqRun
    from mriq_validate.session import RunSettings
    from mriq_validate.xdist_transport import merge_payload, worker_payload

    rng = np.random.default_rng(0)
    samples = {"real": rng.random((2, 8, 8)), "generated": torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
               "masks": rng.integers(0, 4, (2, 8, 8)), "generated_masks": None}
    entry = {"item_id": "s.yaml::A", "criterion_id": "A", "gate": True}
    worker = MriqRun(RunSettings(model="builtin:real", data=None), suites={"s.yaml": {"name": "s", "path": "s.yaml"}},
                     deviations=[{"criterion": "A", "field": "min", "value": -1.0}], planned={"s.yaml::A": entry},
                     collected={"s.yaml::A": entry, "s.yaml::B": {**entry, "item_id": "s.yaml::B"}}, criterion_ids={"A", "B"},
                     sample_images=samples)
    controller = MriqRun(RunSettings(model="builtin:real", data=None))
    payload = worker_payload(worker)
    merge_payload(controller, payload)
    merge_payload(controller, payload)  # a second worker with the same suites
    assert controller.xdist_workers == 2
    assert controller.suites == worker.suites and controller.deviations == worker.deviations  # not doubled
    assert controller.planned == worker.planned and controller.collected == worker.collected
    assert controller.criterion_ids == {"A", "B"} and controller.deselected() == [controller.collected["s.yaml::B"]]
    got = controller.sample_images
    assert got is not None and set(got) == {"real", "generated", "masks"}  # None values are not sent
    assert got["real"].dtype == np.float32 and np.array_equal(got["real"], samples["real"].astype(np.float32))
    assert got["generated"].shape == (2, 1, 8, 8) and np.array_equal(got["generated"], samples["generated"].numpy())
    assert got["masks"].dtype == samples["masks"].dtype and np.array_equal(got["masks"], samples["masks"])
