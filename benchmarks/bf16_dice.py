"""Effect of bf16 mixed precision on the downstream segmenter's Dice.

Trains the default 2D segmenter (:class:`~mriq_validate.segmenter.SegmenterConfig`, resolved for slices) on the real
training split of ``builtin:mni-tumour`` at ``precision: fp32`` and ``bf16`` for each seed, and prints the mean Dice
on the real test split per region (whole tumour, tumour core, enhancing tumour; the BraTS regions), the bf16 − fp32
difference, the seed-to-seed SD of fp32 (the noise the difference is to be read against; needs >= 2 seeds), and the
training and inference wall time (and the training's CPU time, which other work on a shared CPU does not inflate). bf16 is ``torch.autocast(dtype=torch.bfloat16)`` over the forward pass and loss
(https://pytorch.org/docs/stable/amp.html); CPU autocast works but is usually slower than fp32.

    .venv/bin/python benchmarks/bf16_dice.py [--device cpu|cuda] [--seeds 1] [--epochs N] [--json out.json]

By default (``make bench``) one seed of 20-epoch segmenters (two trainings, half the default budget); the README's
figures are ``--seeds 3 --epochs 0`` (``--epochs 0``: the segmenter's default budget).

On CPU, torch threads follow ``$MRIQ_TORCH_THREADS`` (default 1), as the library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from mriq_validate.cache import DiskCache
from mriq_validate.data import load_data
from mriq_validate.metrics.functional.downstream import dice_per_image
from mriq_validate.segmenter import Segmenter, SegmenterConfig, train_segmenter

REGIONS = {"WT": "whole_tumour", "TC": "tumour_core", "ET": "enhancing_tumour"}
PRECISIONS = ("fp32", "bf16")


def run(data, cfg: SegmenterConfig, device: torch.device) -> dict[str, float]:  # noqa: ANN001 (ReferenceData)
    """Train on the real training split, predict the real test split; Dice per region and the wall times."""
    n_classes = max(data.labels.values()) + 1
    start, cpu = time.perf_counter(), time.process_time()
    net, _ = train_segmenter(data.train.images, data.train.masks, n_classes, cfg, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    pred = Segmenter(net, n_classes, cfg, "benchmark", device).predict(data.test.images)
    infer_s = time.perf_counter() - start
    out = {short: float(dice_per_image(data.region_mask(pred, name), data.region_mask(data.test.masks, name)).mean())
           for short, name in REGIONS.items()}
    return {**out, "train_s": train_s, "train_cpu_s": train_cpu_s, "infer_s": infer_s}


def compare(data, base: SegmenterConfig, seeds: int, device: torch.device,  # noqa: ANN001 (ReferenceData)
            log: Callable[[str], None] = print) -> dict[str, list[dict[str, float]]]:
    """:func:`run` at each precision for training seeds 0..``seeds``-1 of ``base``; the results per precision."""
    results: dict[str, list[dict[str, float]]] = {p: [] for p in PRECISIONS}
    for seed in range(seeds):
        for precision in PRECISIONS:
            r = run(data, replace(base, seed=seed, precision=precision), device)
            results[precision].append(r)
            log(f"seed {seed} {precision}: " + " ".join(f"{k} {v:.4f}" for k, v in r.items() if k in REGIONS)
                + f"  train {r['train_s']:.1f} s (CPU {r['train_cpu_s']:.1f} s), inference {r['infer_s']:.2f} s")
    return results


def mean(results: dict[str, list[dict[str, float]]], precision: str, key: str) -> float:
    """The mean of ``key`` over the seeds of ``precision``."""
    return statistics.fmean(r[key] for r in results[precision])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds 0..n-1 (5 on a GPU)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs (0: the segmenter's default budget)")
    ap.add_argument("--cache", default=os.environ.get("MRIQ_CACHE_DIR", "/tmp/mriq-bench-cache"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_data("builtin:mni-tumour", DiskCache(args.cache))
    base = SegmenterConfig(epochs=args.epochs or None).resolve(data.spatial_dims)
    results = compare(data, base, args.seeds, device, lambda line: print(line, flush=True))
    print(f"\n{device.type}, {len(data.train)} training / {len(data.test)} test slices, {base.epochs} epochs, batch {base.batch_size}, "
          f"{args.seeds} seed(s); threads {torch.get_num_threads() if device.type != 'cpu' else os.environ.get('MRIQ_TORCH_THREADS', '1')}")
    for short in REGIONS:
        sd = statistics.stdev(r[short] for r in results["fp32"]) if args.seeds > 1 else float("nan")
        diff = mean(results, "bf16", short) - mean(results, "fp32", short)
        print(f"{short}: fp32 {mean(results, 'fp32', short):.4f}  bf16 {mean(results, 'bf16', short):.4f}  bf16-fp32 {diff:+.4f}  "
              f"fp32 seed SD {sd:.4f}" + (f"  (|diff|/SD {abs(diff) / sd:.2f})" if sd == sd and sd > 0 else ""))
    for p in PRECISIONS:
        print(f"{p}: train {mean(results, p, 'train_s'):.1f} s wall ({mean(results, p, 'train_cpu_s'):.1f} s CPU time of this "
              f"process), inference {mean(results, p, 'infer_s'):.2f} s (means over seeds)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device.type, "seeds": args.seeds, "epochs": base.epochs, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
