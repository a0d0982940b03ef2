"""brain_intensity: known answers, scale equivariance, the benign spread the suites' rationale quotes, and the
INTENSITY-SCALE criterion end to end on folders of 16-bit PNGs holding 12-bit (refused unless stated) or 15-bit values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from mriq_validate.cache import DiskCache
from mriq_validate.data import load_data
from mriq_validate.data.preprocess import normalise_slice
from mriq_validate.errors import MetricError
from mriq_validate.metrics import create_metric
from mriq_validate.metrics.functional.intensity import brain_mask, brain_percentile, otsu_threshold
from mriq_validate.perturb import apply

SUITES = Path(__file__).resolve().parents[1] / "suites"


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 64×64 head: a disc of radius 20 with an intensity ramp 0.3-0.9, a dark core inside it (necrosis-like, 0.01),
    a separate small bright blob outside (an eye) and faint background noise; and the disc (the true brain)."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 <= 20**2
    img = np.random.default_rng(0).uniform(0.0, 0.02, (64, 64))
    img[disc] = (0.3 + 0.6 * xx / 63)[disc]
    img[(yy - 32) ** 2 + (xx - 30) ** 2 <= 4**2] = 0.01
    img[2:5, 58:61] = 0.8
    return img, disc


def test_brain_mask_and_percentile_known_answer() -> None:
    img, disc = phantom()
    assert np.array_equal(brain_mask(img), disc)  # dark core filled, the eye and the background left out
    for q in (5, 50, 95):
        assert brain_percentile(img[None], q)[0] == np.percentile(img[disc], q)


@pytest.mark.parametrize("c", [1 / 16, 0.5, 3.0])
def test_global_scaling_scales_the_percentiles_and_keeps_the_mask(c: float, mni) -> None:
    img, _ = phantom()
    real = mni.test.images[:16, 0].numpy().astype(np.float64)
    for x in (img, *real):
        assert np.array_equal(brain_mask(c * x), brain_mask(x))
    for images in (img[None], real):
        for q in (5, 50, 95):
            np.testing.assert_allclose(brain_percentile(c * images, q), c * brain_percentile(images, q), rtol=1e-12)


def test_an_image_without_signal_scores_zero() -> None:
    assert not brain_mask(np.zeros((8, 8))).any()
    assert brain_percentile(np.zeros((2, 1, 8, 8)), 95).tolist() == [0.0, 0.0]


def test_otsu_splits_two_levels() -> None:
    values = np.r_[np.zeros(70), np.ones(30)]
    t = otsu_threshold(values)
    assert 0 < t <= 1 and (values >= t).sum() == 30
    assert otsu_threshold(np.full(5, 0.3)) == 0.3


@pytest.mark.parametrize("bad", [0, 100, -5, "high"])
def test_percentile_is_validated(bad: float) -> None:
    with pytest.raises(MetricError, match=r"brain_intensity.*percentile must lie in \(0, 100\)"):
        create_metric("brain_intensity", {"percentile": bad})


def _benign_ratios(spec: str, cache_dir: Path) -> dict[str, float]:
    """Set-mean p95 of each benign variation of the real data, as a ratio to the real test images (the criterion's
    checked quantity, decided on each contrast), as quoted in the INTENSITY-SCALE rationale of the shipped suites."""
    out = {}
    full = load_data(spec, DiskCache(cache_dir))
    for contrast in full.contrasts:
        d = full.select([contrast])
        p95 = lambda images: float(brain_percentile(images.numpy(), 95).mean())  # noqa: E731
        base = p95(d.test.images)
        out[f"{contrast} train split"] = p95(d.train.images) / base
        for split in ("train", "test"):
            part = getattr(d, split)
            sites = np.asarray(part.covariates["site"])
            for s in np.unique(sites):
                out[f"{contrast} {split} site {s}"] = p95(part.images[torch.from_numpy(sites == s)]) / base
        for coeff in (0.1, 0.3, 0.5):
            biased = apply("bias_field", d.test.images, d.test.masks, seed=1, coeff=coeff, degree=3).images
            renormalised = torch.from_numpy(np.stack([normalise_slice(im[0].numpy().astype(np.float64)) for im in biased])[:, None])
            out[f"{contrast} bias field {coeff} + renormalisation"] = p95(renormalised) / base
        for gamma in (0.67, 0.8, 1.25, 1.5):
            out[f"{contrast} gamma {gamma}"] = p95(d.test.images.clamp(0, 1) ** gamma) / base
    return out


@pytest.mark.parametrize("spec, low, high", [("builtin:mni-tumour", 0.93, 1.10), ("builtin:mni-vessel", 0.90, 1.07)])
def test_benign_variation_stays_within_the_quoted_spread(spec: str, low: float, high: float, cache_dir: Path) -> None:
    """The rationale's measured spread (brain_tumour.yaml: 0.93-1.10 over four contrasts; vessels.yaml: 0.90-1.07),
    well inside the criterion's tolerance 2^(±1/2)."""
    ratios = _benign_ratios(spec, cache_dir)
    outside = {k: round(v, 4) for k, v in ratios.items() if not low <= v <= high}
    assert not outside, outside


