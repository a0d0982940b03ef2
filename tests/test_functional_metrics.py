"""Metrics without a run: every registered metric names a documented functional entry point whose examples run; the
classes call it; declared metadata (valid range, needs) is enforced; every parameter is checked at construction."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mriq_validate.metrics.functional as functional
from mriq_validate.errors import MetricError, SuiteError
from mriq_validate.metrics import METRICS, Metric, PerImageMetric, Sample, create_metric, metric_names, register_metric
from mriq_validate.metrics.functional import distribution as D

FUNCTIONAL_MODULES = sorted(m.name for m in pkgutil.iter_modules(functional.__path__, f"{functional.__name__}."))


# ----------------------------------------------------------------------------------------------- functional entry points
@pytest.mark.parametrize("module", FUNCTIONAL_MODULES)
def test_functional_module_examples_run(module: str) -> None:
    """Each module's docstring examples run on plain tensors and give the numbers they show."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module} has no example"
    assert result.failed == 0, f"{result.failed} example(s) of {module} failed"


@pytest.mark.parametrize("name", metric_names())
def test_every_metric_names_a_documented_functional_entry_point(name: str) -> None:
    fn = METRICS[name].functional
    assert callable(fn), f"metric {name!r} names no functional entry point"
    assert fn.__module__ in FUNCTIONAL_MODULES, (name, fn.__module__)
    assert fn.__name__ in functional.__all__, f"{fn.__name__} is not exported by mriq_validate.metrics.functional"
    doc = inspect.getdoc(fn) or ""
    for section in ("Args:", "Returns:", "Raises:", "Example:"):
        assert section in doc, f"{fn.__module__}.{fn.__name__} ({name}) lacks {section}"
    assert ">>> " in doc.split("Example:")[1], f"{fn.__name__}: the example has no doctest"
    assert create_metric(name, _PARAMS.get(name)).functional is fn  # an instance does not bind it as a method


def _pyiqa_params(tmp: Path = Path(__file__)) -> dict[str, Any]:
    return {"metric": "brisque", "weights": str(tmp)}  # any existing file: the weights are read only when scoring


_PARAMS: dict[str, dict[str, Any]] = {"pyiqa": _pyiqa_params()}


