"""The metric study (``mriq-validate study``), threshold calibration (``mriq-validate calibrate``) and the vessel suite."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mriq_validate.calibrate import calibrate_suite
from mriq_validate.cli import main
from mriq_validate.study import CORR_COLUMNS, MEMO_COLUMNS, SENS_COLUMNS, TRUE_QUALITY, StudyConfig, run_study, write_outputs
from mriq_validate.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--quick", "--out", str(out), "--seed", "3", "--cache", str(cache_dir)]) == 0
    return out


@pytest.mark.heavy
@pytest.mark.xdist_group("quick_study")  # one worker computes the module's quick study
def test_quick_study_writes_every_output(quick_out: Path) -> None:
    for name in ("sensitivity.csv", "correlation.csv", "memorisation.csv", "study.json", "study.html", "study.md"):
        assert (quick_out / name).is_file(), name
    sens = _rows(quick_out / "sensitivity.csv")
    assert list(sens[0]) == SENS_COLUMNS
    assert {"dice", "piqe", "fid", "copy_fraction"} <= {r["measure"] for r in sens}
    conds = {r["condition"] for r in sens}
    assert {"gaussian@0.01", "boundary_blur@4", "external_duplication@0.45", "model:real", "model:memoriser"} <= conds
    corr = _rows(quick_out / "correlation.csv")
    assert list(corr[0]) == CORR_COLUMNS and "dice" not in {r["measure"] for r in corr}
    for r in corr:
        assert -1 <= float(r["spearman_ci_low"]) <= float(r["spearman"]) + 1e-9 <= float(r["spearman_ci_high"]) + 2e-9 <= 1 + 2e-9
    memo = _rows(quick_out / "memorisation.csv")
    assert list(memo[0]) == MEMO_COLUMNS
    # copying training images is exactly what copy_fraction must see
    cf = next(r for r in memo if r["measure"] == "copy_fraction" and r["duplication"] == "external_duplication")
    assert cf["verdict"].startswith("worsens")
    doc = json.loads((quick_out / "study.json").read_text())
    assert doc["provenance"]["seed"] == 3 and doc["provenance"]["data_digests"] and doc["provenance"]["packages"]
    assert {"global_noise", "localised_edits", "duplication"} <= set(doc["findings"])
    html = (quick_out / "study.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<img" in html
    assert "Against the paper" in (quick_out / "study.md").read_text()
    # the clean real images themselves (the builtin:real stand-in) do not move any measure
    for r in sens:
        if r["condition"] == "model:real":
            assert r["detected"] == "False", r


@pytest.mark.heavy
@pytest.mark.xdist_group("quick_study")
def test_sensitivity_rule(quick_out: Path) -> None:
    for r in _rows(quick_out / "sensitivity.csv"):
        worse, se = float(r["worse"]), float(r["se"])
        if se > 0:
            assert math.isclose(float(r["z"]), worse / se, rel_tol=1e-6, abs_tol=1e-9)
            assert (r["detected"] == "True") == (worse > 3 * se)


@pytest.mark.heavy
def test_study_is_deterministic(tmp_path: Path, cache_dir: Path) -> None:
    cfg = dict(seed=5, cache_dir=str(cache_dir), quick=True, measures=["dice", "piqe"],
               perturbations=["gaussian", "internal_duplication"], models=["real"])
    outs = []
    for k in range(2):
        res = run_study(StudyConfig(**cfg))
        write_outputs(res, tmp_path / str(k))
        outs.append(tmp_path / str(k))
    for name in ("sensitivity.csv", "correlation.csv", "memorisation.csv"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_true_quality_is_ordinal_with_reasons() -> None:
    from mriq_validate.models import BUILTIN_MODELS

    assert set(TRUE_QUALITY) == set(BUILTIN_MODELS)
    assert TRUE_QUALITY["real"][0] == 0 and all(v[0] > 0 and v[1] for k, v in TRUE_QUALITY.items() if k != "real")


CAL_SUITE = """
mriq_suite:
  name: cal-test
  context_of_use: test
  data: {default: builtin:mni-tumour}
  criteria:
    - id: PIQE-DIFF
      requirement: PIQE not worse than real by more than 3 SE.
      rationale: noise floor
      gate: false
      metric: piqe
      threshold: {max: 3, relative: difference, unit: se}
    - id: DICE-BLUR
      kind: sensitivity
      requirement: Dice detects a blurred border.
      rationale: noise floor
      metric: dice
      params: {region: whole_tumour}
      perturbation: {name: boundary_blur, sigma: [1.0, 2.0]}
      threshold: {min: 3, unit: se}
    - id: DICE-ABS
      requirement: Dice at least 0.5.
      rationale: clinical
      metric: dice
      params: {region: whole_tumour}
      threshold: {min: 0.5}
