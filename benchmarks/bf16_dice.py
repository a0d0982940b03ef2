"""Effect of bf16 mixed precision on the downstream segmenter's Dice.

Trains the default 2D segmenter (:class:`~mriq_validate.segmenter.SegmenterConfig`, resolved for slices) on the real
training split of ``builtin:mni-tumour`` at ``precision: fp32`` and ``bf16`` for each seed, and prints the mean Dice
on the real test split per region (whole tumour, tumour core, enhancing tumour; the BraTS regions), the bf16 − fp32
difference, the seed-to-seed SD of fp32 (the noise the difference is to be read against; needs >= 2 seeds), and the
training and inference wall time (and the training's CPU time, which other work on a shared CPU does not inflate). bf16 is ``torch.autocast(dtype=torch.bfloat16)`` over the forward pass and loss
(https://pytorch.org/docs/stable/amp.html); CPU autocast works but is usually slower than fp32.

    .venv/bin/python benchmarks/bf16_dice.py [--device cpu|cuda] [--seeds 1] [--json out.json]

On CPU, torch threads follow ``$MRIQ_TORCH_THREADS`` (default 1), as the library.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds 0..n-1 (5 on a GPU)")
    ap.add_argument("--cache", default=os.environ.get("MRIQ_CACHE_DIR", "/tmp/mriq-bench-cache"))
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_data("builtin:mni-tumour", DiskCache(args.cache))
    base = SegmenterConfig().resolve(data.spatial_dims)
    results: dict[str, list[dict[str, float]]] = {p: [] for p in PRECISIONS}
    for seed in range(args.seeds):
        for precision in PRECISIONS:
            r = run(data, replace(base, seed=seed, precision=precision), device)
            results[precision].append(r)
            print(f"seed {seed} {precision}: " + " ".join(f"{k} {v:.4f}" for k, v in r.items() if k in REGIONS)
                  + f"  train {r['train_s']:.1f} s (CPU {r['train_cpu_s']:.1f} s), inference {r['infer_s']:.2f} s", flush=True)
    print(f"\n{device.type}, {len(data.train)} training / {len(data.test)} test slices, {base.epochs} epochs, batch {base.batch_size}, "
          f"{args.seeds} seed(s); threads {torch.get_num_threads() if device.type != 'cpu' else os.environ.get('MRIQ_TORCH_THREADS', '1')}")
    mean = lambda p, k: statistics.fmean(r[k] for r in results[p])  # noqa: E731
    for short in REGIONS:
        sd = statistics.stdev(r[short] for r in results["fp32"]) if args.seeds > 1 else float("nan")
        diff = mean("bf16", short) - mean("fp32", short)
        print(f"{short}: fp32 {mean('fp32', short):.4f}  bf16 {mean('bf16', short):.4f}  bf16-fp32 {diff:+.4f}  "
              f"fp32 seed SD {sd:.4f}" + (f"  (|diff|/SD {abs(diff) / sd:.2f})" if sd == sd and sd > 0 else ""))
    for p in PRECISIONS:
        print(f"{p}: train {mean(p, 'train_s'):.1f} s wall ({mean(p, 'train_cpu_s'):.1f} s CPU time of this process), inference {mean(p, 'infer_s'):.2f} s (means over seeds)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device.type, "seeds": args.seeds, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
