"""Protocol B (TSTR, augmentation), HD95, the training-noise floor, 3D segmenters.

Segmenters use the default configuration and come from the shared on-disk cache (TRTR and its two extra noise
seeds are trained once; afterwards every test here loads them).
"""

from __future__ import annotations

import json
import textwrap
import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate import segmenter
from mriq_validate.bounds import seed_sd_multiplier
from mriq_validate.errors import MetricError
from mriq_validate.metrics import Sample, create_metric
from mriq_validate.metrics.downstream import Dice, DiceAugmented, DiceTSTR, Hd95
from mriq_validate.metrics.functional.downstream import dice_per_image, hd95_per_image
from mriq_validate.segmenter import SegmenterConfig, get_segmenter, segmenter_key
from mriq_validate.session import RunContext, RunSettings

DATA = "builtin:mni-tumour"


def make_ctx(cache_dir: Path, model: str | None = None) -> RunContext:
    return RunContext(RunSettings(model=model, data=DATA, device="cpu", cache_dir=str(cache_dir)), DATA)


@pytest.fixture(scope="module")
def ctx(cache_dir: Path) -> RunContext:
    """One run context for the module (segmenters and prepared values are memoised in it)."""
    return make_ctx(cache_dir)


def square(y: int, x: int, side: int = 40, size: int = 128) -> torch.Tensor:
    m = torch.zeros(1, 1, size, size, dtype=torch.bool)
    m[0, 0, y : y + side, x : x + side] = True
    return m


# ---------------------------------------------------------------- HD95 known answers


def test_hd95_identical_masks_is_zero() -> None:
    a = torch.cat([square(30, 30), square(10, 60, side=7)])
    np.testing.assert_array_equal(hd95_per_image(a, a, (1.5, 1.5)), [0.0, 0.0])


@pytest.mark.parametrize("shift", [1, 3, 8])
def test_hd95_of_a_shifted_square_is_the_shift_in_mm(shift: int) -> None:
    a = square(30, 30)
    np.testing.assert_allclose(hd95_per_image(a, square(30, 30 + shift), (1.5, 1.5)), [1.5 * shift])
    # anisotropic pixels: a shift along the rows is measured with the row spacing
    np.testing.assert_allclose(hd95_per_image(a, square(30 + shift, 30), (2.0, 1.0)), [2.0 * shift])


def test_hd95_empty_masks_are_decided_not_nan() -> None:
    empty = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    diagonal = float(np.hypot(128 * 1.5, 128 * 1.5))
    got = hd95_per_image(torch.cat([empty, square(5, 5), empty]), torch.cat([empty, empty, square(5, 5)]), (1.5, 1.5))
    np.testing.assert_allclose(got, [0.0, diagonal, diagonal])


def test_hd95_metric_declares_lower_is_better_and_its_empty_rules() -> None:
    m = create_metric("hd95", {"region": "whole_tumour"})
    assert isinstance(m, Hd95) and not m.higher_is_better
    assert m.config()["definition"] == "monai" and "larger of the two one-way 95th percentiles" in m.config()["hd95"]
    assert "both empty = 0 mm" in m.config()["hd95"] and "diagonal" in m.config()["hd95"]
    brats = create_metric("hd95", {"definition": "brats"})
    assert brats.config()["definition"] == "brats" and "pooled" in brats.config()["hd95"] and "374 mm" in brats.config()["hd95"]
    with pytest.raises(MetricError, match="spacing"):
        hd95_per_image(square(1, 1), square(1, 1), (1.5, 1.5, 1.5))
    with pytest.raises(MetricError, match=r"definition 'medpy' unknown; expected one of \['brats', 'brats2023', 'monai'\]"):
        create_metric("hd95", {"definition": "medpy"})


def test_hd95_definitions_by_hand() -> None:
    """Reference: one pixel at (5, 5). Prediction: that pixel and one 10 px away. A one-pixel mask is its own boundary.
    prediction→reference distances [0, 10], reference→prediction [0]; 95th percentiles (linear interpolation):
    MONAI max(9.5, 0) = 9.5; pooled over [0, 0, 10]: position 0.95 · 2 = 1.9 → 0.9 · 10 = 9.0."""
    ref = torch.zeros(1, 1, 20, 30, dtype=torch.bool)
    ref[0, 0, 5, 5] = True
    pred = ref.clone()
    pred[0, 0, 5, 15] = True
    assert hd95_per_image(pred, ref, (1.0, 1.0)) == pytest.approx([9.5])
    assert hd95_per_image(pred, ref, (1.0, 1.0), "brats") == pytest.approx([9.0])
    assert hd95_per_image(pred, ref, (2.0, 0.5), "brats") == pytest.approx([4.5])  # the 10 px lie along the 0.5 mm axis


