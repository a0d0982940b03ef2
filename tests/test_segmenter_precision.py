"""Segmenter precision (fp32 | bf16), memory-mapped inputs, ``predict(out=)`` and one GPU per xdist worker."""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate import arrays
from mriq_validate.cache import content_hash
from mriq_validate.errors import MetricError, SuiteError
from mriq_validate.metrics.features import check_features, pooled_activations, unet_encoder_blocks
from mriq_validate.metrics.functional.downstream import dice_per_image
from mriq_validate.segmenter import TRAINER_VERSION, Segmenter, SegmenterConfig, segmenter_key, train_segmenter
from mriq_validate.devices import worker_device
from mriq_validate.suite import load_suite
from test_suite_schema import VALID  # the minimal valid suite (tests/ is on sys.path)

CPU = torch.device("cpu")
TOY = SegmenterConfig(channels=(4, 8, 16), strides=(2, 2), epochs=12, batch_size=8, lr=1e-2)


def toy(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy two-contrast slices, each with a bright disc (label 1) holding a brighter core (label 2)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.randint(8, size - 8, (n, 2), generator=g)
    r = torch.sqrt((yy[None] - c[:, :1, None]) ** 2 + (xx[None] - c[:, 1:, None]) ** 2)
    masks = ((r < 6).long() + (r < 3).long())[:, None]
    images = (0.2 + 0.25 * masks.float() + 0.08 * torch.randn(n, 2, size, size, generator=g)).clamp(0, 1)
    return images, masks


# ------------------------------------------------------------------------------------------------ the precision field
def test_precision_field_is_validated() -> None:
    assert SegmenterConfig().precision == "fp32"
    assert SegmenterConfig.from_params({"precision": "bf16"}).precision == "bf16"
    for bad in ("fp16", "half", 16, None):
        with pytest.raises(MetricError, match=r"segmenter\.precision .* unknown; expected one of \['bf16', 'fp32'\]"):
            SegmenterConfig.from_params({"precision": bad}, "metric 'dice': ")
    assert check_features({"precision": "bf16"})["precision"] == "bf16"
    assert check_features({})["precision"] == "fp32"
    with pytest.raises(MetricError, match=r"features: segmenter option precision 'fp8' unknown"):
        check_features({"precision": "fp8"})


def test_suite_load_error_names_the_precision_key(tmp_path: Path) -> None:
    suite = VALID.replace("params: {region: whole_tumour}", "params: {region: whole_tumour, segmenter: {precision: fp16}}")
    path = tmp_path / "suite.yaml"
    path.write_text(suite)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert f"{path}:9: mriq_suite.criteria[0].params.segmenter.precision: " in str(err.value) and "'fp16'" in str(err.value)
    path.write_text(suite.replace("fp16", "bf16"))
    assert load_suite(path).criteria[0].params["segmenter"] == {"precision": "bf16"}


def test_cache_key_unchanged_for_fp32() -> None:
    x, y = toy(8)
    # the key as computed before precision existed: the resolved 2D default's fields, without precision
    before = {"network": "unet", "channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 0, "epochs": 40, "batch_size": 16,
              "lr": 1e-2, "loss": "dice_ce", "augment": "flip", "seed": 0}
    expected = content_hash(TRAINER_VERSION, before, 3, x, y)
    assert segmenter_key(x, y, 3, SegmenterConfig()) == expected
    assert segmenter_key(x, y, 3, SegmenterConfig.from_params({"precision": "fp32"})) == expected
    assert segmenter_key(x, y, 3, SegmenterConfig(precision="bf16")) != expected


# ------------------------------------------------------------------------------------------------------- bf16 training
@pytest.fixture(scope="module")
def toy_dice() -> dict[str, list[float]]:
    """Mean foreground Dice on held-out toy slices of fp32 training (3 seeds) and of bf16 training (seed 0)."""
    x, y = toy(48, seed=0)
    xt, yt = toy(32, seed=1)
    out: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision, seeds in (("fp32", (0, 1, 2)), ("bf16", (0,))):
        for seed in seeds:
            cfg = replace(TOY, seed=seed, precision=precision)
            net, history = train_segmenter(x, y, 3, cfg, CPU)
            assert all(np.isfinite(history["loss"]))
            pred = Segmenter(net, 3, cfg.resolve(2), "toy", CPU).predict(xt)
            out[precision].append(float(dice_per_image(pred > 0, yt > 0).mean()))
    return out


def test_bf16_training_dice_within_fp32_seed_spread(toy_dice: dict[str, list[float]]) -> None:
    fp32, (bf16,) = toy_dice["fp32"], toy_dice["bf16"]
    assert statistics.fmean(fp32) > 0.8, fp32  # the toy problem is learnt, so the comparison means something
    # Tolerance: 4 fp32 seed-to-seed SDs. Measured on this toy (CPU): fp32 Dice 0.967 / 0.978 / 0.969 (seeds 0-2, SD
    # 0.006), bf16 0.966 (seed 0), a difference of one SD.
    sd = statistics.stdev(fp32)
    assert abs(bf16 - statistics.fmean(fp32)) <= 4 * sd, (bf16, fp32)


def test_bf16_inference_and_features_return_the_usual_types() -> None:
    x, y = toy(16)
    cfg = replace(TOY, epochs=2, precision="bf16")
    net, history = train_segmenter(x, y, 3, cfg, CPU)
    assert history["precision"] == "bf16"
    pred = Segmenter(net, 3, cfg.resolve(2), "toy", CPU).predict(x)
    assert pred.dtype == torch.int64 and pred.shape == y.shape
    blocks = unet_encoder_blocks(net)
    f32 = pooled_activations(net, blocks, x, CPU, precision="fp32")
    f16 = pooled_activations(net, blocks, x, CPU, precision="bf16")
    assert f32.dtype == f16.dtype == np.float64 and f32.shape == f16.shape == (16, 4 + 8 + 16 + 16)  # every encoder level, the bottom one included
    # bfloat16 keeps 8 significant bits (relative error 2^-8 per operation); measured here: largest difference 0.006
    # (features up to 0.38), largest relative difference 0.035
    assert np.allclose(f16, f32, rtol=0.05, atol=0.02), np.abs(f16 - f32).max()


# ---------------------------------------------------------------------------------------------------- mapped inputs
def test_mapped_inputs_train_and_predict_as_in_memory(tmp_path: Path) -> None:
    x, y = toy(20, size=30)  # 30 is not divisible by 4: batches are padded one by one
    arrays.write_bundle(tmp_path / "set.bundle", {"images": x, "masks": y.to(torch.uint8)})
    got, _ = arrays.read_bundle(tmp_path / "set.bundle")
    xm, ym = arrays.as_tensor(got["images"]), arrays.as_tensor(got["masks"])
    cfg = replace(TOY, epochs=2)
    net, _ = train_segmenter(x, y, 3, cfg, CPU)
    net_m, _ = train_segmenter(xm, ym, 3, cfg, CPU)
    for (k, a), b in zip(net.state_dict().items(), net_m.state_dict().values()):
        assert torch.equal(a, b), k
    seg = Segmenter(net, 3, cfg.resolve(2), "toy", CPU)
    expected = seg.predict(x, batch_size=8)
    assert torch.equal(seg.predict(xm, batch_size=8), expected)
    out = arrays.as_tensor(arrays.scratch_array(tmp_path / "pred.bundle", tuple(y.shape), np.uint8))
    assert seg.predict(xm, batch_size=8, out=out) is out
    assert torch.equal(out.long(), expected)
    for bad in (torch.zeros(20, 1, 30, 30), torch.zeros(19, 1, 30, 30, dtype=torch.uint8)):
        with pytest.raises(MetricError, match="out="):
            seg.predict(x, out=bad)


# -------------------------------------------------------------------------------------------- one GPU per xdist worker
@pytest.mark.parametrize("name, worker, n_gpus, expected", [
    ("cuda", "gw0", 4, "cuda:0"), ("cuda", "gw5", 4, "cuda:1"), ("cuda", "gw3", 1, "cuda:0"),
    ("cuda", None, 4, "cuda"), ("cuda", "master", 4, "cuda"), ("cuda", "gw2", 0, "cuda"),
    ("cpu", "gw1", 4, "cpu"), ("cuda:3", "gw1", 4, "cuda:3"),
])
def test_worker_device(name: str, worker: str | None, n_gpus: int, expected: str) -> None:
    assert worker_device(name, worker, n_gpus) == expected