"""


def test_calibrate_writes_k_times_spread(tmp_path: Path, cache_dir: Path) -> None:
    """The bound is k × the bootstrap SE of the real-test mean, recomputed here with numpy alone from the per-image scores
    on calibrate's seeded stream, and that SE is the analytic SE of a mean, sd / sqrt(n), within 3 of its own SDs."""
    from mriq_validate.metrics import create_metric
    from mriq_validate.seeding import rng_for
    from mriq_validate.session import RunContext, RunSettings

    src, out = tmp_path / "s.yaml", tmp_path / "calibrated.yaml"
    src.write_text(CAL_SUITE, encoding="utf-8")
    changes = calibrate_suite(src, out, k=2.5, seed=0, cache_dir=str(cache_dir), n_boot=200)
    assert [c["criterion"] for c in changes] == ["PIQE-DIFF", "DICE-BLUR"]
    new = {c.id: c for c in load_suite(out).criteria}
    ctx = RunContext(RunSettings(model=None, data="builtin:mni-tumour", seed=0, device="cpu", cache_dir=str(cache_dir)), "builtin:mni-tumour")
    for cid, params in (("PIQE-DIFF", {}), ("DICE-BLUR", {"region": "whole_tumour"})):
        m = create_metric(new[cid].metric, params)
        scores = ctx.prepare(m, ctx.real("test"))  # piqe and dice are per-image: the set value is the mean score
        n = scores.size
        rows = rng_for(0, "study", "noise-floor", m.name).integers(0, n, size=(200, n))
        se = float(scores[rows].mean(axis=1).std(ddof=1))
        # an SD from 200 resamples has a relative SD of 1/sqrt(2 * 199) = 5 %
        assert se == pytest.approx(scores.std() / math.sqrt(n), rel=3 / math.sqrt(2 * 199))
        th = new[cid].threshold
        assert th.unit == "absolute"
        bound = th.max if cid == "PIQE-DIFF" else th.min
        assert bound == pytest.approx(2.5 * se, rel=1e-9)
        assert f"{se:.4g}" in new[cid].rationale and "k = 2.5" in new[cid].rationale
    assert new["DICE-BLUR"].perturbation.levels() == [{"sigma": 1.0}, {"sigma": 2.0}]
    assert new["DICE-ABS"].threshold.min == 0.5 and new["DICE-ABS"].rationale == "clinical"


def test_vessel_suite_loads_with_rationales() -> None:
    suite = load_suite(ROOT / "suites" / "vessels.yaml")
    assert suite.data.default == "builtin:mni-vessel"
    ids = {c.id for c in suite.criteria}
    assert {"DICE-VESSEL", "SELF-DICE-BREAK", "SELF-DICE-PRUNE", "MEM-COPY"} <= ids
    for c in suite.criteria:
        assert c.rationale.strip() and c.requirement.strip()
        if c.gate and c.kind == "model":
            assert c.hazard and c.hazard.strip()
    perts = {c.perturbation.name for c in suite.criteria if c.perturbation}
    assert {"vessel_break", "vessel_prune"} <= perts
    assert any(c.metric == "dice" and c.params.get("region") == "vessel" and c.gate for c in suite.criteria)


def test_calibrate_criterion_rule_and_direction() -> None:
    from mriq_validate.calibrate import calibrate_criterion
    from mriq_validate.suite import Criterion

    dice = Criterion.model_validate({"id": "D", "requirement": "r", "rationale": "old", "metric": "dice",
                                     "threshold": {"min": -0.05, "relative": "difference"}})
    m = {"spread": 0.004, "kind": "seed-to-seed SD", "baseline": 0.97, "se": 0.0005, "seed_sd": 0.004, "higher_is_better": True}
    new, change = calibrate_criterion(dice, m, 3.0, "builtin:x", 0)
    assert new.threshold.min == pytest.approx(-0.012) and new.threshold.max is None and new.threshold.unit == "absolute"
    assert "0.004" in new.rationale and "old" in new.rationale and change["bound"] == "min"
    piqe = Criterion.model_validate({"id": "P", "requirement": "r", "rationale": "old", "metric": "piqe",
                                     "threshold": {"max": 3, "relative": "difference", "unit": "se"}})
    new, _ = calibrate_criterion(piqe, {**m, "spread": 0.5, "higher_is_better": False}, 2.0, "builtin:x", 0)
    assert new.threshold.max == pytest.approx(1.0) and new.threshold.min is None


def test_calibrate_keeps_seed_sd_criteria_in_seed_sds() -> None:
    """A train-on-synthetic bound stays in seed SDs, so the gate still widens it for the SD's own uncertainty."""
    from mriq_validate.calibrate import calibrate_criterion
    from mriq_validate.suite import Criterion

    tstr = Criterion.model_validate({"id": "T", "requirement": "r", "rationale": "old", "metric": "dice_tstr",
                                     "condition_on": "train_masks",
                                     "threshold": {"min": -3, "relative": "difference", "unit": "seed_sd"}})
    m = {"spread": 0.0158, "kind": "seed-to-seed SD", "baseline": 0.77, "se": 0.01, "seed_sd": 0.0158, "higher_is_better": True}
    new, change = calibrate_criterion(tstr, m, 2.5, "builtin:x", 0)
    assert new.threshold.unit == "seed_sd" and new.threshold.min == -2.5 and change["new"] == -2.5
    assert "2.5 seed-to-seed SDs" in new.rationale and "3.85%" in new.rationale  # Phi(-2.5 / sqrt(2)) = 0.0385
