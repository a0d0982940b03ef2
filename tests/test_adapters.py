"""MONAI bundle folders and diffusers pipeline folders as ``--mriq-model PATH`` (mriq_validate/adapters.py).

Every model here is built by the test (a tiny DiffusionModelUNet / UNet2DModel with a 2-3 step DDIM scheduler,
16×16 images with the four contrasts and three lesion labels of builtin:mni-tumour); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mriq_validate.adapters import DiffusersPipeline, MonaiBundle
from mriq_validate.errors import ModelError
from mriq_validate.models import ModelAdapter, ModelContext, load_model

CONTRASTS = ("t1", "t1c", "t2", "flair")
LABELS = {"necrotic_core": 1, "oedema": 2, "enhancing": 3}
SIZE = 16


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    g = torch.Generator().manual_seed(0)
    return ModelContext(torch.rand(2, 4, SIZE, SIZE, generator=g), masks(2), (4, SIZE, SIZE), torch.device("cpu"), 0, dict(LABELS), CONTRASTS)


def masks(n: int) -> torch.Tensor:
    """``n`` label maps N×1×16×16: a square lesion of necrotic core, oedema ring and enhancing rim, shifted per item."""
    out = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        out[i, 0, 3 + i:11 + i, 4:12] = 2
        out[i, 0, 5 + i:9 + i, 6:10] = 3
        out[i, 0, 6 + i:8 + i, 7:9] = 1
    return out


def unet_config(in_channels: int, out_channels: int = 4, target: str = "monai.networks.nets.DiffusionModelUNet") -> dict[str, Any]:
    return {"_target_": target, "spatial_dims": 2, "in_channels": in_channels, "out_channels": out_channels, "channels": [8, 8],
            "attention_levels": [False, False], "num_res_blocks": 1, "norm_num_groups": 4}


def write_bundle(folder: Path, in_channels: int = 5, out_channels: int = 4, settings: dict[str, Any] | None = None,
                 **overrides: Any) -> Path:
    """A MONAI bundle: configs/metadata.json, configs/inference.json (network_def, DDIM scheduler, DiffusionInferer,
    num_inference_steps) and models/model.pt (the state dict of the network the config builds)."""
    from monai.bundle import ConfigParser

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = {"imports": ["$import torch"], "bundle_root": ".", "device": "$torch.device('cpu')", "num_inference_steps": 3,
              "network_def": unet_config(in_channels, out_channels),
              "scheduler": {"_target_": "monai.networks.schedulers.DDIMScheduler", "num_train_timesteps": 20},
              "inferer": {"_target_": "monai.inferers.DiffusionInferer", "scheduler": "@scheduler"}, **overrides}
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny_ddim", "version": "0.1.0"}))
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    network = ConfigParser(unet_config(in_channels, out_channels)).get_parsed_content("")
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    if settings is not None:
        (folder / "mriq.json").write_text(json.dumps(settings))
    return folder


def test_bundle_generates_seeded_images_in_the_model_process(tmp_path: Path, ctx: ModelContext) -> None:
    folder = write_bundle(tmp_path / "bundle", settings={"output_range": [-1, 1], "batch_size": 2})
    model = load_model(str(folder), ctx, None)  # type: ignore[arg-type]
    try:
        assert model.provenance["kind"] == "monai-bundle" and model.provenance["isolation"] == "process"
        assert model.provenance["name"] == "tiny_ddim" and model.provenance["version"] == "0.1.0"
        assert model.can_generate and not model.can_sample  # 5 input channels = 4 contrasts + a label map
        m = masks(3)  # two batches of 2 and 1
        a, b, c = model.generate(m, seed=1), model.generate(m, seed=1), model.generate(m, seed=2)
        assert a.shape == (3, 4, SIZE, SIZE) and 0 <= float(a.min()) and float(a.max()) <= 1
        assert torch.equal(a, b)
        assert float((a - c).abs().mean()) > 0.01
        assert float(a.std()) > 0.01  # not a constant image
    finally:
        model.close()


def test_bundle_encodings_follow_the_network_channels(tmp_path: Path, ctx: ModelContext) -> None:
    onehot = MonaiBundle(write_bundle(tmp_path / "onehot", in_channels=4 + 3), ctx)
    assert onehot.conditioning == "onehot" and onehot.generate(masks(2), seed=0).shape == (2, 4, SIZE, SIZE)
    plain = ModelAdapter(MonaiBundle(write_bundle(tmp_path / "plain", in_channels=4), ctx), "plain", ctx)
    assert plain.can_sample and not plain.can_generate  # unconditional: sample(n, seed) only
    x, _ = plain.sample(2, seed=5)
    y, _ = plain.sample(2, seed=5)
    assert x.shape == (2, 4, SIZE, SIZE) and torch.equal(x, y)


def test_bundle_without_a_scheduler_maps_masks_to_images(tmp_path: Path, ctx: ModelContext) -> None:
    """No scheduler: one call of a plain network on [noise, label map] (here a MONAI UNet, 4 + 1 channels in)."""
    net = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 5, "out_channels": 4, "channels": [4, 8], "strides": [2]}
    folder = tmp_path / "gan"
    write_bundle(folder)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("scheduler", "inferer")} | {"network_def": net}
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    from monai.networks.nets import UNet

    torch.save(UNet(2, 5, 4, (4, 8), (2,)).state_dict(), folder / "models" / "model.pt")
    model = MonaiBundle(folder, ctx)
    assert (model.conditioning, model.noise_channels) == ("labels", 4)
    out = model.generate(masks(2), seed=0)
    assert out.shape == (2, 4, SIZE, SIZE) and torch.equal(out, model.generate(masks(2), seed=0))


@pytest.mark.parametrize("remove, message", [
    ("configs/inference.json", "configs/inference.json is missing"),
    ("models/model.pt", "models/model.pt is missing"),
    ("configs/metadata.json", "configs/metadata.json is missing"),
])
def test_broken_bundle_layouts_are_named_before_the_model_process(tmp_path: Path, ctx: ModelContext, remove: str, message: str) -> None:
    folder = write_bundle(tmp_path / "bundle")
    (folder / remove).unlink()
    with pytest.raises(ModelError, match=message):
        load_model(str(folder), ctx, None)  # type: ignore[arg-type]


def test_broken_bundle_contents_name_the_key(tmp_path: Path, ctx: ModelContext) -> None:
    bad_target = write_bundle(tmp_path / "target", network_def=unet_config(5, target="monai.networks.nets.NoSuchUNet"))
    with pytest.raises(ModelError, match=r"configs/inference.json key 'network_def' cannot be built"):
        MonaiBundle(bad_target, ctx)
    wrong_weights = write_bundle(tmp_path / "weights")
    torch.save({"conv.weight": torch.zeros(1)}, wrong_weights / "models" / "model.pt")
    with pytest.raises(ModelError, match=r"models/model.pt does not fit configs/inference.json key 'network_def'"):
        MonaiBundle(wrong_weights, ctx)
    channels = write_bundle(tmp_path / "channels", in_channels=6)
    with pytest.raises(ModelError, match=r"in_channels = 6; expected 4 .*, 5 .* or 7"):
        MonaiBundle(channels, ctx)
    three = ModelAdapter(MonaiBundle(write_bundle(tmp_path / "three", out_channels=3), ctx), "three", ctx)
    with pytest.raises(ModelError, match=r"returned \(2, 3, 16, 16\) for a noisy image of shape \(2, 4, 16, 16\); expected .*out_channels = 4"):
        three.generate(masks(2), seed=0)
    settings = write_bundle(tmp_path / "settings", settings={"batch_sise": 4})
    with pytest.raises(ModelError, match=r"mriq.json: unknown key 'batch_sise'"):
        load_model(str(settings), ctx, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def diffusers() -> Any:
    from mriq_validate.adapters import import_diffusers
    from mriq_validate.errors import MissingFileError

    try:
        return import_diffusers()
    except MissingFileError as exc:
        pytest.skip(str(exc))


def write_pipeline(diffusers: Any, folder: Path, sample_size: int = SIZE, settings: dict[str, Any] | None = None) -> Path:
    """A DDIMPipeline with a tiny UNet2DModel (4 channels), saved with save_pretrained."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(num_train_timesteps=20)).save_pretrained(str(folder))
    if settings is not None:
        (folder / "mriq.json").write_text(json.dumps(settings))
    return folder


