"""Model adapters: output checks, builtin stand-ins, python-file / module / folder / TorchScript forms, for one contrast
and for several (images N×C×H×W, one channel per contrast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from contrast_data import channel_variants

from mriq_validate.errors import ModelError
from mriq_validate.models import BUILTIN_MODELS, ModelContext, check_images, check_masks, load_model


@pytest.fixture(scope="module", params=["C1", "C3"])
def data(request: pytest.FixtureRequest, mni):  # type: ignore[no-untyped-def]
    """The embedded data with one contrast and with three."""
    return channel_variants(mni)[request.param]


@pytest.fixture(scope="module")
def ctx(data) -> ModelContext:
    return ModelContext.for_data(data, torch.device("cpu"), 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((2, 1, 8, 8), float("nan")), r"non-finite values \(NaN/inf\) in image\(s\) \[0, 1\]"),
        (torch.rand(2, 1, 8, 4), r"returned shape \(2, 1, 8, 4\); expected \(2, 1, 8, 8\)"),
        (torch.rand(3, 1, 8, 8), r"returned shape \(3, 1, 8, 8\); expected \(2, 1, 8, 8\)"),
        (torch.rand(2, 1, 8, 8) * 255, r"returned values in \[.*\]; expected \[0, 1\]"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r"dtype torch.uint8; expected a floating-point tensor"),
        ([1, 2], r"returned list; expected a torch.Tensor"),
    ],
)
def test_check_images_says_what_was_expected(bad: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        check_images(bad, 2, (1, 8, 8), "model m generate()")


def test_check_images_accepts_numpy_and_float64() -> None:
    out = check_images(np.random.default_rng(0).random((2, 1, 8, 8)), 2, (1, 8, 8), "m")
    assert out.dtype == torch.float32 and out.shape == (2, 1, 8, 8)


def test_check_images_names_the_contrasts() -> None:
    with pytest.raises(ModelError, match=r"returned shape \(8, 1, 16, 16\); expected \(8, 4, 16, 16\): one channel per contrast t1, t1c, t2, "
                                         r"flair \(1 channel\(s\) for 4 contrast\(s\)"):
        check_images(torch.rand(8, 1, 16, 16), 8, (4, 16, 16), "model m generate()", ("t1", "t1c", "t2", "flair"))
    assert check_images(torch.rand(8, 4, 16, 16), 8, (4, 16, 16), "m", ("t1", "t1c", "t2", "flair")).shape == (8, 4, 16, 16)


def test_context_has_one_contrast_per_channel(data) -> None:
    ctx = ModelContext.for_data(data, torch.device("cpu"), 7)
    assert ctx.contrasts == data.contrasts and ctx.image_shape == data.image_shape and len(ctx.contrasts) == ctx.image_shape[0]
    with pytest.raises(ModelError, match=r"contrasts \['t1', 't2'\] but image_shape \(3, 8, 8\); expected one contrast per channel"):
        ModelContext(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), (3, 8, 8), torch.device("cpu"), 0, {}, ("t1", "t2"))


def test_check_masks_names_labels_outside_the_set() -> None:
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    masks[0, 0, 0, 0] = 7
    with pytest.raises(ModelError, match=r"labels \[7\] are outside the data's label set \[0, 1, 2, 3\]"):
        check_masks(masks, 2, (1, 8, 8), {1, 2, 3}, "model m sample()")


def test_builtin_real_returns_the_real_images(data, ctx) -> None:
    model = load_model("builtin:real", ctx, data)
    out = model.generate(data.test.masks[:5], seed=1)
    assert out.shape == (5, *data.image_shape) and torch.equal(out, data.test.images[:5])
    with pytest.raises(ModelError, match="only for the reference data's masks"):
        model.generate(torch.zeros(1, 1, 128, 128, dtype=torch.long), seed=0)


def test_builtin_stand_ins_behave_as_declared(data, ctx) -> None:
    masks = data.test.masks[:8]
    real = data.test.images[:8]
    c = real.shape[1]
    lesion = (masks > 0).expand_as(real)
    out = {name: load_model(f"builtin:{name}", ctx, data).generate(masks, seed=3) for name in BUILTIN_MODELS}
    assert all(o.shape == real.shape for o in out.values())
    # the eraser changes only lesion pixels, and pulls them towards the surrounding tissue, in every contrast
    assert torch.equal(out["tumour-eraser"][~lesion], real[~lesion])
    assert all(not torch.equal(out["tumour-eraser"][:, k][lesion[:, k]], real[:, k][lesion[:, k]]) for k in range(c))
    # the memoriser returns training images verbatim (every contrast)
    train = {img.numpy().tobytes() for img in data.train.images}
    assert all(img.numpy().tobytes() in train for img in out["memoriser"])
    # noise raises the pixel-wise deviation everywhere; blur lowers the high-frequency energy; in each contrast
    assert all(float((out["noisy"] - real)[:, k].std()) > 0.03 for k in range(c))
    lap = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert all(lap(out["blurry"][:, k]) < 0.8 * lap(real[:, k]) for k in range(c))
    # collapse: the two modes repeat: the background of image 0 and 2 is identical outside the lesions, in every contrast
    far = ~((masks[0] > 0) | (masks[2] > 0))
    far = torch.from_numpy(__import__("scipy").ndimage.binary_erosion(far.numpy(), iterations=4)).expand(c, -1, -1)
    assert torch.equal(out["collapse"][0][far], out["collapse"][2][far])


def test_python_file_factory_gets_the_context(tmp_path: Path, data, ctx) -> None:
    f = tmp_path / "gen.py"
    f.write_text(
        "import torch\n"
        "class M:\n"
        "    def __init__(self, ctx):\n"
        "        assert len(ctx.contrasts) == ctx.image_shape[0] == ctx.train_images.shape[1], (ctx.contrasts, ctx.image_shape)\n"
        "        self.shape = ctx.image_shape; self.n = ctx.train_images.shape[0]\n"
        "    def sample(self, n, *, seed):\n"
        "        g = torch.Generator().manual_seed(seed)\n"
        "        return torch.rand(n, *self.shape, generator=g), torch.zeros(n, 1, *self.shape[1:], dtype=torch.long)\n"
        "def build(ctx): return M(ctx)\n"
    )
    model = load_model(f"{f}:build", ctx, data)
    assert model.provenance["kind"] == "python-file" and len(model.provenance["sha256"]) == 64
    images, masks = model.sample(4, seed=0)
    assert images.shape == (4, *data.image_shape) and masks.shape == (4, 1, 128, 128)
    assert torch.equal(images, model.sample(4, seed=0)[0])


def test_a_context_without_contrasts_gets_the_datas(tmp_path: Path, data) -> None:
    f = tmp_path / "gen.py"
    f.write_text("import torch\n"
                 "class M:\n"
                 "    def __init__(self, ctx): self.c = ctx.contrasts\n"
                 "    def generate(self, masks, *, seed): return masks.float().clamp(0, 1).repeat(1, len(self.c), 1, 1)\n"
                 "def build(ctx): return M(ctx)\n")
    bare = ModelContext(data.train.images, data.train.masks, data.image_shape, torch.device("cpu"), 0, dict(data.labels))
    model = load_model(f"{f}:build", bare, data)
    assert model.ctx.contrasts == data.contrasts
    assert model.generate(data.test.masks[:2], seed=0).shape == (2, *data.image_shape)


def test_module_factory(data, ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mygen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(
        "class Flat:\n"
        "    def __init__(self, ctx): self.c = ctx.image_shape[0]\n"
        "    def generate(self, masks, *, seed): return (masks > 0).float().repeat(1, self.c, 1, 1) * 0.5\n"
        "def build(ctx): return Flat(ctx)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("mygen.model:build", ctx, data)
    assert model.provenance["kind"] == "module"
    out = model.generate(data.test.masks[:2], seed=0)
    assert out.shape == (2, *data.image_shape) and float(out.max()) == 0.5


def test_unknown_forms_are_explained(mni, tmp_path: Path) -> None:
    ctx = ModelContext.for_data(mni, torch.device("cpu"), 0)
    with pytest.raises(ModelError, match="not understood"):
        load_model("gan-v2", ctx, mni)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "missing.py") + ":build", ctx, mni)
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg.gen'"):
        load_model("no_such_pkg.gen:build", ctx, mni)
    obj = tmp_path / "empty.py"
    obj.write_text("def build(ctx): return object()\n")
    with pytest.raises(ModelError, match="has neither generate"):
        load_model(f"{obj}:build", ctx, mni)


def test_folder_of_images_with_masks(tmp_path: Path, data, ctx) -> None:
    for i in range(3):
        np.save(tmp_path / f"case{i}.npy", data.test.images[i].numpy())  # C×H×W (1×H×W for one contrast)
        np.save(tmp_path / f"case{i}_seg.npy", data.test.masks[i, 0].numpy().astype(np.uint8))
    model = load_model(str(tmp_path), ctx, data)
    images, masks = model.sample(None, seed=0)
    assert torch.equal(images, data.test.images[:3]) and torch.equal(masks, data.test.masks[:3])
    with pytest.raises(ModelError, match="holds 3 images; 5 were requested"):
        model.sample(5, seed=0)


def test_folder_errors(tmp_path: Path, data, ctx) -> None:
    with pytest.raises(ModelError, match="holds no images"):
        load_model(str(tmp_path), ctx, data)
    np.save(tmp_path / "a.npy", np.zeros((64, 64)))
    expected = (r"a.npy: array of shape \(64, 64\); expected one 128×128 slice" if data.image_shape[0] == 1 else
                rf"a.npy: array of shape \(64, 64\); expected the 3 contrasts \({', '.join(data.contrasts)}\) of one slice, 3×128×128")
    with pytest.raises(ModelError, match=expected):
        load_model(str(tmp_path), ctx, data)
    (tmp_path / "a.npy").write_bytes(b"not numpy")
    with pytest.raises(ModelError, match="a.npy: cannot be read as .npy"):
        load_model(str(tmp_path), ctx, data)


def test_torchscript_model(tmp_path: Path, data, ctx) -> None:
    class Gen(torch.nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.channels = channels

        def forward(self, masks: torch.Tensor) -> torch.Tensor:
            return ((masks > 0).float() * 0.9 + 0.05).repeat(1, self.channels, 1, 1)

    c = data.image_shape[0]
    torch.jit.script(Gen(c)).save(str(tmp_path / "gen.pt"))
    model = load_model(str(tmp_path / "gen.pt"), ctx, data)
    out = model.generate(data.test.masks[:2], seed=0)
    assert out.shape == (2, c, 128, 128) and float(out.max()) == pytest.approx(0.95)
    if c > 1:  # a one-channel network for multi-contrast data: the error names the contrasts
        torch.jit.script(Gen(1)).save(str(tmp_path / "one.pt"))
        with pytest.raises(ModelError, match=rf"expected \(2, {c}, 128, 128\): one channel per contrast {', '.join(data.contrasts)}"):
            load_model(str(tmp_path / "one.pt"), ctx, data).generate(data.test.masks[:2], seed=0)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a loadable TorchScript file"):
        load_model(str(tmp_path / "bad.pt"), ctx, data)
