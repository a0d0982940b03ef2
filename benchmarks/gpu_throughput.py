"""Throughput of mriq's segmenter training against a bare MONAI loop, and the gate's overhead over bare metric calls
on CPU (small sizes, so that CI can run the script) and CUDA (``--device cuda``).

(a) bare MONAI loop: the same network as the library builds (:data:`mriq_validate.segnets.NETWORKS`, the default
    :class:`~mriq_validate.segmenter.SegmenterConfig`), the same loss (MONAI ``DiceCELoss(to_onehot_y=True,
    softmax=True)``), Adam at the same learning rate, the same batch size; a plain loop over batches of tensors held on
    the device; images/s over ``--steps`` steps after ``--warmup`` steps.
(b) :func:`mriq_validate.segmenter.train_segmenter` on the same data (held in host memory, and memory-mapped from a
    bundle file as a large reference set is; ``--source``), images/s over the epochs that make about ``--steps`` steps,
    after a one-epoch warm-up; its per-batch work the bare loop does not do (index the host set, pad, flip, pin, copy)
    is what the ratio (b)/(a) prices. Target: >= 0.5.
Both at ``fp32`` and ``bf16`` (``--precision``), ``--size`` × ``--size`` slices of ``--channels`` contrasts and each
``--batch`` size. Times are wall time on CUDA and this process's CPU time on the CPU (see :func:`clock`).

(c) metric overhead on the embedded ``builtin:mni-tumour`` (real test split against real training split): the bare
    call (PIQE: the functional on a tensor; FID: pixel features of both sets then the Fréchet distance of the two
    feature matrices; Dice: predict with the cached segmenter, then MONAI ``DiceMetric``) against the gate's path
    (``RunContext.prepare`` + ``Metric.value`` over every item; the run's memos and the feature cache are emptied
    before each repeat, so that nothing is reused; the data and the trained segmenter stay loaded, as in a run that
    loaded them for an earlier criterion); overhead = gate / bare − 1. Target: <= 10%.

    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --size 64 --batch 16 --n 128 --steps 16   # CI size
    .venv/bin/python benchmarks/gpu_throughput.py --device cuda --size 192 --batch 64 256 --n 4096 --steps 200

Not measured here: the whole gate over 10,000 generated slices at 192×192 (benchmarks/scale.py times the gate's
stages on enlarged embedded cohorts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mriq_validate import arrays
from mriq_validate.segmenter import SegmenterConfig, train_segmenter
from mriq_validate.segnets import LOSSES, NETWORKS, autocast, torch_threads

N_CLASSES = 4


def synthetic(n: int, channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy slices of ``channels`` contrasts with a disc of labels 1..3 in rings (speed does not depend on content)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = torch.randint(size // 4, size - size // 4, (n, 2), generator=g)
    r = torch.sqrt((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2).float() / size
    masks = (r < 0.05).long() * 1 + ((r >= 0.05) & (r < 0.08)).long() * 3 + ((r >= 0.08) & (r < 0.12)).long() * 2
    base = 0.3 + 0.5 * (masks > 0).float()
    images = (base[:, None] + 0.05 * torch.randn(n, channels, size, size, generator=g)).clamp(0, 1)
    return images, masks[:, None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """Seconds: wall time on an accelerator; this process's CPU time on the CPU (one torch thread by default), so that
    other work on a shared machine does not enter the ratios."""
    return time.perf_counter() if device.type != "cpu" else time.process_time()


def bare_loop(images: torch.Tensor, masks: torch.Tensor, cfg: SegmenterConfig, device: torch.device, steps: int, warmup: int) -> float:
    """(a) images/s of a plain MONAI training loop over tensors already on ``device``."""
    torch.manual_seed(cfg.seed)
    net = NETWORKS[cfg.network](cfg, N_CLASSES, images.shape[1]).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = LOSSES[cfg.loss]()
    x_all, y_all = images.to(device), masks.to(device)
    n, b = x_all.shape[0], cfg.batch_size
    assert b is not None

    def step(i: int) -> None:
        j = (i * b) % max(1, n - b + 1)
        opt.zero_grad(set_to_none=True)
        with autocast(device, cfg.precision):
            loss = loss_fn(net(x_all[j:j + b]), y_all[j:j + b])
        loss.backward()
        opt.step()

    with torch_threads(device):
        for i in range(warmup):
            step(i)
        sync(device)
        start = clock(device)
        for i in range(steps):
            step(i)
        sync(device)
    return steps * b / (clock(device) - start)


def mriq_training(images: torch.Tensor, masks: torch.Tensor, cfg: SegmenterConfig, device: torch.device, steps: int) -> float:
    """(b) images/s of :func:`train_segmenter` over the epochs that make about ``steps`` optimiser steps."""
    assert cfg.batch_size is not None
    n = images.shape[0]
    epochs = max(1, round(steps / math.ceil(n / cfg.batch_size)))
    train_segmenter(images, masks, N_CLASSES, replace(cfg, epochs=1), device)  # warm-up (allocations, cuDNN autotuning)
    sync(device)
    start = clock(device)
    train_segmenter(images, masks, N_CLASSES, replace(cfg, epochs=epochs), device)
    sync(device)
    return epochs * n / (clock(device) - start)


def mapped(images: torch.Tensor, masks: torch.Tensor, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The set written to a bundle file and read back memory-mapped (as a large reference set is held)."""
    path = folder / "set.bundle"
    arrays.write_bundle(path, {"images": images, "masks": masks})
    got, _ = arrays.read_bundle(path)
    return arrays.as_tensor(got["images"]), arrays.as_tensor(got["masks"])