def test_diffusers_pipeline_samples_seeded_images(tmp_path: Path, ctx: ModelContext, diffusers: Any) -> None:
    folder = write_pipeline(diffusers, tmp_path / "pipe", settings={"num_inference_steps": 2, "batch_size": 2})
    model = load_model(str(folder), ctx, None)  # type: ignore[arg-type]
    try:
        assert model.provenance["kind"] == "diffusers" and model.provenance["pipeline"] == "DDIMPipeline"
        assert model.can_sample and not model.can_generate
        (a, ma), (b, _), (c, _) = model.sample(3, seed=1), model.sample(3, seed=1), model.sample(3, seed=2)
        assert ma is None and a.shape == (3, 4, SIZE, SIZE) and 0 <= float(a.min()) and float(a.max()) <= 1
        assert torch.equal(a, b) and float((a - c).abs().mean()) > 0.01
        with pytest.raises(ModelError, match="has no generate"):
            model.generate(masks(1), seed=0)
    finally:
        model.close()


def test_broken_pipelines_are_named(tmp_path: Path, ctx: ModelContext, diffusers: Any) -> None:
    folder = write_pipeline(diffusers, tmp_path / "pipe")
    for f in (folder / "unet").iterdir():
        f.unlink()
    (folder / "unet").rmdir()
    with pytest.raises(ModelError, match=r"model_index.json names component 'unet' \(diffusers.UNet2DModel\) but the folder unet/ is missing"):
        load_model(str(folder), ctx, None)  # type: ignore[arg-type]
    small = write_pipeline(diffusers, tmp_path / "small", sample_size=8)
    with pytest.raises(ModelError, match=r"sample_size = \[8, 8\].*expected out_channels = 4, sample_size = \[16, 16\]"):
        DiffusersPipeline(small, ctx)
