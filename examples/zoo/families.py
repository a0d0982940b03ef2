"""The model zoo's generator families: mask-conditioned generators of brain MRI slices, one class per architecture,
built from MONAI's generative networks and schedulers, trained on ``builtin:mni-tumour`` (docs/zoo.md).

Every family maps an N×1×H×W tumour mask (BraTS labels 0-3) and a seed to N×C×H×W images in [0, 1]. The mask enters
as a soft one-hot (the area fraction of each label per pixel) at the family's working resolution; images are trained
in [-1, 1]. A family is a registry entry (:data:`FAMILIES`): its presets (``full`` for ``make zoo``, ``reduced`` for
the heavy test), how one optimisation step is taken and how a batch is sampled. Checkpoints are plain dicts (family,
config, step, one state dict per network) that :func:`load` turns back into a sampler.

- ``ddpm``: pixel diffusion (Ho et al. 2020, arXiv 2006.11239; DDIM sampling, Song et al. 2021, arXiv 2010.02502),
  the example generator's network (examples/model.py).
- ``ldm``: latent diffusion (Rombach et al. 2022, arXiv 2112.10752): a MONAI ``AutoencoderKL`` trained first, then a
  ``DiffusionModelUNet`` on its latents, decoded at full resolution.
- ``rflow``: rectified flow (Liu et al. 2023, arXiv 2209.03003) with MONAI's ``RFlowScheduler`` (velocity
  prediction, Euler steps).
- ``spade``: an adversarial SPADE VAE-GAN (Park et al. 2019, arXiv 1903.07291): MONAI ``SPADENet`` against a
  mask-conditioned ``PatchDiscriminator`` (hinge loss, feature matching, an L1 term).
- ``vae``: the same ``SPADENet`` trained as a conditional VAE only (no discriminator): the blurry baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

N_CLASSES = 4  # background + the three BraTS labels 1, 2, 3


def mask_condition(masks: torch.Tensor, resolution: int) -> torch.Tensor:
    """N×1×H×W integer labels → N×4×r×r soft one-hot (the area fraction of each label in each pixel at ``resolution``)."""
    onehot = F.one_hot(masks[:, 0].long().clamp(0, N_CLASSES - 1), N_CLASSES).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, resolution)


def diffusion_unet(in_channels: int, out_channels: int, channels: list[int]) -> torch.nn.Module:
    """MONAI ``DiffusionModelUNet`` without attention, one residual block per level (the example generator's)."""
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                              attention_levels=(False,) * len(channels), num_res_blocks=1, norm_num_groups=min(8, channels[0]))


@dataclass
class Batch:
    """One training batch: images in [-1, 1] at the family's resolution and the soft one-hot mask there."""

    x0: torch.Tensor
    cond: torch.Tensor


class Family:
    """A generator architecture: networks (:attr:`nets`), one training step, and sampling."""

    name: ClassVar[str]
    title: ClassVar[str]
    presets: ClassVar[dict[str, dict[str, Any]]]

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.nets: dict[str, torch.nn.Module] = self.build(config)
        self.optimisers: dict[str, torch.optim.Optimizer] = {}

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def start_training(self) -> None:
        """Create the optimisers (AdamW at the preset's learning rate, one per trained network)."""
        lr = self.config["lr"]
        self.optimisers = {k: torch.optim.AdamW(n.parameters(), lr=lr * self.config.get("lr_scale", {}).get(k, 1.0),
                                                betas=tuple(self.config.get("betas", (0.9, 0.999))))
                           for k, n in self.nets.items()}
        for n in self.nets.values():
            n.train()

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        """One optimisation step on ``batch`` (random draws from ``gen``); the loss it minimised."""
        raise NotImplementedError

    def sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images in [-1, 1] at the working resolution for the soft one-hot ``cond`` (N×4×r×r)."""
        raise NotImplementedError

    def state(self, step: int, seconds: float) -> dict[str, Any]:
        """The checkpoint: family, config, step, training seconds and one state dict per network."""
        return {"family": self.name, "config": self.config, "step": step, "train_seconds": round(seconds, 1),
                "state_dicts": {k: n.state_dict() for k, n in self.nets.items()}}

    @staticmethod
    def _update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _noise_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn on the CPU from ``gen`` (the same draws on every device)."""
    return torch.randn(x.shape, generator=gen).to(x.device)


def _steps(n: int, t: int, device: torch.device) -> torch.Tensor:
    return torch.full((n,), t, dtype=torch.long, device=device)


