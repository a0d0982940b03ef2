"""Models of volumes: images N×C×D×H×W for masks N×1×D×H×W through every model path (builtin stand-ins,
python file in the model process, TorchScript, a folder of NIfTI volumes, the export-masks layout), and the message
each wrong output gives."""

from __future__ import annotations

import json
import tempfile
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from mriq_validate.data.core import ReferenceData, Split
from mriq_validate.data.preprocess import axial_to_display
from mriq_validate.errors import ModelError
from mriq_validate.folder_model import MANIFEST, write_mask_folder
from mriq_validate.models import BUILTIN_MODELS, ModelAdapter, ModelContext, build_user_model, check_images, check_masks, load_model

SHAPE = (16, 24, 24)  # D×H×W
SPACING = (2.0, 1.5, 1.25)  # D, H, W in mm: distinct, so an axis mix-up shows
CONTRASTS = ("t1", "flair")
LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}


def _volumes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` volumes 2×16×24×24: an ellipsoidal head with texture and a nested spherical lesion (labels 1-3) brighter
    in each contrast, at a random place."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(s, dtype=float) for s in SHAPE), indexing="ij")
    head = sum(((g - s / 2) / (0.45 * s)) ** 2 for g, s in zip((zz, yy, xx), SHAPE)) < 1
    images, masks = [], []
    for _ in range(n):
        centre = rng.integers(5, 11), rng.integers(7, 17), rng.integers(7, 17)
        r = np.sqrt(sum((g - c) ** 2 for g, c in zip((zz, yy, xx), centre)))
        m = np.select([r < 1.0, r < 2.2, r < 3.5], [1, 3, 2], 0) * head
        base = head * (0.4 + 0.1 * rng.random(SHAPE))
        images.append(np.stack([np.clip(base + 0.25 * (k + 1) * (m > 0), 0, 1) for k in range(len(CONTRASTS))]))
        masks.append(m[None])
    return torch.tensor(np.stack(images), dtype=torch.float32), torch.tensor(np.stack(masks), dtype=torch.int64)


def volume_data() -> ReferenceData:
    """6 training and 4 test volumes of two contrasts at 2 × 1.5 × 1.25 mm."""
    (tri, trm), (tei, tem) = _volumes(6, 0), _volumes(4, 1)
    return ReferenceData("test-volumes", Split(tri, trm, tuple(f"case-{i}" for i in range(6))),
                         Split(tei, tem, tuple(f"case:{i + 6}" for i in range(4))), dict(LABELS),
                         {"whole_tumour": (1, 2, 3)}, SPACING, CONTRASTS, {})


@pytest.fixture(scope="module")
def data() -> ReferenceData:
    return volume_data()


@pytest.fixture(scope="module")
def ctx(data: ReferenceData) -> ModelContext:
    return ModelContext.for_data(data, torch.device("cpu"), 0)


@pytest.fixture(autouse=True)
def _temp_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


# ---------------------------------------------------------------- output checks


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(2, 2, 8, 24, 24), r"returned shape \(2, 2, 8, 24, 24\); expected \(2, 2, 16, 24, 24\): one channel per contrast "
                                      r"t1, flair \(volumes N×C×D×H×W\)"),
        (torch.rand(2, 2, 24, 24), r"returned shape \(2, 2, 24, 24\); expected \(2, 2, 16, 24, 24\).*\(4 axes: a volume model must "
                                   r"return N volumes C×D×H×W, not slices N×C×H×W\)"),
        (torch.rand(2, 1, 16, 24, 24), r"returned shape \(2, 1, 16, 24, 24\); expected \(2, 2, 16, 24, 24\).*\(1 channel\(s\) for 2 "
                                       r"contrast\(s\)"),
        (torch.rand(2, 2, 24, 24, 16), r"returned shape \(2, 2, 24, 24, 16\).*the spatial axes in another order: volumes are D×H×W"),
        (torch.rand(2, 1, 2, 16, 24, 24), r"returned shape \(2, 1, 2, 16, 24, 24\).*\(an extra axis: drop it\)"),
        (torch.full((2, 2, 16, 24, 24), float("nan")), r"non-finite values \(NaN/inf\) in image\(s\) \[0, 1\]"),
    ],
)
def test_a_wrong_volume_says_what_was_expected(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        check_images(bad, 2, (2, *SHAPE), "model m generate()", CONTRASTS)


def test_masks_of_volumes_are_checked() -> None:
    assert check_masks(torch.zeros(2, 1, *SHAPE), 2, (1, *SHAPE), {1, 2, 3}, "m").dtype == torch.int64
    with pytest.raises(ModelError, match=r"returned masks \(2, 1, 24, 24\); expected a tensor of shape \(2, 1, 16, 24, 24\) "
                                         r"\(volumes N×1×D×H×W\)"):
        check_masks(torch.zeros(2, 1, 24, 24), 2, (1, *SHAPE), {1, 2, 3}, "model m sample()")


# ---------------------------------------------------------------- builtin stand-ins


def test_builtin_stand_ins_return_checked_volumes(data: ReferenceData, ctx: ModelContext) -> None:
    masks, real = data.test.masks, data.test.images
    models = {name: load_model(f"builtin:{name}", ctx, data) for name in BUILTIN_MODELS}
    out = {name: m.generate(masks, seed=3) for name, m in models.items()}
    assert all(o.shape == real.shape and o.dtype == torch.float32 for o in out.values())
    assert torch.equal(out["real"], real)
    train = {img.numpy().tobytes() for img in data.train.images}
    assert all(img.numpy().tobytes() in train for img in out["memoriser"])
    lesion = (masks > 0).expand_as(real)
    assert torch.equal(out["tumour-eraser"][~lesion], real[~lesion]) and not torch.equal(out["tumour-eraser"], real)
    # collapse pastes the lesion in 3D: beyond the paste's reach (dilation 2 + Gaussian sigma 1 truncated at 4 sigma =
    # 6 voxels along each axis) from both lesions, volumes 0 and 2 share one anatomy (N_MODES = 2)
    far = ~ndimage.binary_dilation(((masks[0, 0] > 0) | (masks[2, 0] > 0)).numpy(), np.ones((3, 3, 3)), iterations=7)
    far_t = torch.from_numpy(far).expand(len(CONTRASTS), -1, -1, -1)
    assert far.sum() > 0.1 * far.size and torch.equal(out["collapse"][0][far_t], out["collapse"][2][far_t])
    images, sampled = models["memoriser"].sample(3, seed=0)
    assert images.shape == (3, 2, *SHAPE) and sampled is not None and sampled.shape == (3, 1, *SHAPE)
    # descriptions measure lengths in voxels for volumes, in px for slices
    assert "sigma=1.5 voxels" in models["blurry"].provenance["behaviour"]
    assert BUILTIN_MODELS["blurry"].describe(2) == BUILTIN_MODELS["blurry"].behaviour and " px" in BUILTIN_MODELS["blurry"].behaviour


# ---------------------------------------------------------------- user code: python file (model process) and TorchScript

MODEL = textwrap.dedent(
    """\
    import torch

    class Volumes:
        def __init__(self, ctx):
            assert len(ctx.image_shape) == 4 and ctx.train_images.ndim == 5, (ctx.image_shape, ctx.train_images.shape)
            self.ctx = ctx

        def generate(self, masks, *, seed):
            g = torch.Generator().manual_seed(seed)
            c = self.ctx.image_shape[0]
            out = 0.5 * (masks > 0).float().repeat(1, c, 1, 1, 1) + 0.4 * torch.rand(masks.shape[0], c, *masks.shape[2:], generator=g)
            if seed == 1:
                return out[:, :, :-1]  # one slice short
            if seed == 2:
                return out[:, :, 0]  # slices instead of volumes
            if seed == 3:
                out[0, 0, 0, 0, 0] = float("nan")
            return out

        def sample(self, n, *, seed):
            return self.generate(self.ctx.train_masks[:n], seed=seed), self.ctx.train_masks[:n]

    def build(ctx): return Volumes(ctx)
    """
)


def test_a_python_model_in_the_model_process_returns_volumes(tmp_path: Path, data: ReferenceData, ctx: ModelContext) -> None:
    path = tmp_path / "vol_model.py"
    path.write_text(MODEL)
    spec = f"{path}:build"
    model = load_model(spec, ctx, data, timeout=60)
    try:
        assert model.provenance["isolation"] == "process"
        in_process = ModelAdapter(build_user_model("python-file", str(path), "build", spec, ctx), spec, ctx)
        out = model.generate(data.test.masks, seed=0)
        assert out.shape == (4, 2, *SHAPE) and torch.equal(out, in_process.generate(data.test.masks, seed=0))  # bit for bit
        images, masks = model.sample(3, seed=5)
        assert images.shape == (3, 2, *SHAPE) and masks is not None and torch.equal(masks, data.train.masks[:3])
        wrong = {1: r"returned shape \(4, 2, 15, 24, 24\); expected \(4, 2, 16, 24, 24\)",
                 2: r"returned shape \(4, 2, 24, 24\).*not slices N×C×H×W",
                 3: r"non-finite values \(NaN/inf\) in image\(s\) \[0\]"}
        for seed, message in wrong.items():
            with pytest.raises(ModelError, match=message):
                model.generate(data.test.masks, seed=seed)
        assert torch.equal(model.generate(data.test.masks, seed=0), out)  # the child serves on
    finally:
        model.close()


class _Net3d(torch.nn.Module):
    """A scripted 3D network: one Conv3d from the mask to C channels and a sigmoid, plus seeded noise."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, channels, 3, padding=1)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.conv(masks))
        return (0.9 * x + 0.1 * torch.rand_like(x)).clamp(0, 1)


def test_a_torchscript_3d_network(tmp_path: Path, data: ReferenceData, ctx: ModelContext) -> None:
    torch.manual_seed(0)
    torch.jit.script(_Net3d(2)).save(str(tmp_path / "net.pt"))
    model = load_model(str(tmp_path / "net.pt"), ctx, data, timeout=60)
    try:
        out = model.generate(data.test.masks[:2], seed=4)
        assert out.shape == (2, 2, *SHAPE) and torch.equal(out, model.generate(data.test.masks[:2], seed=4))
    finally:
        model.close()
    torch.jit.script(_Net3d(1)).save(str(tmp_path / "one.pt"))
    one = load_model(str(tmp_path / "one.pt"), ctx, data, timeout=60)
    try:
        with pytest.raises(ModelError, match=r"expected \(2, 2, 16, 24, 24\): one channel per contrast t1, flair \(volumes N×C×D×H×W\)"):
            one.generate(data.test.masks[:2], seed=0)
    finally:
        one.close()


# ---------------------------------------------------------------- folders of NIfTI volumes


def to_xyz(volume: np.ndarray) -> np.ndarray:
    """The inverse of the data's grid: D×H×W (or C×D×H×W) back to RAS X×Y×Z (X×Y×Z×C). Each D-slice is
    ``axial_to_display`` of an axial X×Y slice, so it is undone slice by slice."""
    v = np.moveaxis(volume, 0, -1) if volume.ndim == 4 else volume  # D×H×W×C
    out = np.stack([np.rot90(v[d], -1) for d in range(v.shape[0])], axis=2)  # X×Y×Z(×C)
    assert np.array_equal(axial_to_display(out[:, :, 0]), v[0])
    return out


def ras_affine(spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    """A RAS affine with voxel sizes (x, y, z) = (W, H, D) spacing."""
    return np.diag([spacing[2], spacing[1], spacing[0], 1.0])


def save_nifti(path: Path, xyz: np.ndarray, affine: np.ndarray, lps: bool = False) -> Path:
    """``xyz`` (RAS) saved as NIfTI; with ``lps`` flipped to LPS storage, the affine saying so."""
    if lps:
        xyz = xyz[::-1, ::-1].copy()
        shape = xyz.shape[:3]
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1  # voxel index i → n-1-i
        affine = affine @ flip
    nib.save(nib.Nifti1Image(xyz, affine), str(path))
    return path


def test_a_folder_of_nifti_volumes_in_any_orientation(tmp_path: Path, data: ReferenceData, ctx: ModelContext) -> None:
    """One 4D file per case (X×Y×Z×C) stored as LPS, or one file per contrast (RAS), with masks: read onto the data's
    grid, the model returns the volumes exactly."""
    for i in range(3):
        img, mask = data.test.images[i].numpy(), data.test.masks[i, 0].numpy()
        if i == 1:
            for k, c in enumerate(CONTRASTS):
                save_nifti(tmp_path / f"case{i}_{c}.nii.gz", to_xyz(img[k]), ras_affine())
        else:
            save_nifti(tmp_path / f"case{i}.nii.gz", to_xyz(img), ras_affine(), lps=True)
        save_nifti(tmp_path / f"case{i}_seg.nii.gz", to_xyz(mask.astype(np.uint8)), ras_affine(), lps=i == 0)
    model = load_model(str(tmp_path), ctx, data)
    images, masks = model.sample(None, seed=0)
    assert torch.equal(images, data.test.images[:3]) and torch.equal(masks, data.test.masks[:3])


def _one_volume(folder: Path, data: ReferenceData, affine: np.ndarray | None = None, image: np.ndarray | None = None) -> Path:
    folder.mkdir()
    save_nifti(folder / "a.nii.gz", to_xyz(data.test.images[0].numpy()) if image is None else image,
               ras_affine() if affine is None else affine)
    return folder


def test_a_nifti_volume_of_the_wrong_grid_names_the_file(tmp_path: Path, data: ReferenceData, ctx: ModelContext) -> None:
    bad = _one_volume(tmp_path / "spacing", data, ras_affine((2.0, 1.0, 1.25)))
    with pytest.raises(ModelError, match=r"spacing/a.nii.gz: voxel spacing \(2, 1, 1.25\) mm \(D, H, W, from the NIfTI affine\); "
                                         r"expected the data's \(2, 1.5, 1.25\) mm"):
        load_model(str(bad), ctx, data)
    bad = _one_volume(tmp_path / "shape", data, image=to_xyz(data.test.images[0].numpy())[:, :, :-2])
    with pytest.raises(ModelError, match=r"shape/a.nii.gz: NIfTI of shape 24×24×14×2 \(X×Y×Z×C\); expected the data's grid, "
                                         r"D×H×W = 16×24×24 \(X×Y×Z = 24×24×16 in RAS\), got 2×14×24×24"):
        load_model(str(bad), ctx, data)
    bad = _one_volume(tmp_path / "contrasts", data, image=to_xyz(data.test.images[0].numpy())[..., :1])
    with pytest.raises(ModelError, match=r"contrasts/a.nii.gz: array of shape \(1, 16, 24, 24\); expected the 2 contrasts "
                                         r"\(t1, flair\) of one volume, 2×16×24×24"):
        load_model(str(bad), ctx, data)
    missing = tmp_path / "missing"
    missing.mkdir()
    save_nifti(missing / "a_t1.nii.gz", to_xyz(data.test.images[0, 0].numpy()), ras_affine())
    with pytest.raises(ModelError, match=r"'a' has a_t1.nii.gz but no a_flair.nii.gz; expected one file per contrast"):
        load_model(str(missing), ctx, data)
    png = tmp_path / "png"
    png.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((24, 24), np.uint8)).save(png / "a.png")
    with pytest.raises(ModelError, match=r"a.png: a PNG holds a 2D slice; the data are volumes \(D×H×W = 16×24×24\)"):
        load_model(str(png), ctx, data)


def _grid_writer(path: Path, item_id: str, mask: np.ndarray) -> None:
    save_nifti(path, to_xyz(mask), ras_affine())


def test_the_export_layout_of_volumes_is_a_mask_conditioned_model(tmp_path: Path, data: ReferenceData, ctx: ModelContext) -> None:
    """Masks exported as NIfTI volumes, the model's volumes saved beside them (.nii.gz, X×Y×Z×C): generate(masks) gives
    them back for the exported masks; a missing mask file names the file."""
    out = tmp_path / "export"
    splits = {s: (getattr(data, s).ids, getattr(data, s).masks) for s in ("test", "train")}
    manifest = write_mask_folder(out, splits, contrasts=CONTRASTS, image_shape=data.image_shape, labels=LABELS, source={},
                                 save_volume=_grid_writer)
    assert manifest["image_shape"] == [2, *SHAPE] and "<stem>_seg.nii.gz" in manifest["naming"]
    stems = [e["stem"] for e in manifest["splits"]["test"]]
    assert stems == ["case_6", "case_7", "case_8", "case_9"]
    back = nib.load(str(out / "test" / "case_6_seg.nii.gz"))
    assert back.header.get_zooms() == (1.25, 1.5, 2.0) and np.array_equal(np.asarray(back.dataobj), to_xyz(data.test.masks[0, 0].numpy()))
    for stem, img in zip(stems, data.test.images):
        save_nifti(out / "test" / f"{stem}.nii.gz", to_xyz(img.numpy()), ras_affine())
    model = load_model(str(out), ctx, data)
    assert model.provenance["splits"]["test"] == {"masks": 4, "images": 4}
    assert torch.equal(model.generate(data.test.masks, seed=0), data.test.images)
    assert torch.equal(model.generate(data.test.masks[2:3], seed=0), data.test.images[2:3])
    with pytest.raises(ModelError, match=r"no images for the train masks: save one per mask in .*train/ as <stem>.nii.gz"):
        model.generate(data.train.masks, seed=0)
    (out / "test" / "case_7_seg.nii.gz").unlink()
    with pytest.raises(ModelError, match=r"case_7_seg.nii.gz: the mask of volume 'case:7' listed in mriq_masks.json is missing"):
        load_model(str(out), ctx, data)
    assert json.loads((out / MANIFEST).read_text())["splits"]["test"][1]["id"] == "case:7"
