"""Cost of the default downstream segmenter: training epochs/s and slices/s, inference slices/s (batch 64).

Synthetic data of the embedded cohort's size (256 training slices of 128×128, labels 0..3; speed does not depend on
the content), the default :class:`SegmenterConfig` unless ``--config`` overrides fields. CPU always; CUDA too when
available (``--device all``, the default). The first epoch is a warm-up (allocations, cuDNN autotuning) and is not
timed; then ``--epochs`` epochs are timed.

    .venv/bin/python benchmarks/downstream_cost.py [--epochs 2] [--device all|cpu|cuda] [--threads 1 2] [--config '{"epochs": 12}']

CPU threads: the library trains and predicts with ``$MRIQ_TORCH_THREADS`` threads (default 1, see
``mriq_validate.segnets.cpu_threads``); ``--threads`` measures each given count in turn (0 = torch's default).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, replace

import torch

from mriq_validate.segmenter import Segmenter, SegmenterConfig, train_segmenter
from mriq_validate.segnets import THREADS_ENV, cpu_threads

N_TRAIN, N_INFER, SIZE, N_CLASSES, INFER_BATCH = 256, 256, 128, 4, 64


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy slices with a bright disc (labels 1..3 in rings) each."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    c = torch.randint(30, SIZE - 30, (n, 2), generator=g)
    r = torch.sqrt((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2).float()
    masks = (r < 6).long() * 1 + ((r >= 6) & (r < 10)).long() * 3 + ((r >= 10) & (r < 16)).long() * 2
    images = (0.3 + 0.5 * (masks > 0).float() + 0.05 * torch.randn(n, SIZE, SIZE, generator=g)).clamp(0, 1)
    return images[:, None], masks[:, None]


def measure(device: torch.device, cfg: SegmenterConfig, epochs: int) -> dict[str, float]:
    images, masks = synthetic(N_TRAIN)
    train_segmenter(images, masks, N_CLASSES, replace(cfg, epochs=1), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    net, _ = train_segmenter(images, masks, N_CLASSES, replace(cfg, epochs=epochs), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = (time.perf_counter() - start) / epochs
    seg = Segmenter(net, N_CLASSES, cfg, "bench", device)
    test, _ = synthetic(N_INFER, seed=1)
    seg.predict(test[:INFER_BATCH], batch_size=INFER_BATCH)  # warm-up
    start, reps = time.perf_counter(), 3
    for _ in range(reps):
        seg.predict(test, batch_size=INFER_BATCH)
    infer_s = (time.perf_counter() - start) / reps
    return {"epochs_per_s": 1 / train_s, "train_slices_per_s": N_TRAIN / train_s, "s_per_epoch": train_s,
            "infer_slices_per_s": N_INFER / infer_s, "full_training_s": cfg.epochs * train_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help=f"CPU thread counts to measure (sets ${THREADS_ENV}; 0 = torch's default); default: the library's setting")
    ap.add_argument("--config", default="{}", help="JSON overrides of SegmenterConfig fields")
    args = ap.parse_args()
    cfg = SegmenterConfig.from_params(json.loads(args.config)).resolve(2)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    threads = args.threads if args.threads is not None else [None]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA not available: CPU only")
        devices = [d for d in devices if d != "cuda"]
    print(f"segmenter {json.dumps(asdict(cfg))}")
    print(f"{N_TRAIN} training slices {SIZE}x{SIZE}, {args.epochs} timed epochs after 1 warm-up; inference batch {INFER_BATCH}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch default {torch.get_num_threads()} threads")
    print(f"| device | epochs/s | s/epoch | train slices/s | full training ({cfg.epochs} epochs) | inference slices/s |")
    print("|---|---|---|---|---|---|")
    runs = [("cpu", t) for t in threads] * ("cpu" in devices) + [("cuda", None)] * ("cuda" in devices)
    for name, t in runs:
        if t is not None:
            os.environ[THREADS_ENV] = str(t)
        dev = torch.device(name)
        r = measure(dev, cfg, args.epochs)
        label = torch.cuda.get_device_name(dev) if name == "cuda" else f"cpu ({cpu_threads() or torch.get_num_threads()} threads)"
        print(f"| {label} | {r['epochs_per_s']:.3f} | {r['s_per_epoch']:.2f} | {r['train_slices_per_s']:.1f} | "
              f"{r['full_training_s']:.0f} s | {r['infer_slices_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