class PixelDiffusion(Family):
    """DDPM training (MONAI ``DDPMScheduler``, 1000 steps, linear betas), the clean image predicted, DDIM sampling."""

    name = "ddpm"
    title = "pixel diffusion (DDPM/DDIM)"
    presets = {
        "full": {"resolution": 64, "channels": [32, 64, 64], "batch_size": 16, "lr": 2e-3, "sample_steps": 10,
                 "budgets": [100, 400, 1500]},
        "reduced": {"resolution": 32, "channels": [16, 32, 32], "batch_size": 8, "lr": 3e-3, "sample_steps": 4,
                    "budgets": [5, 10, 20]},
    }

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        c = config["n_contrasts"]
        return {"unet": diffusion_unet(c + N_CLASSES, c, config["channels"])}

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        from monai.networks.schedulers import DDPMScheduler

        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
        t = torch.randint(0, 1000, (batch.x0.shape[0],), generator=gen).to(batch.x0.device)
        noisy = sched.add_noise(batch.x0, _noise_like(batch.x0, gen), t)
        loss = F.mse_loss(self.nets["unet"](torch.cat([noisy, batch.cond], 1), t), batch.x0)
        self._update(self.optimisers["unet"], loss)
        return loss.item()

    def sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample")
        sched.set_timesteps(self.config["sample_steps"])
        x = torch.randn((cond.shape[0], self.config["n_contrasts"], *cond.shape[-2:]), generator=gen).to(cond.device)
        for t in sched.timesteps:
            pred = self.nets["unet"](torch.cat([x, cond], 1), _steps(x.shape[0], int(t), cond.device))
            x, _ = sched.step(pred, int(t), x)
        return x


class RectifiedFlow(Family):
    """Rectified flow: the straight path x_t = (1 − t/T)·x0 + (t/T)·noise, the network predicts the velocity
    x0 − noise (MONAI ``RFlowScheduler``), sampled with Euler steps from noise."""

    name = "rflow"
    title = "rectified flow"
    presets = {
        "full": {"resolution": 64, "channels": [32, 64, 64], "batch_size": 16, "lr": 2e-3, "sample_steps": 10,
                 "budgets": [100, 400, 1500]},
        "reduced": {"resolution": 32, "channels": [16, 32, 32], "batch_size": 8, "lr": 3e-3, "sample_steps": 4,
                    "budgets": [5, 10, 20]},
    }

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        c = config["n_contrasts"]
        return {"unet": diffusion_unet(c + N_CLASSES, c, config["channels"])}

    @staticmethod
    def _scheduler() -> Any:
        from monai.networks.schedulers import RFlowScheduler

        return RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=True, spatial_dim=2)

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        noise = _noise_like(batch.x0, gen)
        t = (torch.rand(batch.x0.shape[0], generator=gen) * 1000).long().to(batch.x0.device)  # RFlowScheduler's uniform draw, seeded
        noisy = self._scheduler().add_noise(batch.x0, noise, t)
        v = self.nets["unet"](torch.cat([noisy, batch.cond], 1), t)
        loss = F.mse_loss(v, batch.x0 - noise)
        self._update(self.optimisers["unet"], loss)
        return loss.item()

    def sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        sched = self._scheduler()
        sched.set_timesteps(num_inference_steps=self.config["sample_steps"])
        x = torch.randn((cond.shape[0], self.config["n_contrasts"], *cond.shape[-2:]), generator=gen).to(cond.device)
        times = [int(t) for t in sched.timesteps] + [0]
        for t, nxt in zip(times[:-1], times[1:]):
            v = self.nets["unet"](torch.cat([x, cond], 1), _steps(x.shape[0], t, cond.device))
            x, _ = sched.step(v, t, x, nxt)
        return x