def training(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict[str, Any]]:
    images, masks = synthetic(args.n, args.channels, args.size)
    sources = {"memory": (images, masks)}
    if "mapped" in args.source:
        sources["mapped"] = mapped(images, masks, folder)
    rows = []
    for batch in args.batch:
        for precision in args.precision:
            cfg = replace(SegmenterConfig().resolve(2), batch_size=batch, precision=precision)
            bare = bare_loop(images, masks, cfg, device, args.steps, args.warmup)
            for source in args.source:
                x, y = sources[source]
                ours = mriq_training(x, y, cfg, device, args.steps)
                row = {"batch": batch, "precision": precision, "source": source, "bare_img_s": bare, "mriq_img_s": ours,
                       "ratio": ours / bare}
                rows.append(row)
                print(f"train {args.size}x{args.size}x{args.channels} batch {batch:4d} {precision} {source:6s}: bare MONAI "
                      f"{bare:9.1f} img/s, mriq {ours:9.1f} img/s, ratio {ours / bare:.2f} (target >= 0.5)", flush=True)
    return rows


def best_of(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """The shortest time (:func:`clock`) of ``repeats`` calls of ``fn`` (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = clock(device)
        fn()
        sync(device)
        times.append(clock(device) - start)
    return min(times)


def metric_overhead(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict[str, Any]]:
    """(c) bare metric calls against the gate's prepare + value through a RunContext, on the embedded data."""
    from monai.metrics import DiceMetric

    from mriq_validate.metrics import create_metric
    from mriq_validate.metrics.base import Sample
    from mriq_validate.metrics.features import make_extractor
    from mriq_validate.metrics.functional.distribution import fid_from_features
    from mriq_validate.metrics.functional.iqa import piqe
    from mriq_validate.session import RunContext, RunSettings

    ctx = RunContext(RunSettings(model=None, data="builtin:mni-tumour", device=str(device), cache_dir=args.cache),
                     "builtin:mni-tumour")
    test, train = ctx.data.test, ctx.data.train
    every = np.arange(len(test))
    rows = []

    def forget() -> None:
        """Nothing memoised: the run's prepared values and predictions, and the cached features, are dropped (the data
        and the trained segmenter stay, as in a run that loaded them for an earlier criterion)."""
        ctx._prepared.clear()
        ctx._predictions.clear()
        shutil.rmtree(ctx.cache.root / "features", ignore_errors=True)

    def gate(name: str, params: dict[str, Any], sample: Sample) -> Callable[[], float]:
        metric = create_metric(name, params)

        def run() -> float:
            forget()
            return metric.value(ctx.prepare(metric, sample), every)
        return run

    grey = test.images[:, :1].contiguous()
    bare_piqe = lambda: float(piqe(grey, device).mean())  # noqa: E731
    gate_piqe = gate("piqe", {}, Sample(grey, None, "real test (channel 0)"))

    ext = make_extractor(ctx, {"extractor": "pixels"})
    bare_fid = lambda: fid_from_features(ext(test.images, test.masks), ext(train.images, train.masks))  # noqa: E731
    gate_fid = gate("fid", {"features": {"extractor": "pixels"}}, ctx.real("test"))

    seg_params = {"epochs": args.dice_epochs}
    seg_cfg = SegmenterConfig.from_params(seg_params)
    seg = ctx.segmenter(seg_cfg)  # trained once; both paths use it
    dice_metric = DiceMetric(include_background=True, reduction="none")

    def bare_dice() -> float:
        pred = seg.predict(test.images)
        region = lambda m: ctx.data.region_mask(m, "whole_tumour").float()  # noqa: E731
        return float(dice_metric(region(pred), region(test.masks)).nan_to_num(1.0).mean())

    gate_dice = gate("dice", {"segmenter": seg_params, "min_real_dice": 0.0}, ctx.real("test"))

    for name, bare, ours in (("piqe", bare_piqe, gate_piqe), ("fid", bare_fid, gate_fid), ("dice", bare_dice, gate_dice)):
        bare(), ours()  # warm-up (imports, kernels, data)
        b, o = best_of(bare, args.repeats, device), best_of(ours, args.repeats, device)
        rows.append({"metric": name, "bare_s": b, "gate_s": o, "overhead": o / b - 1})
        print(f"metric {name:5s}: bare {b * 1e3:8.1f} ms, gate prepare+value {o * 1e3:8.1f} ms, overhead {100 * (o / b - 1):+6.1f}% "
              f"(target <= 10%)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64, help="slice side (192 on a GPU)")
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--batch", type=int, nargs="+", default=[16], help="batch sizes (e.g. 64 256 on an H200)")
    ap.add_argument("--n", type=int, default=128, help="slices in the training set")
    ap.add_argument("--steps", type=int, default=16, help="timed optimiser steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of the bare loop first")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--source", nargs="+", default=["memory", "mapped"], choices=["memory", "mapped"])
    ap.add_argument("--parts", nargs="+", default=["train", "metrics"], choices=["train", "metrics"])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each metric call (best kept)")
    ap.add_argument("--dice-epochs", type=int, default=2, help="epochs of the segmenter the Dice overhead uses")
    ap.add_argument("--cache", default=os.environ.get("MRIQ_CACHE_DIR", "/tmp/mriq-bench-cache"),
                    help="cache folder for the data and segmenter of (c) (its features/ is emptied between repeats)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    where = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                           f" ({os.environ.get('MRIQ_TORCH_THREADS', '1')} torch thread(s), $MRIQ_TORCH_THREADS)")
    print(f"device {where}; torch {torch.__version__}", flush=True)
    out: dict[str, Any] = {"device": where, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="mriq-throughput-") as tmp:
        if "train" in args.parts:
            out["train"] = training(args, device, Path(tmp))
        if "metrics" in args.parts:
            out["metrics"] = metric_overhead(args, device, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
