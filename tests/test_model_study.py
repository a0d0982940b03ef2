"""The study's second axis (mriq_validate.study.models): goodness orientation, the two-level rank bootstrap, the
per-model decisions, and the refusals (too few models, a missing utility, a folder without reports)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mriq_validate.study.models import (ModelRun, ModelStudy, ModelStudyError, agreement_label, clearance, goodness, markdown,
                                        rank_agreement, read_model_runs, study_models, write_outputs)


def _result(cid: str, compared: float, *, se: float = 0.001, higher: bool = True, gate: bool = True, bounds=None,
            relative: str = "difference", verdict: str = "PASS", per_contrast=None) -> dict:
    return {"item_id": f"suite.yaml::{cid}", "criterion_id": cid, "level": {}, "kind": "model", "gate": gate, "verdict": verdict,
            "higher_is_better": higher, "metric": {"name": cid.lower()}, "threshold": {"relative": relative},
            "bounds": bounds or {"min": -1.0, "max": None}, "per_contrast": per_contrast,
            "compared": {"value": compared, "se": se, "ci_low": compared - 2 * se, "ci_high": compared + 2 * se}}


def _run(label: str, tstr: float, dice: float, fid: float, status: str = "CLEARED") -> ModelRun:
    results = [_result("DICE-TSTR-WT", tstr), _result("DICE-WT", dice),
               _result("DIST-FID", fid, higher=False, gate=False, bounds={"min": None, "max": 3.0})]
    failed = [r["item_id"] for r in results if r["verdict"] == "FAIL" and r["gate"]]
    fam = label.split("/")[0]
    return ModelRun(label, fam, None, {"decision": {"status": status, "failed_gating": failed}, "results": results})


def test_goodness_is_signed_so_that_higher_is_better() -> None:
    assert goodness(_result("A", -0.2, higher=True))[0] == pytest.approx(-0.2)
    assert goodness(_result("B", 5.0, higher=False))[0] == pytest.approx(-5.0)
    # two-sided ratio: minus the log distance from 1, the same for a factor 2 up or down
    two = {"min": 0.7, "max": 1.4}
    up, down = goodness(_result("C", 2.0, bounds=two, relative="ratio")), goodness(_result("C", 0.5, bounds=two, relative="ratio"))
    assert up[0] == pytest.approx(down[0]) == pytest.approx(-math.log(2))
    # per-contrast items: the mean over contrasts, not the one contrast the message shows
    pc = {"t1": {"compared": {"value": 1.0, "se": 0.1}}, "t2": {"compared": {"value": 3.0, "se": 0.1}}}
    g, se = goodness(_result("D", 3.0, higher=False, per_contrast=pc))
    assert g == pytest.approx(-2.0) and se == pytest.approx(math.sqrt(0.02) / 2)


def test_rank_agreement_sees_agreement_reversal_and_noise() -> None:
    x = np.arange(8, dtype=float)
    small = np.full(8, 1e-3)
    agree = rank_agreement(x, small, 2 * x, small, np.random.default_rng(0), n_boot=400)
    assert agree["spearman"] == pytest.approx(1.0) and agree["kendall"] == pytest.approx(1.0)
    assert agreement_label(agree["spearman_ci_low"], agree["spearman_ci_high"]) == "orders as utility"
    rev = rank_agreement(x, small, -x, small, np.random.default_rng(0), n_boot=400)
    assert agreement_label(rev["spearman_ci_low"], rev["spearman_ci_high"]) == "reversed"
    # the same ordering, but each value's SE over images dwarfs the spread across models: no evidence either way
    noisy = rank_agreement(x, np.full(8, 50.0), 2 * x, np.full(8, 50.0), np.random.default_rng(0), n_boot=400)
    assert noisy["spearman"] == pytest.approx(1.0)
    assert agreement_label(noisy["spearman_ci_low"], noisy["spearman_ci_high"]) == "no evidence"


def test_study_models_orders_measures_and_records_decisions(tmp_path: Path) -> None:
    # FID falls as utility rises (a measure where lower is better that agrees with utility): positive agreement
    runs = [_run(f"fam{i % 2}/m{i}", tstr=-0.1 + 0.02 * i, dice=-0.2 + 0.03 * i, fid=10.0 - i) for i in range(6)]
    study = study_models(runs, seed=1, n_boot=300)
    by = {(c["measure"], c["utility"]): c for c in study.correlations}
    assert by[("DIST-FID", "tstr")]["spearman"] == pytest.approx(1.0)
    assert by[("DIST-FID", "tstr")]["label"] == "orders as utility"
    assert by[("DICE-WT", "tstr")]["spearman"] == pytest.approx(1.0)
    assert ("DICE-TSTR-WT", "tstr") not in by  # a utility is not correlated with itself
    assert [m["status"] for m in study.models] == ["CLEARED"] * 6
    paths = write_outputs(study, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["seed"] == 1 and len(saved["models"]) == 6
    assert "DIST-FID" in paths["md"].read_text() and paths["png"].read_bytes()[:4] == b"\x89PNG"
    again = study_models(runs, seed=1, n_boot=300)
    assert again.correlations == study.correlations  # seeded: the same CIs on a rerun


def test_study_models_refuses_too_few_models_and_a_missing_utility() -> None:
    runs = [_run(f"f/m{i}", -0.1 * i, -0.1 * i, float(i)) for i in range(3)]
    with pytest.raises(ModelStudyError, match="at least 4"):
        study_models(runs)
    runs = [_run(f"f/m{i}", -0.1 * i, -0.1 * i, float(i)) for i in range(4)]
    with pytest.raises(ModelStudyError, match="DICE-TSTR-XX"):
        study_models(runs, utilities={"tstr": "DICE-TSTR-XX"})


def test_read_model_runs_names_a_folder_without_reports(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelStudyError, match="empty: no report.json"):
        read_model_runs([tmp_path / "empty"])


def test_clearance_counts_false_alarms_and_misses_under_each_rule() -> None:
    """Within the clinical tolerance (-0.05) but beyond the tight noise bound (-0.006): a false alarm of the noise bound
    alone, not of the gate's rule; clearly worse and passed: a miss."""
    th = {"relative": "difference", "tolerance": {"min": -0.05}, "noise_bounds": {"min": -0.006}}

    def item(value: float, verdict: str) -> dict:
        r = _result("DICE-TSTR-WT", value, se=0.005, verdict=verdict)
        r["threshold"] = th
        return r

    items = [item(-0.02, "PASS"), item(-0.001, "PASS"), item(-0.2, "FAIL"), item(-0.048, "PASS"), item(-0.09, "PASS")]
    models = [{"label": f"m{i}", "status": "CLEARED" if it["verdict"] == "PASS" else "NOT CLEARED",
               "failed_gating": [] if it["verdict"] == "PASS" else ["DICE-TSTR-WT"]} for i, it in enumerate(items)]
    c = clearance(items, models)
    assert [r["class"] for r in c["models"]] == ["within tolerance", "within tolerance", "clearly worse", "within tolerance",
                                                 "clearly worse"]
    assert c["rules"]["gate"] == {"false_alarms": [], "misses": ["m4"]}
    assert c["rules"]["noise bound alone"] == {"false_alarms": ["m0", "m3"], "misses": []}
    study = ModelStudy([], [], [], 0, 0, {"tstr": "DICE-TSTR-WT"}, c)
    text = markdown(study, ("clearance",))
    assert "false alarms 2/3 (m0, m3)" in text and "misses 1/2 (m4)" in text


def test_the_generated_zoo_tables_in_the_docs_equal_their_json() -> None:
    """docs/zoo.md carries the tables `make zoo` generated from docs/zoo.json, unedited (its block ``zoo``, read with
    docs/generate/render.py like every generated block)."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("mriq_docs_render", root / "docs" / "generate" / "render.py")
    render = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = render
    spec.loader.exec_module(render)
    sys.path.insert(0, str(root / "examples" / "zoo"))
    try:
        spec = importlib.util.spec_from_file_location("mriq_zoo_run", root / "examples" / "zoo" / "run_zoo.py")
        run_zoo = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = run_zoo
        spec.loader.exec_module(run_zoo)
    finally:
        sys.path.remove(str(root / "examples" / "zoo"))
    study = json.loads((root / "docs" / "zoo.json").read_text())
    for doc in run_zoo.DOC_TABLES:
        assert render.block((root / doc).read_text(), "zoo") == run_zoo.render_block(doc, study), f"{doc} differs from docs/zoo.json: run make zoo"
