"""c2st_auc, the classifier two-sample test: the AUC's known answers and ties, DeLong's variance against its definition,
the CIs' coverage where both sides come from one distribution, the folds, determinism, parameters refused with their
field, and the shipped suite's two criteria on the embedded data (their band is the one docs/generate measured)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mriq_validate.errors import MetricError
from mriq_validate.metrics import Sample, create_metric
from mriq_validate.metrics.functional.detectability import (auc_of_labels, crossfit_folds, delong_ci, roc_auc,
                                                            within_fold_ranks)
from mriq_validate.stats import resample_rows, summarise

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"epochs": 4, "channels": [4, 8]}  # a classifier that trains in a fraction of a second on the toy sets below


# ----------------------------------------------------------------------------------------------- the AUC
def _pairwise(pos: np.ndarray, neg: np.ndarray) -> float:
    """The AUC from its definition: the share of (positive, negative) pairs the positive wins, ties one half."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_known_answers() -> None:
    assert roc_auc([3.0, 4.0, 5.0], [0.0, 1.0]) == 1.0  # perfectly separated
    assert roc_auc([0.0, 1.0], [3.0, 4.0, 5.0]) == 0.0  # separated the other way
    same = np.random.default_rng(0).normal(size=50)
    assert roc_auc(same, same) == 0.5  # identical sets: every pair of equal scores ties
    assert roc_auc([1.0] * 7, [1.0] * 3) == 0.5  # all tied
    assert roc_auc([0.3, 0.6], [0.3, 0.1]) == 0.875  # one tie among four pairs


def test_auc_with_ties_equals_its_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        pos, neg = rng.integers(0, 5, size=rng.integers(1, 30)).astype(float), rng.integers(0, 5, size=rng.integers(1, 30)).astype(float)
        assert roc_auc(pos, neg) == pytest.approx(_pairwise(pos, neg), abs=1e-12)


def test_auc_of_labels_and_a_resample_of_one_class() -> None:
    labels, scores = np.array([1, 1, 0, 0]), np.array([0.9, 0.2, 0.4, 0.1])
    assert auc_of_labels(labels, scores) == roc_auc([0.9, 0.2], [0.4, 0.1]) == 0.75
    assert np.isnan(auc_of_labels(np.array([1, 1]), np.array([0.1, 0.2])))  # no negative: no AUC


@pytest.mark.parametrize("pos, neg, message", [
    ([], [1.0], "the positive scores are empty"),
    ([1.0], [np.nan], "the negative scores hold 1 non-finite value"),
])
def test_auc_refuses_empty_or_non_finite_scores(pos: list[float], neg: list[float], message: str) -> None:
    with pytest.raises(MetricError, match=message):
        roc_auc(pos, neg)


def test_delong_variance_is_its_structural_components() -> None:
    """DeLong's SE from midranks equals the one from the pairwise kernel ψ (ties one half), computed directly."""
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 55).astype(float)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    ci = delong_ci(pos, neg)
    assert ci.auc == pytest.approx(psi.mean())
    assert ci.se == pytest.approx(np.sqrt(v10.var(ddof=1) / 40 + v01.var(ddof=1) / 55))
    assert ci.low == pytest.approx(ci.auc - 1.959964 * ci.se, abs=1e-6) and ci.high <= 1.0
    with pytest.raises(MetricError, match="at least 2 scores"):
        delong_ci([1.0], [0.0, 1.0])


def test_the_cis_cover_one_half_at_their_rate_when_both_sides_come_from_one_distribution() -> None:
    """200 draws of 128 + 256 scores of one distribution (the sizes of the embedded data): DeLong's 95 % CI and the gate's
    percentile bootstrap of the scores (as criteria resample the metric) each cover 0.5 in 95 % ± 4 % of them."""
    rng = np.random.default_rng(3)
    metric = create_metric("c2st_auc")
    labels = np.r_[np.ones(128), np.zeros(256)]
    delong = boot = 0
    draws = 200
    for _ in range(draws):
        scores = rng.normal(size=384)
        ci = delong_ci(scores[:128], scores[128:])
        delong += ci.low <= 0.5 <= ci.high
        prepared = np.stack([labels, scores], axis=1)
        rows = resample_rows(384, 200, rng)
        e = summarise(metric.value(prepared, np.arange(384)), np.array([metric.value(prepared, r) for r in rows]), 384)
        boot += e.ci_low <= 0.5 <= e.ci_high
    assert 0.91 <= delong / draws <= 0.99 and 0.91 <= boot / draws <= 0.99, (delong, boot)


