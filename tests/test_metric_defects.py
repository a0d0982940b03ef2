"""Defects of the metric registry: per-instance direction, MS-SSIM scales, seeded KID subsets, calibrate's
data options, and the limitations every measure declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mriq_validate.errors import MetricError
from mriq_validate.metrics import METRICS, Sample, create_metric, metric_names


# ----------------------------------------------------------------------------------------------- pyiqa direction
class _FakePyiqa:
    """Stands in for a loaded pyiqa metric: its direction as pyiqa declares it, a constant score."""

    def __init__(self, lower_better: bool) -> None:
        self.lower_better = lower_better

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), 1.0)


def test_pyiqa_direction_is_per_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mriq_validate._compat import import_pyiqa
    from mriq_validate.metrics import iqa
    from mriq_validate.metrics.functional import iqa as iqa_functional

    import_pyiqa()
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not read by this test")
    lower = {"brisque": True, "musiq": False}
    assert {m: bool(DEFAULT_CONFIGS[m].get("lower_better", False)) for m in lower} == lower  # pyiqa's own declarations
    monkeypatch.setattr(iqa_functional, "pyiqa_metric", lambda name, device, **kw: _FakePyiqa(lower[name]))
    brisque = create_metric("pyiqa", {"metric": "brisque", "weights": str(weights)})
    musiq = create_metric("pyiqa", {"metric": "musiq", "weights": str(weights)})
    assert (brisque.higher_is_better, musiq.higher_is_better) == (False, True)  # known before any image is scored
    ctx = type("Ctx", (), {"device": torch.device("cpu")})()
    sample = Sample(torch.rand(3, 1, 16, 16), None, "test")
    musiq.prepare(ctx, sample)
    brisque.prepare(ctx, sample)
    musiq.prepare(ctx, sample)
    assert (brisque.higher_is_better, musiq.higher_is_better) == (False, True)  # scoring one never flips the other
    assert iqa.PyiqaWeighted.higher_is_better is False  # the class default is never overwritten


def test_pyiqa_unknown_metric_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(MetricError, match=r"metric 'pyiqa': unknown pyiqa metric 'brisqe'.*brisque"):
        create_metric("pyiqa", {"metric": "brisqe", "weights": str(weights)})


# ----------------------------------------------------------------------------------------------- MS-SSIM scales
@pytest.mark.parametrize("kernel", [7, 11])
def test_ms_ssim_runs_or_names_the_size_for_every_size(kernel: int) -> None:
    """Every slice size from 8 to 128 px either gives finite MS-SSIM values through MONAI or a MetricError naming it,
    with as many scales as MONAI accepts (one more would break its size check or the coarsest scale's kernel)."""
    from mriq_validate.metrics.functional.diversity import ms_ssim_setup
    from mriq_validate.segnets import torch_threads

    metric = create_metric("ms_ssim_diversity", {"n_pairs": 10, "kernel_size": kernel})
    gen = torch.Generator().manual_seed(0)
    with torch_threads(torch.device("cpu")):  # $MRIQ_TORCH_THREADS (1): 121 tiny MONAI calls without thread spin-up
        for size in range(8, 129):
            sample = Sample(torch.rand(3, 1, size, size, generator=gen), None, "test")
            if size < kernel:
                with pytest.raises(MetricError, match=rf"a {size}-pixel slice"):
                    metric.prepare(None, sample)
                continue
            scores = metric.prepare(None, sample)
            assert scores.shape == (10,) and np.all(np.isfinite(scores)), size
            _, weights = ms_ssim_setup(size, kernel)
            more = len(weights) + 1
            assert more > 5 or size // (more - 1) ** 2 <= kernel - 1 or size // 2 ** (more - 1) < kernel, size
    assert len(ms_ssim_setup(128, 7)[1]) == 5  # the standard five scales (Wang et al. 2003) on the embedded slices


# ----------------------------------------------------------------------------------------------- KID subsets
def _ctx(seed: int, cache_dir: Path):
    from mriq_validate.session import RunContext, RunSettings

    return RunContext(RunSettings(model=None, data="builtin:mni-tumour", device="cpu", seed=seed, cache_dir=str(cache_dir)),
                      "builtin:mni-tumour")


def test_kid_subsets_follow_the_run_seed(cache_dir: Path) -> None:
    params = {"features": {"extractor": "pixels"}, "subsets": 5, "subset_size": 40}

    def kid(seed: int) -> float:
        ctx = _ctx(seed, cache_dir)
        metric = create_metric("kid", params)
        sample = ctx.real("test")
        prepared = ctx.prepare(metric, sample)
        return metric.value(prepared, np.arange(len(sample)))

    a, again, b = kid(0), kid(0), kid(1)
    assert a == again  # same run seed: the same subsets, the same number
    assert a != b  # another run seed draws other subsets


# ----------------------------------------------------------------------------------------------- calibrate's data
def _brats(root: Path, n: int = 4) -> Path:
    """A tiny BraTS-layout folder: ``n`` cases of 40 × 48 × 12 voxels, a lesion in 4 slices of each."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    for i in range(n):
        case = root / f"BraTS_{i:03d}"
        case.mkdir(parents=True)
        img = rng.normal(100, 20, (40, 48, 12)).astype(np.float32)
        lab = np.zeros(img.shape, np.int16)
        lab[15:25, 20:30, 4:8] = 2
        nib.save(nib.Nifti1Image(img, np.eye(4)), case / f"BraTS_{i:03d}_t1.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), case / f"BraTS_{i:03d}_seg.nii.gz")
    return root


def test_calibrate_uses_the_suites_data_options(tmp_path: Path) -> None:
    from mriq_validate.calibrate import calibrate_suite, suite_context
    from mriq_validate.suite import load_suite

    root = _brats(tmp_path / "brats")
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(yaml.safe_dump({"mriq_suite": {
        "name": "tiny", "context_of_use": "a test",
        "data": {"default": str(root), "crop": [32, 24], "test_fraction": 0.25},
        "criteria": [{"id": "DIV", "requirement": "r", "rationale": "r", "metric": "ms_ssim_diversity",
                      "params": {"n_pairs": 20}, "threshold": {"max": 1.0, "relative": "difference"}}]}}))
    suite = load_suite(suite_file)
    ctx = suite_context(suite, None, seed=0, cache_dir=str(tmp_path / "cache"), device="cpu")
    assert tuple(ctx.settings.data_options["crop"]) == (32, 24)
    assert tuple(ctx.data.train.images.shape[-2:]) == (32, 24)  # the suite's crop, not the default 192 × 192
    out = tmp_path / "calibrated.yaml"
    said: list[str] = []
    changes = calibrate_suite(suite_file, out, cache_dir=str(tmp_path / "cache"), n_boot=50, progress=said.append)
    assert [c["criterion"] for c in changes] == ["DIV"] and out.is_file()
    assert any("slices of 32×24 px" in line for line in said), said
    # builtin data takes no loader options, as in the plugin
    assert suite_context(suite, "builtin:mni-tumour", 0, str(tmp_path / "cache"), "cpu").settings.data_options == {}


# ----------------------------------------------------------------------------------------------- limitations
def test_every_measure_declares_its_limitations_and_the_report_lists_them() -> None:
    """Every registered metric states what it is blind to (one or more sentences), and the evidence report lists exactly
    those sentences for each measure a run used."""
    from mriq_validate.report import _limitations

    names = metric_names()
    assert len(names) >= 20  # the builtin metrics are all registered by importing the package
    for n in names:
        lim = METRICS[n].limitations
        assert isinstance(lim, tuple) and lim, f"metric {n!r} declares no limitations"
        assert all(isinstance(s, str) and len(s.strip()) > 40 and s.strip().endswith(".") for s in lim), n
    plan = [{"metric_name": n, "criterion_id": f"C-{n}", "gate": True} for n in names]
    listed = _limitations([], plan)["measures"]
    assert listed == {n: list(METRICS[n].limitations) for n in names}