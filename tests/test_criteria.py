"""Criterion evaluation: parameters reach the perturbation, thresholds scale with their unit, seeds are per criterion."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mriq_validate.bounds import check_threshold
from mriq_validate.criteria import evaluate
from mriq_validate.session import RunContext, RunSettings
from mriq_validate.stats import Estimate
from mriq_validate.suite import Criterion, Threshold


@pytest.fixture(scope="module")
def ctx(cache_dir: Path) -> RunContext:
    return RunContext(RunSettings(model="builtin:real", data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir)),
                      "builtin:mni-tumour")


def criterion(**kw) -> Criterion:
    base = {"id": "C", "requirement": "r", "rationale": "r", "metric": "copy_fraction", "threshold": {"max": 1.0}}
    return Criterion.model_validate({**base, **kw})


def test_perturbation_parameters_without_a_sweep_are_applied(ctx: RunContext) -> None:
    crit = criterion(kind="sensitivity", metric="brain_intensity", perturbation={"name": "rician", "sigma": 0.3}, threshold={"min": -1.0})
    out = evaluate(crit, ctx)
    assert out.perturbation["params"] == {"sigma": 0.3}


def test_sweep_levels_are_applied(ctx: RunContext) -> None:
    crit = criterion(kind="sensitivity", metric="brain_intensity", perturbation={"name": "rician", "sigma": [0.01, 0.2]},
                     threshold={"min": -1.0})
    assert [evaluate(crit, ctx, lvl).perturbation["params"]["sigma"] for lvl in crit.perturbation.levels()] == [0.01, 0.2]


def test_external_duplication_is_caught_by_copy_fraction(ctx: RunContext) -> None:
    """15 % of the real test set replaced by training images: the copy share rises well above its null."""
    crit = criterion(kind="sensitivity", perturbation={"name": "external_duplication", "p": 0.15}, threshold={"min": 0.1})
    out = evaluate(crit, ctx)
    assert out.verdict == "PASS" and out.compared.ci_low > 0.05


def test_threshold_units_scale_bounds() -> None:
    est = Estimate(value=-0.2, ci_low=-0.3, ci_high=-0.1, se=0.05, n=10, n_boot=100)
    ok, checked, bounds = check_threshold(Threshold(min=-3, unit="se"), est, 0.05)
    assert not ok and checked == -0.2 and bounds["min"] == pytest.approx(-0.15)  # -3 SE of 0.05
    ok, _, bounds = check_threshold(Threshold(min=-5, unit="se"), est, 0.05)
    assert ok and bounds["min"] == pytest.approx(-0.25)
    ok, checked, _ = check_threshold(Threshold(min=-0.25, on="lower_ci"), est, 1.0)
    assert not ok and checked == -0.3


def test_a_clinical_tolerance_loosens_a_noise_bound_that_is_tighter_and_only_then() -> None:
    """The bound is the looser of the noise bound and the clinical tolerance (a non-inferiority margin)."""
    from mriq_validate.bounds import NoiseUnit, bound_sources

    est = Estimate(value=-0.024, ci_low=-0.03, ci_high=-0.018, se=0.003, n=128, n_boot=100)
    th = Threshold(min=-3, relative="difference", unit="seed_sd", tolerance={"min": -0.05})
    tight, loose = NoiseUnit("seed_sd", 0.0016, 5), NoiseUnit("seed_sd", 0.02, 5)
    assert not check_threshold(th.model_copy(update={"tolerance": None}), est, tight)[0]  # the noise bound alone fails it
    ok, _, bounds = check_threshold(th, est, tight)
    assert ok and bounds["min"] == -0.05 and bound_sources(th, tight) == {"min": "clinical tolerance"}
    ok, _, bounds = check_threshold(th, Estimate(-0.06, -0.07, -0.05, 0.005, 128, 100), loose)
    assert ok and bounds["min"] < -0.05 and bound_sources(th, loose) == {"min": "noise"}  # the noise is looser here
    assert not check_threshold(th, Estimate(-0.06, -0.07, -0.05, 0.005, 128, 100), tight)[0]


@pytest.mark.parametrize("threshold, expected", [
    ({"min": -0.05, "tolerance": {"min": -0.05}}, "goes with `unit: se` or `unit: seed_sd`"),
    ({"min": -3, "unit": "se", "tolerance": {"max": 1}}, "needs the threshold's own `max`"),
    ({"min": -3, "unit": "se", "tolerance": {}}, "`tolerance` needs `min`, `max` or both"),
])
def test_a_tolerance_that_cannot_apply_is_refused(threshold: dict, expected: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expected.replace("`", ".").replace("{", ".")):
        Threshold(**threshold)


def test_seeds_differ_per_criterion_and_repeat(ctx: RunContext) -> None:
    a, b = criterion(id="A"), criterion(id="B")
    assert evaluate(a, ctx).seed == evaluate(a, ctx).seed != evaluate(b, ctx).seed
    assert np.isfinite(evaluate(a, ctx).value.value)


def test_the_real_split_is_chosen_by_name_not_by_its_origin_text(ctx: RunContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A covariate-aware perturbation of the real split gets that split's covariates (``site``) whatever the sample's
    origin label says: relabelling the real images changes no number (it used to drop the covariates and fail)."""
    crit = criterion(kind="sensitivity", metric="piqe", perturbation={"name": "density_shift", "weight": 1.0, "site": 0},
                     threshold={"min": -100.0})
    before = evaluate(crit, ctx)
    assert before.compared.value != 0  # every slice now from site 0: the measure moved
    real = ctx.real
    monkeypatch.setattr(ctx, "real", lambda split: dataclasses.replace(real(split), origin=f"held-out {split} cohort"))
    after = evaluate(crit, ctx)
    assert after.samples["evaluated"] == "held-out test cohort + density_shift"
    assert after.compared == before.compared and after.perturbation == before.perturbation