# ----------------------------------------------------------------------------------------------- folds
def test_folds_are_stratified_seeded_and_complete() -> None:
    labels = np.r_[np.ones(13), np.zeros(30)]
    fold = crossfit_folds(labels, 3, seed=7)
    assert np.array_equal(fold, crossfit_folds(labels, 3, seed=7)) and not np.array_equal(fold, crossfit_folds(labels, 3, seed=8))
    for f in range(3):
        assert (labels[fold == f] == 1).sum() in (4, 5) and (labels[fold == f] == 0).sum() == 10
    with pytest.raises(MetricError, match=r"class 1 has 1 item\(s\), fewer than the 2 folds"):
        crossfit_folds(np.array([1, 0, 0]), 2, seed=0)


def test_within_fold_ranks_keep_each_folds_order() -> None:
    scores, fold = np.array([10.0, 30.0, 20.0, -1.0, -3.0, -2.0]), np.array([0, 0, 0, 1, 1, 1])
    ranked = within_fold_ranks(scores, fold)
    assert ranked.tolist() == pytest.approx([1 / 3, 1.0, 2 / 3, 1.0, 1 / 3, 2 / 3])


# ----------------------------------------------------------------------------------------------- the metric on toy sets
def _toy(n: int, shift: float, seed: int, shape: tuple[int, ...] = (2, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.4 + 0.1 * torch.rand(n, *shape, generator=g)
    x[..., 8:16, 8:16] += shift  # a bright square (a bar through a volume) the classifier can learn
    return x.clamp(0, 1)


def _ctx(real: torch.Tensor, seed: int = 0) -> SimpleNamespace:
    split = SimpleNamespace(images=real)
    return SimpleNamespace(data=SimpleNamespace(train=split, test=split), seed=seed, device=torch.device("cpu"),
                           progress=lambda msg: None)


def test_same_seed_same_auc_and_a_visible_difference_is_detected() -> None:
    metric = create_metric("c2st_auc", SMALL)
    real, same, brighter = _toy(40, 0.0, 0), _toy(24, 0.0, 1), _toy(24, 0.5, 2)
    a = metric.prepare(_ctx(real), Sample(brighter, None, "toy"))
    assert np.array_equal(a, metric.prepare(_ctx(real), Sample(brighter, None, "toy")))  # deterministic on CPU
    assert not np.array_equal(a[:, 1], metric.prepare(_ctx(real, seed=1), Sample(brighter, None, "toy"))[:, 1])
    assert a.shape == (64, 2) and a[:24, 0].tolist() == [1.0] * 24 and a[24:, 0].tolist() == [0.0] * 40
    assert metric.value(a, np.arange(64)) >= 0.95
    null = metric.value(metric.prepare(_ctx(real), Sample(same, None, "toy")), np.arange(64))
    assert 0.25 <= null <= 0.75, null


def test_volumes_and_the_subset_cap() -> None:
    """N×C×D×H×W volumes take the same path in 3D; a set over max_items is cut to a seeded subset of that many."""
    metric = create_metric("c2st_auc", {**SMALL, "epochs": 10, "batch_size": 4, "max_items": 12})
    vol = lambda n, shift, seed: _toy(n, shift, seed, (1, 8, 32, 32))  # noqa: E731
    p = metric.prepare(_ctx(vol(20, 0.0, 0)), Sample(vol(16, 0.5, 1), None, "toy volumes"))
    assert p.shape == (24, 2) and metric.value(p, np.arange(24)) >= 0.9


def test_a_sample_of_another_shape_or_too_few_items_is_refused() -> None:
    metric = create_metric("c2st_auc", SMALL)
    with pytest.raises(MetricError, match=r"c2st_auc': the toy images are \(2, 16, 16\) and the real train images \(2, 32, 32\)"):
        metric.prepare(_ctx(_toy(8, 0.0, 0)), Sample(_toy(8, 0.0, 1, (2, 16, 16)), None, "toy"))
    with pytest.raises(MetricError, match="needs at least 2 images"):
        metric.prepare(_ctx(_toy(8, 0.0, 0)), Sample(_toy(1, 0.0, 1), None, "toy"))


@pytest.mark.parametrize("params, message", [
    ({"reference": "validation"}, "reference must be 'train' or 'test' (the real split the images are told apart from), got 'validation'"),
    ({"folds": 1}, "folds must be an integer in [2, 10], got 1"),
    ({"epochs": 0}, "epochs must be an integer in [1, 1000], got 0"),
    ({"channels": []}, "channels must be a list of 1 to 6 integers in [1, 512] (one per convolution), got []"),
    ({"channels": [8, "16"]}, "channels must be a list of 1 to 6 integers in [1, 512] (one per convolution), got [8, '16']"),
    ({"downsample": 0}, "downsample must be an integer in [1, 16], got 0"),
    ({"lr": 0}, "lr must be a number in (0, 1], got 0"),
    ({"batch_size": 1}, "batch_size must be an integer >= 2, got 1"),
    ({"folds": 5, "max_items": 8}, "max_items must be an integer >= 10, got 8"),
    ({"epoch": 3}, "unknown parameter(s) ['epoch']"),
])
def test_bad_parameters_are_refused_naming_the_field(params: dict, message: str) -> None:
    with pytest.raises(MetricError) as err:
        create_metric("c2st_auc", params)
    assert "metric 'c2st_auc'" in str(err.value) and message in str(err.value), str(err.value)


def test_the_configuration_records_architecture_budget_split_and_seed() -> None:
    cfg = create_metric("c2st_auc").config()
    assert cfg["reference"] == "real train split" and cfg["classifier"]["channels"] == [8, 16, 32]
    assert cfg["classifier"]["epochs"] == 15 and "2-fold cross-fitting" in cfg["split"] and "run seed" in cfg["seed"]


# ----------------------------------------------------------------------------------------------- the shipped criteria
def _suite_criteria() -> dict:
    from mriq_validate.suite import load_suite, shipped_suites

    return {c.id: c for c in load_suite(shipped_suites() / "brain_tumour.yaml").criteria}


def test_the_suites_band_is_the_one_measured_on_real_against_real() -> None:
    """DET-C2ST's band and SENS-C2ST-ERASE's bound are the half-width docs/generate/detectability.py derived from the
    real-vs-real AUCs (3 SD + tolerance), as its JSON records it."""
    rec = json.loads((ROOT / "docs" / "generated" / "detectability.json").read_text(encoding="utf-8"))
    crits = _suite_criteria()
    band, half = rec["null"]["band_rule"]["band"], rec["null"]["band_rule"]["half_width"]
    assert [crits["DET-C2ST"].threshold.min, crits["DET-C2ST"].threshold.max] == band == rec["band"]
    assert crits["SENS-C2ST-ERASE"].threshold.min == half and not crits["DET-C2ST"].gate


def test_erased_tumours_are_detected_and_real_images_sit_in_the_band(cache_dir: Path) -> None:
    """SENS-C2ST-ERASE passes on the embedded data (two classifier trainings), and DET-C2ST passes builtin:real (the
    clean test images' classifier is shared with the self-check's baseline)."""
    from mriq_validate.criteria import evaluate
    from mriq_validate.session import RunContext, RunSettings

    crits = _suite_criteria()
    ctx = RunContext(RunSettings(model="builtin:real", data="builtin:mni-tumour", device="cpu", seed=0, cache_dir=str(cache_dir)),
                     "builtin:mni-tumour")
    try:
        sens = evaluate(crits["SENS-C2ST-ERASE"], ctx)
        assert sens.verdict == "PASS" and sens.compared.ci_low > 0.16 and sens.value.value > 0.8, sens.message
        real = evaluate(crits["DET-C2ST"], ctx)
        assert real.verdict == "PASS" and real.value.value == sens.baseline.value, real.message
    finally:
        ctx.close()
