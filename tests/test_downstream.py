"""Downstream Dice: known answers, deterministic training, the segmenter competence check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mriq_validate.downstream import SegmenterConfig, dice_per_image, train_segmenter
from mriq_validate.errors import MetricError


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