def _png_folder(folder: Path, spec: str, cache_dir: Path, sbit: bool = False, sidecar: bool = False, bits: int = 12) -> Path:
    """The real test images as 16-bit PNGs holding ``bits``-bit values (0..2^bits-1), masks as 8-bit PNGs, named as a
    folder model reads them (``<id>_seg.png`` + ``<id>.png``, or ``<id>_<contrast>.png`` per contrast)."""
    d = load_data(spec, DiskCache(cache_dir))
    folder.mkdir()
    info = PngImagePlugin.PngInfo()
    if sbit:
        info.add(b"sBIT", bytes([12]))
    for sid, img, mask in zip(d.test.ids, d.test.images, d.test.masks):
        for c, contrast in enumerate(d.contrasts):
            name = f"{sid}.png" if len(d.contrasts) == 1 else f"{sid}_{contrast}.png"
            Image.fromarray(np.round(img[c].numpy() * (2**bits - 1)).astype(np.uint16)).save(folder / name, pnginfo=info)
        Image.fromarray(mask[0].numpy().astype(np.uint8)).save(folder / f"{sid}_seg.png")
    if sidecar:
        (folder / "mriq_folder.json").write_text('{"range": [0, 4095]}')
    return folder


@pytest.mark.parametrize(
    "suite, spec, how, verdict",
    [
        ("brain_tumour.yaml", "builtin:mni-tumour", "plain", "ERROR"),
        ("brain_tumour.yaml", "builtin:mni-tumour", "sidecar", "PASS"),
        ("brain_tumour.yaml", "builtin:mni-tumour", "sbit", "PASS"),
        ("brain_tumour.yaml", "builtin:mni-tumour", "15-bit", "FAIL"),
        ("vessels.yaml", "builtin:mni-vessel", "15-bit", "FAIL"),
    ],
)
def test_intensity_scale_catches_12_bit_pngs_read_as_16_bit(pytester: pytest.Pytester, run_plugin, cache_dir: Path, suite: str,
                                                            spec: str, how: str, verdict: str) -> None:
    """12-bit values in 16-bit PNGs without range information would be 16 times too dark: the folder is refused (an
    ERROR naming the files and how to state the range, no guessed depth); with the range in mriq_folder.json or an sBIT
    chunk they are read right and the gate PASSes. 15-bit values (one unused bit, not refused) are read 2 times too dark:
    the shipped gate FAILs (ratio 1/2)."""
    folder = _png_folder(pytester.path / "generated", spec, cache_dir, sbit=how == "sbit", sidecar=how == "sidecar",
                         bits=15 if how == "15-bit" else 12)
    result = run_plugin(str(SUITES / suite), "--rootdir", str(pytester.path), "-k", "INTENSITY-SCALE", f"--mriq-model={folder}")
    if verdict == "ERROR":
        result.assert_outcomes(errors=1, deselected=result.parseoutcomes()["deselected"])
        result.stdout.fnmatch_lines(["*largest stored value is 4095, folder-wide: that fits in 12 bits*mriq_folder.json*"])
    elif verdict == "FAIL":
        result.assert_outcomes(failed=1, deselected=result.parseoutcomes()["deselected"])
        result.stdout.fnmatch_lines(["*INTENSITY-SCALE FAILED: brain_intensity on generated*images*ratio 0.5*below the minimum 0.7071*"])
    else:
        result.assert_outcomes(passed=1, deselected=result.parseoutcomes()["deselected"])
        result.stdout.fnmatch_lines(["PASS*INTENSITY-SCALE*brain_intensity*ratio 1 *"])