class LatentDiffusion(Family):
    """A MONAI ``AutoencoderKL`` (4 contrasts ↔ a latent at 1/4 resolution, L1 + KL) trained for ``ae_steps`` steps,
    then frozen; a ``DiffusionModelUNet`` denoises its (scaled) latents conditioned on the mask; DDIM sampling, decoded
    at full resolution. A checkpoint's step counts diffusion steps after the autoencoder's."""

    name = "ldm"
    title = "latent diffusion (AutoencoderKL + diffusion UNet)"
    presets = {
        "full": {"resolution": 128, "ae_channels": [16, 32, 32], "latent_channels": 4, "ae_steps": 600, "kl_weight": 1e-6,
                 "channels": [32, 64, 64], "batch_size": 16, "lr": 2e-3, "ae_lr": 1e-3, "sample_steps": 10,
                 "budgets": [100, 400, 2000]},
        "reduced": {"resolution": 32, "ae_channels": [8, 8, 8], "latent_channels": 4, "ae_steps": 10, "kl_weight": 1e-6,
                    "channels": [16, 32, 32], "batch_size": 8, "lr": 3e-3, "ae_lr": 1e-3, "sample_steps": 4,
                    "budgets": [5, 10, 20]},
    }

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        from monai.networks.nets import AutoencoderKL

        c, z = config["n_contrasts"], config["latent_channels"]
        ch = config["ae_channels"]
        ae = AutoencoderKL(spatial_dims=2, in_channels=c, out_channels=c, channels=tuple(ch), latent_channels=z,
                           num_res_blocks=1, norm_num_groups=min(8, ch[0]), attention_levels=(False,) * len(ch),
                           with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.register_scale(config)
        return {"autoencoder": ae, "unet": diffusion_unet(z + N_CLASSES, z, config["channels"])}

    def register_scale(self, config: dict[str, Any]) -> None:
        self.latent_scale = float(config.get("latent_scale", 1.0))

    @property
    def latent_resolution(self) -> int:
        return self.config["resolution"] // 2 ** (len(self.config["ae_channels"]) - 1)

    def start_training(self) -> None:
        super().start_training()
        self.optimisers["autoencoder"] = torch.optim.AdamW(self.nets["autoencoder"].parameters(), lr=self.config["ae_lr"])

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        from monai.networks.schedulers import DDPMScheduler

        ae = self.nets["autoencoder"]
        if step <= self.config["ae_steps"]:  # stage 1: the autoencoder
            z_mu, z_sigma = ae.encode(batch.x0)
            z = z_mu + z_sigma * _noise_like(z_mu, gen)
            recon = ae.decode(z)
            kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-8) - 1).sum(dim=(1, 2, 3)).mean()
            loss = F.l1_loss(recon, batch.x0) + self.config["kl_weight"] * kl
            self._update(self.optimisers["autoencoder"], loss)
            if step == self.config["ae_steps"]:
                with torch.no_grad():  # scale the latents to unit SD (Rombach et al.'s scale factor), fixed from here on
                    ae.eval()
                    self.config["latent_scale"] = self.latent_scale = float(1.0 / ae.encode(batch.x0)[0].std().clamp_min(1e-3))
            return loss.item()
        ae.eval()
        with torch.no_grad():
            z0 = ae.encode(batch.x0)[0] * self.latent_scale
        cond = F.adaptive_avg_pool2d(batch.cond, self.latent_resolution)
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
        t = torch.randint(0, 1000, (z0.shape[0],), generator=gen).to(z0.device)
        noisy = sched.add_noise(z0, _noise_like(z0, gen), t)
        loss = F.mse_loss(self.nets["unet"](torch.cat([noisy, cond], 1), t), z0)
        self._update(self.optimisers["unet"], loss)
        return loss.item()

    def sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from monai.networks.schedulers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=1000, prediction_type="sample")
        sched.set_timesteps(self.config["sample_steps"])
        r = self.latent_resolution
        c = F.adaptive_avg_pool2d(cond, r)
        z = torch.randn((cond.shape[0], self.config["latent_channels"], r, r), generator=gen).to(cond.device)
        for t in sched.timesteps:
            pred = self.nets["unet"](torch.cat([z, c], 1), _steps(z.shape[0], int(t), cond.device))
            z, _ = sched.step(pred, int(t), z)
        return self.nets["autoencoder"].decode(z / self.latent_scale)