def test_the_registry_is_complete_on_a_fresh_import_without_cycles() -> None:
    """Importing the package registers every metric; the metrics import neither the run (session) nor the criteria,
    and the segmenter does not import the metrics."""
    code = textwrap.dedent("""
        import sys
        import mriq_validate.metrics.base as base
        names = base.metric_names()
        assert "mriq_validate.session" not in sys.modules and "mriq_validate.criteria" not in sys.modules, sorted(sys.modules)
        import mriq_validate.segmenter
        print(len(names), ",".join(names))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1].split(",") == metric_names() and int(out[0]) == len(metric_names())
    seg_only = "import sys, mriq_validate.segmenter; assert 'mriq_validate.metrics' not in sys.modules"
    subprocess.run([sys.executable, "-c", seg_only], check=True)


# ----------------------------------------------------------------------------------------------- the classes call the maths
def _features(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(60, 6)), rng.normal(loc=0.3, size=(80, 6))


@pytest.mark.parametrize("name, expected", [
    ("fid", lambda own, ref: D.fid_from_features(own, ref)),
    ("frd", lambda own, ref: D.frd(own, ref)),
    ("mmd", lambda own, ref: D.mmd2(own, ref)),
    ("precision", lambda own, ref: D.prdc(ref, own)["precision"]),
    ("recall", lambda own, ref: D.prdc(ref, own)["recall"]),
    ("density", lambda own, ref: D.prdc(ref, own)["density"]),
    ("coverage", lambda own, ref: D.prdc(ref, own)["coverage"]),
    ("vendi", lambda own, ref: D.vendi_score(D.standardise(own, ref))),
])
def test_set_metric_values_are_their_functional_on_the_resample(name: str, expected: Any) -> None:
    own, ref = _features(0)
    metric = create_metric(name)
    index = np.random.default_rng(1).choice(len(own), 48, replace=False)
    assert metric.value((own, ref), index) == expected(own[index], ref)


def test_kid_value_is_the_functional_with_the_prepared_seed() -> None:
    own, ref = _features(2)
    metric = create_metric("kid", {"subsets": 7, "subset_size": 30})
    index = np.arange(len(own))
    assert metric.value((own, ref, 123), index) == D.kid(own, ref, subsets=7, subset_size=30, rng=123).mean


# ----------------------------------------------------------------------------------------------- declared metadata
class _Constant(PerImageMetric):
    name = "test_constant"
    higher_is_better = True
    valid_range = (0.0, 1.0)
    score = 0.5

    def scores(self, ctx: Any, sample: Sample) -> np.ndarray:
        return np.full(len(sample), self.score)


class _SetConstant(Metric):
    name = "test_set_constant"
    higher_is_better = True
    kind = "set"
    valid_range = (1.0, np.inf)
    result = 2.0

    def prepare(self, ctx: Any, sample: Sample) -> Any:
        return np.zeros(len(sample))

    def compute(self, prepared: Any, index: np.ndarray) -> float:
        return self.result


SAMPLE = Sample(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), None, "test")


def test_a_per_image_score_outside_the_valid_range_is_an_error_naming_metric_and_value() -> None:
    metric = _Constant()
    assert metric.prepare(None, SAMPLE).tolist() == [0.5] * 4
    metric.score = 1.5
    with pytest.raises(MetricError, match=r"metric 'test_constant': score\(s\) \[1\.5, 1\.5, 1\.5, 1\.5\] of test image\(s\) "
                                          r"\[0, 1, 2, 3\] lie outside its valid range \[0, 1\]"):
        metric.prepare(None, SAMPLE)
    metric.score = 1.0 + 1e-9  # float rounding at the bound is not an error
    metric.prepare(None, SAMPLE)


def test_a_set_value_outside_the_valid_range_is_an_error_naming_metric_and_value() -> None:
    metric = _SetConstant()
    assert metric.value(None, np.arange(3)) == 2.0
    metric.result = 0.25
    with pytest.raises(MetricError, match=r"metric 'test_set_constant': value 0\.25 lies outside its valid range \[1, inf\]"):
        metric.value(None, np.arange(3))
    metric.result = float("nan")  # a failed resample is the caller's to handle (the study drops non-finite resamples)
    assert np.isnan(metric.value(None, np.arange(3)))


def test_a_builtin_metric_enforces_its_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIQE lies in [0, 100]: a pyiqa that returned 150 (a broken install, another scale) is an error, not a number."""
    from mriq_validate.metrics.functional import iqa

    monkeypatch.setattr(iqa, "pyiqa_metric", lambda name, device, **kw: (lambda x: torch.full((x.shape[0],), 150.0)))
    ctx = type("Ctx", (), {"device": torch.device("cpu")})()
    with pytest.raises(MetricError, match=r"metric 'piqe': score\(s\) \[150\.0, .*outside its valid range \[0, 100\]"):
        create_metric("piqe").prepare(ctx, SAMPLE)


def test_needs_declares_only_what_check_sample_checks() -> None:
    class NeedsWeights(_Constant):
        name = "test_needs_weights"
        needs = ("weights",)

    with pytest.raises(ValueError, match=r"needs \['weights'\] are not checked by check_sample"):
        register_metric(NeedsWeights)
    assert "test_needs_weights" not in METRICS
    for name in metric_names():
        assert set(METRICS[name].needs) <= {"masks"}, name
    with pytest.raises(MetricError, match="metric 'dice' needs label masks with the test images"):
        create_metric("dice").check_sample(SAMPLE)


# ----------------------------------------------------------------------------------------------- parameters at construction
@pytest.mark.parametrize("name, params, message", [
    ("fid", {"features": {"extractor": "pixel"}},
     "metric 'fid': features: unknown extractor 'pixel'; expected one of segmenter, radiomic, pixels, torchscript, module"),
    ("fid", {"features": {"extractor": "pixels", "sise": 16}},
     "metric 'fid': features: extractor 'pixels' does not take ['sise']; it takes ['size']"),
    ("kid", {"features": {"extractor": "pixels", "size": "16"}}, "metric 'kid': features: pixels option size must be an integer >= 2, got '16'"),
    ("vendi", {"features": {"extractor": "radiomic", "masked": "yes"}},
     "metric 'vendi': features: radiomic option masked must be true or false, got 'yes'"),
    ("mmd", {"features": {"extractor": "segmenter", "segmenter": {"epochs": "forty"}}},
     "metric 'mmd': features: segmenter.epochs must be positive: expected an integer >= 1, got 'forty'"),
    ("precision", {"features": {"extractor": "module", "module": "nocolon"}},
     "metric 'precision': features: extractor 'module' needs `module: package.module:NAME` (a factory returning an nn.Module), got 'nocolon'"),
    ("copy_fraction", {"features": {"extractor": "pixels", "size": 1}},
     "metric 'copy_fraction': features: pixels option size must be an integer >= 2, got 1"),
    ("dice", {"segmenter": {"channels": ["a", 16]}}, "metric 'dice': segmenter.channels must be a list of positive integers, got ['a', 16]"),
    ("hd95", {"segmenter": {"lr": -1}}, "metric 'hd95': segmenter.lr must be positive: expected a number > 0, got -1"),
    ("dice_tstr", {"segmenter": {"loss": ["ce"]}}, "metric 'dice_tstr': segmenter.loss ['ce'] unknown; expected one of ['ce', 'dice_ce']"),
    ("region_presence", {"segmenter": "default"}, "metric 'region_presence': segmenter: expected a mapping of settings, got 'default'"),
    ("region_presence", {"min_px": 0}, "metric 'region_presence': min_px must be an integer >= 1, got 0"),
    ("kid", {"subsets": "many"}, "metric 'kid': subsets must be an integer >= 1, got 'many'"),
    ("coverage", {"k": 2.5}, "metric 'coverage': k must be an integer >= 1, got 2.5"),
    ("frd", {"masked": "no"}, "metric 'frd': masked must be true or false, got 'no'"),
    ("ms_ssim_diversity", {"kernel_size": 8}, "metric 'ms_ssim_diversity': kernel_size must be odd, got 8"),
    ("niqe_mri", {"block_size": 33}, "metric 'niqe_mri': block_size must be even (it is halved for the second scale), got 33"),
    ("copy_fraction", {"alpha": "0.01"}, "metric 'copy_fraction': alpha must be a number in (0, 0.5), got '0.01'"),
    ("dice", {"min_real_dice": 1.0}, "metric 'dice': min_real_dice must be a number in [0, 1), got 1.0"),
])
def test_a_bad_parameter_is_a_metric_error_at_construction(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(MetricError) as exc:
        create_metric(name, params)
    assert str(exc.value) == message


def test_a_missing_torchscript_file_is_named_at_construction(tmp_path: Path) -> None:
    from mriq_validate.errors import MissingFileError

    with pytest.raises(MissingFileError, match=rf"feature extractor file {tmp_path / 'net.pt'} does not exist"):
        create_metric("fid", {"features": {"extractor": "torchscript", "path": str(tmp_path / "net.pt")}})


def test_a_bad_features_block_fails_the_suite_at_load_with_its_line(tmp_path: Path) -> None:
    from mriq_validate.suite import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent("""\
        mriq_suite:
          name: t
          context_of_use: testing
          criteria:
            - id: FID
              requirement: close to real
              rationale: because
              metric: fid
              params:
                features: {extractor: pixels, sise: 16}
              threshold: {max: 1}
        """))
    with pytest.raises(SuiteError, match=rf"{path}:10: .*features.*does not take \['sise'\]"):
        load_suite(path)


# ----------------------------------------------------------------------------------------------- functional validation
def test_dice_and_hd95_name_mismatched_masks() -> None:
    from mriq_validate.metrics.functional.downstream import dice_per_image, hd95_per_image

    a, b = torch.zeros(2, 1, 8, 8, dtype=torch.bool), torch.zeros(2, 1, 8, 9, dtype=torch.bool)
    with pytest.raises(MetricError, match=r"dice: prediction \(2, 1, 8, 8\) and target \(2, 1, 8, 9\) must be equal N×1×\(D×\)H×W"):
        dice_per_image(a, b)
    with pytest.raises(MetricError, match=r"hd95: prediction \(2, 1, 8, 8\) and target \(2, 1, 8, 9\)"):
        hd95_per_image(a, b, (1.0, 1.0))


def test_brain_percentile_names_a_bad_percentile() -> None:
    from mriq_validate.metrics.functional.intensity import brain_percentile

    with pytest.raises(MetricError, match=r"q: expected a percentile in \(0, 100\), got 100"):
        brain_percentile(np.ones((1, 8, 8)), 100)
