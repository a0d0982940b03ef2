"""The report's sample grid: real and generated slices, a pair of rows per contrast, each labelled with its contrast."""

from __future__ import annotations

import numpy as np

from mriq_validate.figures import png_bytes, sample_grid_figure


def _row_labels(fig) -> list[str]:  # type: ignore[no-untyped-def]
    return [ax.get_ylabel() for ax in fig.axes if ax.get_visible() and ax.get_ylabel()]


def test_one_row_pair_per_contrast_labelled_with_its_name() -> None:
    rng = np.random.default_rng(0)
    real, gen = rng.random((4, 3, 16, 16)), rng.random((4, 3, 16, 16))
    masks = np.zeros((4, 1, 16, 16), np.int64)
    masks[:, 0, 4:9, 4:9] = 2
    fig = sample_grid_figure({"real": real, "generated": gen, "masks": masks, "contrasts": np.array(["t1", "t2", "flair"])}, n=3)
    assert _row_labels(fig) == [f"{kind}\n{c}" for c in ("t1", "t2", "flair") for kind in ("real", "generated")]
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 6 * 3
    np.testing.assert_array_equal(shown[3 * 4 + 1], real[1, 2])  # row 5 (real flair), column 2
    assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_contrast_keeps_the_two_rows_and_unnamed_channels_are_numbered() -> None:
    rng = np.random.default_rng(1)
    fig = sample_grid_figure({"real": rng.random((2, 16, 16)), "generated": rng.random((2, 1, 16, 16))})
    assert _row_labels(fig) == ["real", "generated"]
    fig = sample_grid_figure({"real": rng.random((2, 2, 16, 16)), "generated": rng.random((2, 2, 16, 16))}, contrasts=None)
    assert _row_labels(fig) == ["real\nchannel 0", "generated\nchannel 0", "real\nchannel 1", "generated\nchannel 1"]
    assert sample_grid_figure(None) is None and sample_grid_figure({"masks": np.zeros((1, 4, 4))}) is None
