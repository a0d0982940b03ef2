"""Model adapters: output checks, builtin stand-ins, python-file / module / folder / TorchScript forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate.errors import ModelError
from mriq_validate.models import BUILTIN_MODELS, ModelContext, check_images, check_masks, load_model


@pytest.fixture(scope="module")
def ctx(mni) -> ModelContext:
    return ModelContext(mni.train.images, mni.train.masks, mni.image_shape, torch.device("cpu"), 0, dict(mni.labels))


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


def test_check_masks_names_labels_outside_the_set() -> None:
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    masks[0, 0, 0, 0] = 7
    with pytest.raises(ModelError, match=r"labels \[7\] are outside the data's label set \[0, 1, 2, 3\]"):
        check_masks(masks, 2, (1, 8, 8), {1, 2, 3}, "model m sample()")


def test_builtin_real_returns_the_real_images(mni, ctx) -> None:
    model = load_model("builtin:real", ctx, mni)
    out = model.generate(mni.test.masks[:5], seed=1)
    assert torch.equal(out, mni.test.images[:5])
    with pytest.raises(ModelError, match="only for the reference data's masks"):
        model.generate(torch.zeros(1, 1, 128, 128, dtype=torch.long), seed=0)


def test_builtin_stand_ins_behave_as_declared(mni, ctx) -> None:
    masks = mni.test.masks[:8]
    real = mni.test.images[:8]
    lesion = masks > 0
    out = {name: load_model(f"builtin:{name}", ctx, mni).generate(masks, seed=3) for name in BUILTIN_MODELS}
    # the eraser changes only lesion pixels, and pulls them towards the surrounding tissue
    assert torch.equal(out["tumour-eraser"][~lesion], real[~lesion])
    assert not torch.equal(out["tumour-eraser"][lesion], real[lesion])
    # the memoriser returns training images verbatim
    train = {img.numpy().tobytes() for img in mni.train.images}
    assert all(img.numpy().tobytes() in train for img in out["memoriser"])
    # noise raises the pixel-wise deviation everywhere; blur lowers the high-frequency energy
    assert (out["noisy"] - real).std() > 0.03
    lap = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert lap(out["blurry"]) < 0.8 * lap(real)
    # collapse: the two modes repeat: the background of image 0 and 2 is identical outside the lesions
    far = ~((masks[0] > 0) | (masks[2] > 0))
    far = torch.from_numpy(__import__("scipy").ndimage.binary_erosion(far.numpy(), iterations=4))
    assert torch.equal(out["collapse"][0][far], out["collapse"][2][far])


def test_python_file_factory_gets_the_context(tmp_path: Path, mni, ctx) -> None:
    f = tmp_path / "gen.py"
    f.write_text(
        "import torch\n"
        "class M:\n"
        "    def __init__(self, ctx): self.shape = ctx.image_shape; self.n = ctx.train_images.shape[0]\n"
        "    def sample(self, n, *, seed):\n"
        "        g = torch.Generator().manual_seed(seed)\n"
        "        return torch.rand(n, *self.shape, generator=g), torch.zeros(n, *self.shape, dtype=torch.long)\n"
        "def build(ctx): return M(ctx)\n"
    )
    model = load_model(f"{f}:build", ctx, mni)
    assert model.provenance["kind"] == "python-file" and len(model.provenance["sha256_16"]) == 16
    images, masks = model.sample(4, seed=0)
    assert images.shape == (4, 1, 128, 128) and masks.shape == (4, 1, 128, 128)
    assert torch.equal(images, model.sample(4, seed=0)[0])


def test_module_factory(mni, ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mygen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(
        "class Flat:\n"
        "    def generate(self, masks, *, seed): return (masks > 0).float() * 0.5\n"
        "def build(ctx): return Flat()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("mygen.model:build", ctx, mni)
    assert model.provenance["kind"] == "module"
    assert float(model.generate(mni.test.masks[:2], seed=0).max()) == 0.5


def test_unknown_forms_are_explained(mni, ctx, tmp_path: Path) -> None:
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


def test_folder_of_images_with_masks(tmp_path: Path, mni, ctx) -> None:
    for i in range(3):
        np.save(tmp_path / f"case{i}.npy", mni.test.images[i, 0].numpy())
        np.save(tmp_path / f"case{i}_seg.npy", mni.test.masks[i, 0].numpy().astype(np.uint8))
    model = load_model(str(tmp_path), ctx, mni)
    images, masks = model.sample(None, seed=0)
    assert torch.equal(images, mni.test.images[:3]) and torch.equal(masks, mni.test.masks[:3])
    with pytest.raises(ModelError, match="holds 3 images; 5 were requested"):
        model.sample(5, seed=0)


def test_folder_errors(tmp_path: Path, mni, ctx) -> None:
    with pytest.raises(ModelError, match="holds no images"):
        load_model(str(tmp_path), ctx, mni)
    np.save(tmp_path / "a.npy", np.zeros((64, 64)))
    with pytest.raises(ModelError, match=r"a.npy: array of shape \(64, 64\); expected one 128×128 slice"):
        load_model(str(tmp_path), ctx, mni)
    (tmp_path / "a.npy").write_bytes(b"not numpy")
    with pytest.raises(ModelError, match="a.npy: cannot be read as .npy"):
        load_model(str(tmp_path), ctx, mni)


def test_torchscript_model(tmp_path: Path, mni, ctx) -> None:
    class Gen(torch.nn.Module):
        def forward(self, masks: torch.Tensor) -> torch.Tensor:
            return (masks > 0).float() * 0.9 + 0.05

    path = tmp_path / "gen.pt"
    torch.jit.script(Gen()).save(str(path))
    model = load_model(str(path), ctx, mni)
    out = model.generate(mni.test.masks[:2], seed=0)
    assert out.shape == (2, 1, 128, 128) and float(out.max()) == pytest.approx(0.95)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a loadable TorchScript file"):
        load_model(str(tmp_path / "bad.pt"), ctx, mni)
