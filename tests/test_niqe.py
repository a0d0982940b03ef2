"""MRI-fitted NIQE: fitting, persistence, agreement with pyiqa's niqe(), and the clean < blur < noise order."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mriq_validate.cache import DiskCache
from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional.niqe import NiqeModel, _torch_threads, fit_niqe, niqe_scores, prepare_niqe_input
from mriq_validate.metrics.iqa import cached_fit_niqe

N_FIT = 128  # reference slices used to fit (≈ 4–5 sharp blocks each at block_size 32)
N_SCORE = 48  # held-out slices scored per condition


@pytest.fixture(scope="module")
def data(mni):
    """The T1 channel of the builtin MNI-tumour cohort (session fixture from conftest): these are measures of one grey image."""
    return mni.select(["t1"])


@pytest.fixture(scope="module")
def model(data) -> NiqeModel:
    return fit_niqe(data.train.images[:N_FIT])


@pytest.fixture(scope="module")
def conditions(data) -> dict[str, torch.Tensor]:
    from mriq_validate.perturb import apply

    te = data.test.subset(np.arange(N_SCORE))
    return {
        "clean": te.images,
        "blur": apply("gaussian_blur", te.images, te.masks, seed=0, sigma=1.5).images,
        "noise": apply("rician", te.images, te.masks, seed=0, sigma=0.1).images,
    }


def test_model_shape_and_psd(model: NiqeModel) -> None:
    assert model.mu.shape == (36,) and model.cov.shape == (36, 36)
    assert model.block_size == 32 and model.n_blocks > 36
    np.testing.assert_allclose(model.cov, model.cov.T, atol=1e-12)
    assert np.linalg.eigvalsh(model.cov).min() > 0
    assert model.config["n_images"] == N_FIT and model.config["sharpness_threshold"] == 0.75


def test_save_load_roundtrip(model: NiqeModel, tmp_path) -> None:
    p = tmp_path / "niqe.npz"
    model.save(p)
    back = NiqeModel.load(p)
    assert np.array_equal(back.mu, model.mu) and np.array_equal(back.cov, model.cov)
    assert (back.block_size, back.n_blocks, back.config) == (model.block_size, model.n_blocks, model.config)
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(MetricError, match="not a saved NiqeModel"):
        NiqeModel.load(tmp_path / "bad.npz")


def test_cached_fit_is_reused(data, tmp_path) -> None:
    cache = DiskCache(tmp_path)
    x = data.train.images[:16]
    first = cached_fit_niqe(x, cache)
    files = list((tmp_path / "niqe").glob("*.npz"))
    assert len(files) == 1
    again = cached_fit_niqe(x, cache)
    assert np.array_equal(first.mu, again.mu) and np.array_equal(first.cov, again.cov)
    assert list((tmp_path / "niqe").glob("*.npz")) == files
    cached_fit_niqe(x, cache, block_size=16)
    assert len(list((tmp_path / "niqe").glob("*.npz"))) == 2


def test_wrapper_equals_bare_pyiqa_and_is_batch_invariant(model: NiqeModel, conditions) -> None:
    from pyiqa.archs.niqe_arch import niqe

    x = conditions["clean"][:6]
    ours = niqe_scores(x, model)
    img = torch.round(x.double() * 255)
    with _torch_threads(1):
        bare = niqe(img, torch.from_numpy(model.mu).repeat(6, 1), torch.from_numpy(model.cov).repeat(6, 1, 1),
                    block_size_h=32, block_size_w=32).numpy()
    np.testing.assert_allclose(ours, bare, rtol=1e-12)
    np.testing.assert_allclose(niqe_scores(x, model, batch_size=1), ours, rtol=1e-9)


def test_order_clean_lt_blur_lt_noise(model: NiqeModel, conditions) -> None:
    t0 = time.perf_counter()
    means = {k: float(niqe_scores(v, model).mean()) for k, v in conditions.items()}
    ms = (time.perf_counter() - t0) / (len(conditions) * N_SCORE) * 1e3
    print(f"NIQE means (block 32, fit on {N_FIT} train slices): {({k: round(v, 3) for k, v in means.items()})}; {ms:.1f} ms/slice")
    assert means["clean"] < means["blur"] < means["noise"], means


def test_threads_setting_is_restored(model: NiqeModel, conditions) -> None:
    before = torch.get_num_threads()
    niqe_scores(conditions["clean"][:2], model, threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(MetricError, match="threads"):
        niqe_scores(conditions["clean"][:2], model, threads=0)
    assert torch.get_num_threads() == before


def test_input_validation(model: NiqeModel) -> None:
    with pytest.raises(MetricError, match="images: expected n×1×H×W"):
        niqe_scores(torch.rand(2, 3, 64, 64), model)
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        niqe_scores(torch.rand(2, 1, 64, 64) * 2, model)
    with pytest.raises(MetricError, match="fewer than 2 blocks"):
        niqe_scores(torch.rand(2, 1, 40, 40), model)
    with pytest.raises(MetricError, match="block_size"):
        prepare_niqe_input(torch.rand(1, 1, 64, 64), block_size=7)
    with pytest.raises(MetricError, match="model"):
        niqe_scores(torch.rand(1, 1, 64, 64), model={"mu": 0})  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="sharp blocks"):
        fit_niqe(torch.rand(1, 1, 64, 64))
