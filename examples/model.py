"""The example generator as a model under test: ``--mriq-model examples/model.py:build``.

A small mask-conditioned diffusion model (MONAI ``DiffusionModelUNet``; the one-hot tumour mask is concatenated to
the noisy image as extra input channels) trained by ``examples/train_generator.py`` on ``builtin:mni-tumour`` at a
reduced resolution and sampled with a few DDIM steps (Song et al. 2021, arXiv 2010.02502; MONAI
``monai.networks.schedulers.DDIMScheduler``). The output is upsampled (bilinear) to the data's 128×128.

Which checkpoint: the file named by ``$MRIQ_CHECKPOINT`` (what ``mriq-validate track`` sets for each checkpoint),
else ``examples/checkpoints/final.pt`` (the last one the training script wrote). Nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

CHECKPOINT_ENV = "MRIQ_CHECKPOINT"  # the variable `mriq-validate track` sets for each checkpoint
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "final.pt"
TRAIN_COMMAND = "python examples/train_generator.py (or make example; add --reduced for the 2-minute version)"
N_CLASSES = 4  # background + the three BraTS labels 1, 2, 3


def make_network(config: dict[str, Any]) -> torch.nn.Module:
    """The denoiser: a MONAI ``DiffusionModelUNet`` taking the noisy image and the one-hot mask as channels."""
    from monai.networks.nets import DiffusionModelUNet

    channels = tuple(config["channels"])
    return DiffusionModelUNet(spatial_dims=2, in_channels=config["n_contrasts"] + N_CLASSES, out_channels=config["n_contrasts"],
                              channels=channels, attention_levels=(False,) * len(channels), num_res_blocks=1,
                              norm_num_groups=min(8, channels[0]))


def mask_condition(masks: torch.Tensor, resolution: int) -> torch.Tensor:
    """N×1×H×W integer labels → N×4×r×r soft one-hot (the area fraction of each label in each low-resolution pixel)."""
    onehot = F.one_hot(masks[:, 0].long().clamp(0, N_CLASSES - 1), N_CLASSES).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, resolution)


def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint to load: ``path``, else ``$MRIQ_CHECKPOINT``, else ``examples/checkpoints/final.pt``."""
    from mriq_validate.errors import MissingFileError

    given = path or os.environ.get(CHECKPOINT_ENV)
    p = Path(given) if given else DEFAULT_CHECKPOINT
    if not p.is_file():
        source = "the path given" if path else (f"${CHECKPOINT_ENV}" if given else f"the default (${CHECKPOINT_ENV} is not set)")
        raise MissingFileError(f"example generator checkpoint {p} not found ({source}); make it with: {TRAIN_COMMAND}")
    return p


class ExampleGenerator:
    """A trained checkpoint behind the model interface: ``generate(masks, *, seed)`` → N×C×128×128 in [0, 1]."""

    def __init__(self, checkpoint: Path, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        from mriq_validate.errors import ModelError

        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            self.config: dict[str, Any] = state["config"]
            self.net = make_network(self.config)
            self.net.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise ModelError(f"example generator checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: {exc}); "
                             f"expected a file written by examples/train_generator.py; remake it with: {TRAIN_COMMAND}") from exc
        self.step = int(state.get("step", -1))
        self.device = torch.device(device)
        self.net.to(self.device).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, *, seed: int, sample_steps: int | None = None) -> torch.Tensor:
        """One image per mask (N×1×H×W labels) → N×C×H×W float in [0, 1]; the noise is drawn from ``seed``."""
        from monai.networks.schedulers import DDIMScheduler

        cfg = self.config
        r, h, w = cfg["resolution"], masks.shape[-2], masks.shape[-1]
        gen = torch.Generator().manual_seed(int(seed) % 2**63)
        sched = DDIMScheduler(num_train_timesteps=cfg["train_timesteps"], prediction_type=cfg["prediction_type"])
        sched.set_timesteps(sample_steps or cfg["sample_steps"])
        out = []
        for start in range(0, masks.shape[0], self.batch_size):
            cond = mask_condition(masks[start:start + self.batch_size], r).to(self.device)
            x = torch.randn((cond.shape[0], cfg["n_contrasts"], r, r), generator=gen).to(self.device)
            for t in sched.timesteps:
                pred = self.net(torch.cat([x, cond], 1), torch.full((x.shape[0],), int(t), device=self.device, dtype=torch.long))
                x, _ = sched.step(pred, int(t), x)
            img = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            out.append(((img + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(out).float()


def build(ctx: Any) -> ExampleGenerator:
    """``--mriq-model examples/model.py:build``: the checkpoint named by ``$MRIQ_CHECKPOINT`` (see module doc)."""
    from mriq_validate.errors import ModelError

    gen = ExampleGenerator(resolve_checkpoint(), device=ctx.device)
    if ctx.contrasts and tuple(ctx.contrasts) != tuple(gen.config["contrasts"]):
        raise ModelError(f"example generator was trained on contrasts {list(gen.config['contrasts'])} but the suite asks for "
                         f"{list(ctx.contrasts)}; expected the same contrasts in the same order")
    return gen