def brute_force_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float]) -> tuple[float, float]:
    """(MONAI's, pooled) HD95 from all pairwise distances between the boundary pixels (mask minus its 4-neighbour erosion)."""
    from scipy.ndimage import binary_erosion

    def boundary(m: np.ndarray) -> np.ndarray:
        return np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing)

    bp, br = boundary(pred), boundary(ref)
    d = np.sqrt(((bp[:, None, :] - br[None, :, :]) ** 2).sum(-1))
    p_to_r, r_to_p = d.min(1), d.min(0)
    return max(np.percentile(p_to_r, 95), np.percentile(r_to_p, 95)), float(np.percentile(np.concatenate([p_to_r, r_to_p]), 95))


def test_hd95_definitions_against_brute_force() -> None:
    """A 12×12 reference square; predictions with a small far-away false positive, a missed corner, and a shifted square:
    the definitions differ where one direction has a tail the other lacks, and each matches its brute-force value."""
    ref = np.zeros((64, 64), bool)
    ref[20:32, 20:32] = True
    blob = ref.copy()
    blob[50, 50:53] = True  # a 3 px false positive ~30 px away: 3 of 47 boundary pixels (> 5 %), 3 of 91 pooled (< 5 %)
    corner = ref.copy()
    corner[26:32, 26:32] = False  # a quarter missed
    shifted = np.roll(ref, (2, 5), axis=(0, 1))
    preds = np.stack([blob, corner, shifted])
    refs = np.stack([ref] * 3)
    spacing = (1.5, 1.0)
    monai = hd95_per_image(torch.from_numpy(preds)[:, None], torch.from_numpy(refs)[:, None], spacing)
    pooled = hd95_per_image(torch.from_numpy(preds)[:, None], torch.from_numpy(refs)[:, None], spacing, "brats")
    expected = [brute_force_hd95(p, r, spacing) for p, r in zip(preds, refs)]
    np.testing.assert_allclose(monai, [e[0] for e in expected], rtol=1e-5)  # MONAI's distances are float32
    np.testing.assert_allclose(pooled, [e[1] for e in expected], rtol=1e-5)
    assert monai[0] > 20 and pooled[0] == 0.0  # the far-away blob: MONAI's one-way tail; pooled, it is below the 5 %


def test_hd95_brats_empty_mask_is_374_mm() -> None:
    empty = torch.zeros(1, 1, 128, 128, dtype=torch.bool)
    got = hd95_per_image(torch.cat([empty, square(5, 5), empty]), torch.cat([empty, empty, square(5, 5)]), (1.5, 1.5), "brats")
    np.testing.assert_array_equal(got, [0.0, 374.0, 374.0])


def test_downstream_metrics_state_their_limitations() -> None:
    for name in ("dice", "hd95", "dice_tstr", "dice_augmented"):
        lim = create_metric(name).limitations
        assert lim and all(isinstance(t, str) and len(t) > 40 for t in lim), name
    assert any("training randomness only" in t for t in DiceTSTR.limitations)
    assert any("more optimisation steps" in t for t in DiceAugmented.limitations)


def test_hd95_on_real_test_images(ctx: RunContext) -> None:
    real = ctx.prepare(Hd95(), ctx.real("test"))
    assert real.shape == (len(ctx.data.test),) and np.all(np.isfinite(real)) and np.all(real >= 0)
    diagonal = float(np.hypot(*(128 * s for s in ctx.data.spacing_mm)))
    assert np.median(real) < diagonal / 4  # a competent segmenter: most slices far from the empty-mask penalty
    erased = ctx.prepare(Hd95(), _erased(ctx))
    assert erased.mean() > real.mean()


def _erased(ctx: RunContext) -> Sample:
    from mriq_validate.perturb import PerturbContext, apply

    t = ctx.data.test
    out = apply("lesion_erase", t.images, t.masks, seed=0, ctx=PerturbContext(lesion_labels=(1, 2, 3)), amount=1.0)
    return Sample(out.images, t.masks, "real test + lesion_erase")


# ---------------------------------------------------------------- protocol B


def test_tstr_on_real_train_is_trtr_exactly(ctx: RunContext) -> None:
    cfg = SegmenterConfig()
    tstr = ctx.prepare(DiceTSTR(), ctx.real("train"))
    trtr_seg = ctx.segmenter(cfg)
    train = ctx.data.train
    assert trtr_seg.key == segmenter_key(train.images, train.masks, ctx.n_classes, cfg, contrasts=tuple(ctx.data.contrasts))
    # protocol A's real-test Dice is the same segmenter on the same slices
    np.testing.assert_array_equal(tstr, ctx.prepare(Dice(), ctx.real("test")))
    assert tstr.shape == (len(ctx.data.test),)
    # the same pairs under another name (builtin:real generating for the training masks) hit the same cache entry
    copy = Sample(train.images.clone(), train.masks.clone(), "generated (train masks)")
    np.testing.assert_array_equal(ctx.prepare(DiceTSTR(), copy), tstr)
    # augmentation with the real training split itself is no augmentation
    np.testing.assert_array_equal(ctx.prepare(DiceAugmented(), ctx.real("train")), tstr)
    np.testing.assert_array_equal(ctx.prepare(DiceAugmented(), copy), tstr)