class SpadeVae(Family):
    """MONAI ``SPADENet`` as a conditional VAE: an encoder maps the image to a style code z (KL to N(0, 1)), the SPADE
    decoder draws the image from z with the mask modulating every normalisation; sampled from z ~ N(0, 1)."""

    name = "vae"
    title = "conditional VAE (SPADENet)"
    adversarial = False
    presets = {
        "full": {"resolution": 128, "channels": [16, 32, 64, 64], "z_dim": 32, "spade_channels": 32, "kl_weight": 0.005,
                 "batch_size": 16, "lr": 1e-3, "betas": [0.5, 0.999], "budgets": [100, 400, 1500]},
        "reduced": {"resolution": 32, "channels": [8, 16], "z_dim": 8, "spade_channels": 8, "kl_weight": 0.005,
                    "batch_size": 8, "lr": 1e-3, "betas": [0.5, 0.999], "budgets": [5, 10, 20]},
    }

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        from monai.networks.nets import SPADENet

        r = config["resolution"]
        net = SPADENet(spatial_dims=2, in_channels=config["n_contrasts"], out_channels=config["n_contrasts"], label_nc=N_CLASSES,
                       input_shape=(r, r), channels=list(config["channels"]), z_dim=config["z_dim"], is_vae=True,
                       spade_intermediate_channels=config["spade_channels"], norm="INSTANCE", last_act="TANH")
        return {"generator": net}

    def reconstruct(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded image of each batch image's sampled style code, and the mean KL to N(0, 1)."""
        g = self.nets["generator"]
        mu, logvar = g.encoder(batch.x0)
        z = mu + torch.exp(0.5 * logvar) * _noise_like(mu, gen)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        return g.decode(batch.cond, z), kl

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        fake, kl = self.reconstruct(batch, gen)
        loss = F.l1_loss(fake, batch.x0) + self.config["kl_weight"] * kl
        self._update(self.optimisers["generator"], loss)
        return loss.item()

    def sample(self, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn((cond.shape[0], self.config["z_dim"]), generator=gen).to(cond.device)
        return self.nets["generator"].decode(cond, z)


class SpadeGan(SpadeVae):
    """The SPADE VAE-GAN: ``SPADENet`` against a mask-conditioned MONAI ``PatchDiscriminator`` (hinge loss), with the
    discriminator's feature matching and an L1 term in place of SPADE's VGG loss (no pretrained weights offline)."""

    name = "spade"
    title = "adversarial (SPADE VAE-GAN + PatchDiscriminator)"
    presets = {
        "full": {**SpadeVae.presets["full"], "kl_weight": 0.05, "budgets": [100, 400, 1000], "d_channels": 32, "d_layers": 3, "adv_weight": 1.0, "fm_weight": 10.0,
                 "l1_weight": 10.0, "lr": 2e-4, "lr_scale": {"generator": 1.0, "discriminator": 2.0}},
        "reduced": {**SpadeVae.presets["reduced"], "kl_weight": 0.05, "d_channels": 8, "d_layers": 2, "adv_weight": 1.0, "fm_weight": 10.0,
                    "l1_weight": 10.0, "lr": 2e-4, "lr_scale": {"generator": 1.0, "discriminator": 2.0}},
    }

    def build(self, config: dict[str, Any]) -> dict[str, torch.nn.Module]:
        from monai.networks.nets import PatchDiscriminator

        nets = super().build(config)
        nets["discriminator"] = PatchDiscriminator(spatial_dims=2, channels=config["d_channels"], num_layers_d=config["d_layers"],
                                                   in_channels=config["n_contrasts"] + N_CLASSES, out_channels=1, norm="INSTANCE")
        return nets

    def step(self, batch: Batch, gen: torch.Generator, step: int) -> float:
        cfg, disc = self.config, self.nets["discriminator"]
        fake, kl = self.reconstruct(batch, gen)
        real_in, fake_in = torch.cat([batch.x0, batch.cond], 1), torch.cat([fake, batch.cond], 1)
        # discriminator: hinge loss on real and (detached) generated pairs
        d_loss = F.relu(1 - disc(real_in)[-1]).mean() + F.relu(1 + disc(fake_in.detach())[-1]).mean()
        self._update(self.optimisers["discriminator"], d_loss)
        # generator: fool the discriminator, match its features on the real image, stay close to it (L1), KL
        real_feats = [f.detach() for f in disc(real_in)]
        fake_feats = disc(fake_in)
        fm = sum(F.l1_loss(f, r) for f, r in zip(fake_feats[:-1], real_feats[:-1])) / max(1, len(fake_feats) - 1)
        g_loss = (-cfg["adv_weight"] * fake_feats[-1].mean() + cfg["fm_weight"] * fm + cfg["l1_weight"] * F.l1_loss(fake, batch.x0)
                  + cfg["kl_weight"] * kl)
        self._update(self.optimisers["generator"], g_loss)
        return g_loss.item()


FAMILIES: dict[str, type[Family]] = {f.name: f for f in (PixelDiffusion, LatentDiffusion, RectifiedFlow, SpadeGan, SpadeVae)}


def load(state: dict[str, Any]) -> Family:
    """A checkpoint dict (:meth:`Family.state`) → its family with the weights loaded, in eval mode."""
    fam = FAMILIES[state["family"]](dict(state["config"]))
    for k, sd in state["state_dicts"].items():
        fam.nets[k].load_state_dict(sd)
        fam.nets[k].eval()
    if isinstance(fam, LatentDiffusion):
        fam.register_scale(fam.config)
    return fam
