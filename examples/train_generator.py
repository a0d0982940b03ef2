"""Train the example mask-conditioned diffusion generator on ``builtin:mni-tumour`` and save checkpoints at several
training budgets, for ``mriq-validate track`` (docs/example.md).

    python examples/train_generator.py            # full: 64×64, about 15 min on 2 CPU cores
    python examples/train_generator.py --reduced  # CI: 32×32, a smaller network, under 2 min

Training follows DDPM (Ho et al. 2020, arXiv 2006.11239) with MONAI's ``DDPMScheduler`` (1000 steps, linear betas)
but the network predicts the clean image (``prediction_type="sample"``) rather than the noise, which reaches a
usable denoiser in far fewer optimisation steps; sampling uses ``DDIMScheduler`` with a few steps. Images are area-
downsampled to the training resolution and mapped to [-1, 1]; the mask enters as a soft one-hot at that resolution.
Checkpoints: ``OUT/generator-step<NNNNN>.pt`` at each budget (each written whole, then renamed into place, so that a
gate started on a checkpoint the moment it appears reads a complete file) and ``OUT/final.pt`` (a copy of the last).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import DEFAULT_CHECKPOINT, make_network, mask_condition  # noqa: E402

PRESETS = {
    "full": {"resolution": 64, "channels": [32, 64, 64], "batch_size": 16, "budgets": [50, 150, 400, 800, 1200], "lr": 2e-3},
    "reduced": {"resolution": 32, "channels": [16, 32, 32], "batch_size": 16, "budgets": [30, 100, 300], "lr": 3e-3},
}


def train(preset: str, out: Path, *, seed: int = 0, cache_dir: str | None = None, log=print) -> list[Path]:
    """Train with ``PRESETS[preset]``; write one checkpoint per budget and ``final.pt``; return the budget files."""
    from monai.networks.schedulers import DDPMScheduler

    from mriq_validate.cache import DiskCache, default_cache_dir
    from mriq_validate.data import load_data

    p = PRESETS[preset]
    data = load_data("builtin:mni-tumour", DiskCache(cache_dir or default_cache_dir()))
    r = p["resolution"]
    x0_all = F.adaptive_avg_pool2d(data.train.images, r) * 2 - 1
    cond_all = mask_condition(data.train.masks, r)
    config = {"resolution": r, "channels": p["channels"], "n_contrasts": int(x0_all.shape[1]), "contrasts": list(data.contrasts),
              "train_timesteps": 1000, "prediction_type": "sample", "sample_steps": 10, "preset": preset, "seed": seed,
              "data": "builtin:mni-tumour", "train_slices": int(x0_all.shape[0])}
    torch.manual_seed(seed)
    net = make_network(config)
    sched = DDPMScheduler(num_train_timesteps=config["train_timesteps"], prediction_type="sample")
    opt = torch.optim.AdamW(net.parameters(), lr=p["lr"])
    total = p["budgets"][-1]
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 25))  # short warm-up, then constant
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    written, start, n = [], time.perf_counter(), x0_all.shape[0]
    log(f"[train] preset {preset}: {n} slices at {r}x{r}, {sum(q.numel() for q in net.parameters()) / 1e6:.2f} M parameters, "
        f"{total} steps, checkpoints at {p['budgets']}")
    net.train()
    for step in range(1, total + 1):
        idx = torch.randint(0, n, (p["batch_size"],), generator=gen)
        x0, cond = x0_all[idx], cond_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # left-right flip of image and mask together
        x0, cond = torch.where(flip[:, None, None, None], x0.flip(-1), x0), torch.where(flip[:, None, None, None], cond.flip(-1), cond)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, config["train_timesteps"], (len(idx),), generator=gen)
        pred = net(torch.cat([sched.add_noise(x0, noise, t), cond], 1), t)
        loss = F.mse_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        if step % 50 == 0 or step == 1:
            log(f"[train] step {step}/{total} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
        if step in p["budgets"]:
            path = out / f"generator-step{step:05d}.pt"
            part = path.with_name(path.name + ".part")  # written whole, then renamed: a file that exists is complete
            torch.save({"state_dict": net.state_dict(), "config": config, "step": step,
                        "train_seconds": round(time.perf_counter() - start, 1)}, part)
            os.replace(part, path)
            written.append(path)
            log(f"[train] wrote {path} ({time.perf_counter() - start:.0f} s)")
    shutil.copyfile(written[-1], out / "final.pt")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="the small CI version (32×32, under 2 min)")
    ap.add_argument("--out", default=str(DEFAULT_CHECKPOINT.parent), help="checkpoint folder (default: examples/checkpoints)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="the mriq cache folder (default: $MRIQ_CACHE_DIR or ~/.cache/mriq-validate)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("MRIQ_TORCH_THREADS", "2")))
    start = time.perf_counter()
    paths = train("reduced" if args.reduced else "full", Path(args.out), seed=args.seed, cache_dir=args.cache)
    print(f"train_generator: {len(paths)} checkpoints in {Path(args.out).resolve()} ({time.perf_counter() - start:.0f} s): "
          + " ".join(p.name for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
