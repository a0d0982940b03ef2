"""Downstream Dice: known answers, deterministic training, the segmenter competence check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mriq_validate.errors import MetricError
from mriq_validate.metrics.functional.downstream import dice_per_image
from mriq_validate.segmenter import SegmenterConfig, train_segmenter
from mriq_validate.segnets import cpu_threads


def masks(*pixels: list[tuple[int, int]]) -> torch.Tensor:
    out = torch.zeros(len(pixels), 1, 8, 8, dtype=torch.bool)
    for i, px in enumerate(pixels):
        for y, x in px:
            out[i, 0, y, x] = True
    return out


def test_dice_known_answers() -> None:
    a = masks([(1, 1), (1, 2)], [(1, 1)], [], [], [(3, 3), (3, 4)])
    b = masks([(1, 1), (1, 2)], [(5, 5)], [], [(2, 2)], [(3, 3)])
    np.testing.assert_allclose(dice_per_image(a, b), [1.0, 0.0, 1.0, 0.0, 2 / 3])


def test_training_is_deterministic_on_cpu(mni) -> None:
    cfg = SegmenterConfig(channels=(4, 8), strides=(2,), num_res_units=0, epochs=2, batch_size=8)
    x, y = mni.train.images[:16], mni.train.masks[:16]
    net1, _ = train_segmenter(x, y, 4, cfg, torch.device("cpu"))
    net2, _ = train_segmenter(x, y, 4, cfg, torch.device("cpu"))
    for (k, v1), v2 in zip(net1.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(v1, v2), k
    net3, _ = train_segmenter(x, y, 4, SegmenterConfig(**{**cfg.__dict__, "seed": 1}), torch.device("cpu"))
    assert not all(torch.equal(a, b) for a, b in zip(net1.state_dict().values(), net3.state_dict().values()))


def test_training_reports_progress_and_restores_threads(mni, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRIQ_TORCH_THREADS", raising=False)
    cfg = SegmenterConfig(channels=(4, 8), strides=(2,), num_res_units=0, epochs=2, batch_size=8)
    lines: list[str] = []
    before = torch.get_num_threads()
    _, history = train_segmenter(mni.train.images[:16], mni.train.masks[:16], 4, cfg, torch.device("cpu"), lines.append)
    assert torch.get_num_threads() == before and history["cpu_threads"] == 1 and history["device"] == "cpu"
    assert [line.split(" loss")[0] for line in lines] == ["segmenter unet: epoch 1/2", "segmenter unet: epoch 2/2"]
    assert all("epochs/s, 16 slices, cpu)" in line for line in lines)


def test_cpu_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRIQ_TORCH_THREADS", raising=False)
    assert cpu_threads() == 1
    monkeypatch.setenv("MRIQ_TORCH_THREADS", "0")
    assert cpu_threads() is None
    monkeypatch.setenv("MRIQ_TORCH_THREADS", "3")
    assert cpu_threads() == 3
    for bad in ("two", "-1"):
        monkeypatch.setenv("MRIQ_TORCH_THREADS", bad)
        with pytest.raises(MetricError, match="MRIQ_TORCH_THREADS"):
            cpu_threads()


def test_labels_outside_the_classes_are_an_error(mni) -> None:
    y = mni.train.masks[:4].clone()
    y[0, 0, 0, 0] = 9
    with pytest.raises(MetricError, match=r"labels \[0, 1, 2, 3, 9\], outside the 4 classes"):
        train_segmenter(mni.train.images[:4], y, 4, SegmenterConfig(epochs=1), torch.device("cpu"))


@pytest.mark.parametrize("params, message", [({"network": "vit"}, "segmenter.network 'vit' unknown"),
                                             ({"strides": [2]}, "strides .* must have one entry fewer"),
                                             ({"epochs": 0}, "must be positive"), ({"optimiser": "sgd"}, "unknown field")])
def test_segmenter_config_errors(params: dict, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        SegmenterConfig.from_params(params)
