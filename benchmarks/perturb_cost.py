"""CPU cost of every registered perturbation at its default strength, in ms per 192×192 slice.

Batches of 16 slices from the builtin cohorts (``mni-tumour`` for lesion and global edits, ``mni-vessel`` for the
vessel edits), upsampled from 128² to 192² (bilinear images, nearest masks). The median over repeats is reported,
and every perturbation above the 20 ms budget is flagged.

    .venv/bin/python benchmarks/perturb_cost.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from mriq_validate.cache import DiskCache, default_cache_dir
from mriq_validate.data import load_data
from mriq_validate.perturb import REGISTRY, PerturbContext, apply, get

BUDGET_MS = 20.0
BATCH = 16
SIZE = 192
VESSEL_EDITS = {"vessel_break", "vessel_prune"}


def upsample(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128² → 192² slices."""
    f = SIZE / images.shape[-1]
    im = np.stack([ndimage.zoom(x, f, order=1) for x in images[:, 0].numpy()])
    mk = np.stack([ndimage.zoom(x, f, order=0) for x in masks[:, 0].numpy()])
    return torch.from_numpy(np.clip(im, 0, 1))[:, None].float(), torch.from_numpy(mk)[:, None].long()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: per-slice cost without OpenMP wake-up overhead on busy CPUs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = DiskCache(default_cache_dir())
    cohorts = {}
    for name, labels in (("mni-tumour", (1, 2, 3)), ("mni-vessel", (1,))):
        data = load_data(f"builtin:{name}", cache)
        images, masks = upsample(data.test.images[:BATCH], data.test.masks[:BATCH])
        train_i, train_m = upsample(data.train.images[:64], data.train.masks[:64])
        cov = {k: v[:BATCH] for k, v in data.test.covariates.items()}
        cohorts[name] = (images, masks, PerturbContext(train_i, train_m, cov, lesion_labels=labels))

    get("gaussian")  # importing one perturbation loads the whole registry
    print(f"ms per {SIZE}x{SIZE} slice (CPU, {args.threads} threads, batch {BATCH}, median of {args.repeats}), default strength")
    slow = []
    for name in sorted(REGISTRY):
        pert = REGISTRY[name]
        images, masks, ctx = cohorts["mni-vessel" if name in VESSEL_EDITS else "mni-tumour"]
        apply(name, images, masks, seed=0, ctx=ctx)  # warm-up (imports, caches)
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            apply(name, images, masks, seed=r + 1, ctx=ctx)
            times.append((time.perf_counter() - t0) * 1000 / BATCH)
        ms = statistics.median(times)
        flag = "  OVER BUDGET" if ms > BUDGET_MS else ""
        default = pert.param(pert.strength).default
        print(f"  {name:22s} {pert.scope:6s} {pert.strength}={default:<8g} {ms:8.2f} ms{flag}")
        if ms > BUDGET_MS:
            slow.append(name)
    print(f"over {BUDGET_MS:g} ms/slice: {', '.join(slow) if slow else 'none'}")


if __name__ == "__main__":
    main()