def test_protocol_a_finds_the_real_test_split_by_content_not_by_its_origin_text(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dice's competence check recognises the real test images by what they hold: relabelled (a held-out cohort), they
    give the same scores (it used to recurse without end when the origin text was not "real test")."""
    expected = make_ctx(cache_dir).prepare(Dice(), make_ctx(cache_dir).real("test"))
    ctx = make_ctx(cache_dir)
    real = ctx.real
    monkeypatch.setattr(ctx, "real", lambda split="test": dataclasses.replace(real(split), origin=f"held-out {split} cohort"))
    np.testing.assert_array_equal(ctx.prepare(Dice(), ctx.real("test")), expected)


def test_tstr_values_are_per_real_test_slice_and_paired() -> None:
    m = DiceTSTR()
    prepared = np.array([0.5, 1.0, 0.0, 0.25])
    assert m.pairs_by_reference and m.size(prepared) == 4
    assert m.value(prepared, np.array([1, 1, 2, 3])) == pytest.approx(0.5625)
    assert m.config()["evaluated_on"] == "real test" and m.config()["protocol"].startswith("B (TSTR")


def test_tstr_without_masks_says_tstr_needs_masks(ctx: RunContext) -> None:
    sample = Sample(ctx.data.train.images[:8], None, "generated")
    for metric in (DiceTSTR(), DiceAugmented()):
        with pytest.raises(MetricError, match="TSTR needs masks"):
            ctx.prepare(metric, sample)


def test_tstr_refuses_to_train_on_the_test_masks(ctx: RunContext) -> None:
    t = ctx.data.test
    for sample in (ctx.real("test"), Sample(t.images.flip(-1), t.masks.clone(), "generated (test masks)")):
        with pytest.raises(MetricError, match="leak the test labels.*condition_on: train_masks"):
            ctx.prepare(DiceTSTR(), sample)


def test_tstr_mask_labels_outside_the_label_set_are_named(ctx: RunContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmenter, "train_segmenter", lambda *a, **k: pytest.fail("must not train on bad labels"))
    masks = ctx.data.train.masks[:8].clone()
    masks[2, 0, 0, 0] = 9
    with pytest.raises(MetricError, match=r"dice_tstr.*labels \[0, 1, 2, 3, 9\], outside the 4 classes.*offending labels \[9\]"):
        ctx.prepare(DiceTSTR(), Sample(ctx.data.train.images[:8], masks, "generated (train masks)"))


def test_protocol_b_parameters_are_checked() -> None:
    with pytest.raises(MetricError, match="noise_seeds must be an integer >= 2"):
        create_metric("dice_tstr", {"noise_seeds": 1})
    with pytest.raises(MetricError, match="segmenter.spatial_dims must be 2 or 3"):
        create_metric("dice_augmented", {"segmenter": {"spatial_dims": 4}})
    with pytest.raises(MetricError, match="unknown parameter"):
        create_metric("dice_tstr", {"regoin": "whole_tumour"})


# ---------------------------------------------------------------- training noise


@pytest.mark.heavy
def test_noise_floor_is_positive_and_cached(ctx: RunContext, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = DiceTSTR(noise_seeds=3)
    means = m.seed_means(ctx)
    floor = m.noise_floor(ctx)
    assert len(means) == 3 and floor == pytest.approx(np.std(means, ddof=1)) and floor > 0
    assert means[0] == pytest.approx(ctx.prepare(m, ctx.real("train")).mean())  # seed 0 is the TRTR baseline itself
    train, cfg = ctx.data.train, SegmenterConfig()
    for k in range(3):
        key = segmenter_key(train.images, train.masks, ctx.n_classes, replace(cfg, seed=cfg.seed + k), contrasts=tuple(ctx.data.contrasts))
        assert (cache_dir / "segmenters" / f"{key}.pt").is_file()
    # a fresh run loads the three segmenters from disk (no training) and protocol A has the same floor
    monkeypatch.setattr(segmenter, "train_segmenter", lambda *a, **k: pytest.fail("noise-floor segmenters must come from the cache"))
    assert Dice(noise_seeds=3).noise_floor(make_ctx(cache_dir)) == pytest.approx(floor)


# ---------------------------------------------------------------- 3D


def test_3d_segmenter_smoke(tmp_path) -> None:
    from mriq_validate.cache import DiskCache

    g = torch.Generator().manual_seed(0)
    zz, yy, xx = torch.meshgrid(*(torch.arange(32),) * 3, indexing="ij")
    vols, labels = [], []
    for _ in range(4):
        c = torch.randint(10, 22, (3,), generator=g)
        sphere = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < 36
        vols.append((0.2 + 0.6 * sphere.float() + 0.1 * torch.rand(32, 32, 32, generator=g)).clamp(0, 1))
        labels.append(sphere.long())
    x, y = torch.stack(vols)[:, None], torch.stack(labels)[:, None]
    cfg = SegmenterConfig.from_params({"channels": [4, 8], "strides": [2], "num_res_units": 0, "epochs": 2, "batch_size": 2, "spatial_dims": 3})
    lines: list[str] = []
    seg = get_segmenter(x, y, 2, cfg, torch.device("cpu"), DiskCache(tmp_path), lines.append)
    assert any("epoch 2/2" in line and "volumes" in line for line in lines)
    pred = seg.predict(x)
    assert pred.shape == (4, 1, 32, 32, 32) and pred.dtype == torch.int64
    d = dice_per_image(pred > 0, y > 0)
    assert d.shape == (4,) and np.all((d >= 0) & (d <= 1))
    np.testing.assert_allclose(dice_per_image(y > 0, y > 0), 1.0)
    np.testing.assert_allclose(hd95_per_image(y > 0, y > 0, (1.0, 1.0, 1.0)), 0.0)
    # cached under a key that names the 3D configuration; a 2D configuration's key is unchanged by the new field
    assert seg.key == segmenter_key(x, y, 2, cfg) and "spatial_dims" in segmenter._key_fields(cfg)
    assert "spatial_dims" not in segmenter._key_fields(SegmenterConfig())
    with pytest.raises(MetricError, match="spatial_dims=2 needs images N×C×H×W"):
        segmenter.train_segmenter(x, y, 2, replace(cfg, spatial_dims=2), torch.device("cpu"))


# ---------------------------------------------------------------- through the plugin

TSTR_SUITE = textwrap.dedent(
    """\
    mriq_suite:
      name: tstr
      context_of_use: plugin tests of protocol B
      criteria:
        - id: TSTR-WT
          requirement: a segmenter trained on the generated pairs is nearly as good on real test images as one trained on real pairs
          hazard: a segmentation model trained on the synthetic data misses tumours
          rationale: two seed-to-seed SDs of the TRTR Dice, the training noise of the task itself
          metric: dice_tstr
          params: {region: whole_tumour}
          condition_on: train_masks
          threshold: {min: -2, relative: difference, unit: seed_sd}
          n_boot: 200
    """
)


@pytest.mark.heavy
def test_tstr_criterion_through_the_plugin(pytester: pytest.Pytester, run_plugin, cache_dir: Path) -> None:
    pytester.makefile(".yaml", suite=TSTR_SUITE)
    result = run_plugin("--mriq-device=cpu", "--mriq-model=builtin:real", "--mriq-report=out")
    result.assert_outcomes(passed=1)
    (rec,) = json.loads((pytester.path / "out" / "report.json").read_text())["results"]
    assert rec["verdict"] == "PASS" and rec["metric"]["name"] == "dice_tstr"
    assert rec["compared"]["value"] == 0.0  # builtin:real's training pairs are the real ones: TSTR is TRTR
    assert rec["samples"]["paired"] and rec["samples"]["n"] == 128 and rec["samples"]["evaluated"] == "generated (train masks)"
    floor = DiceTSTR().noise_floor(make_ctx(cache_dir))  # over the default 5 seeds
    assert rec["bounds"]["min"] == pytest.approx(-seed_sd_multiplier(2, 5) * floor)  # -2 SDs, widened for an SD from 5 seeds
    noise = rec["threshold"]["noise_unit"]
    assert noise["seeds"] == 5 and noise["seed_sd"] == pytest.approx(floor) and len(noise["seed_means"]) == 5
    assert noise["bounds"]["min"]["false_alarm"] == pytest.approx(0.0786, abs=1e-4)  # Φ(-2/√2)
    assert "seed-to-seed SDs" in rec["message"]

    result = run_plugin("--mriq-device=cpu", "--mriq-model=builtin:tumour-eraser")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*TSTR-WT FAILED: dice_tstr (whole_tumour) on generated (train masks) images*vs baseline*real train*"
                                 "*(threshold in seed-to-seed SDs).", "*hazard: a segmentation model trained on the synthetic data misses*"])
