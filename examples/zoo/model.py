"""A zoo checkpoint as a model under test: ``--mriq-model examples/zoo/model.py:build``.

The checkpoint is the file named by ``$MRIQ_CHECKPOINT`` (what ``mriq-validate track`` sets for each checkpoint); its
family (pixel diffusion, latent diffusion, rectified flow, SPADE GAN, conditional VAE; examples/zoo/families.py) is
read from the file. Images are made at the family's working resolution and resized (bilinear) to the masks' H×W.
Nothing is downloaded: a missing checkpoint is an error naming the file and ``make zoo``, which trains it.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import Family, load, mask_condition  # noqa: E402

CHECKPOINT_ENV = "MRIQ_CHECKPOINT"
TRAIN_COMMAND = "make zoo (or python examples/zoo/train.py FAMILY)"


class ZooGenerator:
    """A trained zoo checkpoint behind the model interface: ``generate(masks, *, seed)`` → N×C×H×W in [0, 1]."""

    def __init__(self, checkpoint: Path, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        from mriq_validate.errors import ModelError

        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            self.family: Family = load(state)
        except (KeyError, RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise ModelError(f"zoo checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: {exc}); expected a file "
                             f"written by examples/zoo/train.py; remake it with: {TRAIN_COMMAND}") from exc
        self.config: dict[str, Any] = self.family.config
        self.step = int(state.get("step", -1))
        self.device = torch.device(device)
        for net in self.family.nets.values():
            net.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        """One image per mask (N×1×H×W labels) → N×C×H×W float in [0, 1]; every draw comes from ``seed``."""
        gen = torch.Generator().manual_seed(int(seed) % 2**63)
        h, w = masks.shape[-2:]
        out = []
        for start in range(0, masks.shape[0], self.batch_size):
            cond = mask_condition(masks[start:start + self.batch_size], self.config["resolution"]).to(self.device)
            x = self.family.sample(cond, gen).float()
            if x.shape[-2:] != (h, w):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            out.append(((x + 1) / 2).clamp(0, 1).cpu())
        return torch.cat(out)


def resolve_checkpoint() -> Path:
    """``$MRIQ_CHECKPOINT``; MissingFileError naming the variable or the file when it is unset or absent."""
    from mriq_validate.errors import MissingFileError

    given = os.environ.get(CHECKPOINT_ENV)
    if not given:
        raise MissingFileError(f"${CHECKPOINT_ENV} is not set: the zoo model loads the checkpoint it names (mriq-validate track "
                               f"sets it); make checkpoints with: {TRAIN_COMMAND}")
    p = Path(given)
    if not p.is_file():
        raise MissingFileError(f"zoo checkpoint {p} (${CHECKPOINT_ENV}) not found; make it with: {TRAIN_COMMAND}")
    return p


def build(ctx: Any) -> ZooGenerator:
    """``--mriq-model examples/zoo/model.py:build``: the checkpoint named by ``$MRIQ_CHECKPOINT``."""
    from mriq_validate.errors import ModelError

    gen = ZooGenerator(resolve_checkpoint(), device=ctx.device)
    if ctx.contrasts and tuple(ctx.contrasts) != tuple(gen.config["contrasts"]):
        raise ModelError(f"zoo checkpoint was trained on contrasts {list(gen.config['contrasts'])} but the suite asks for "
                         f"{list(ctx.contrasts)}; expected the same contrasts in the same order")
    return gen
