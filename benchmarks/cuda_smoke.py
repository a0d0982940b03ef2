"""CUDA smoke check (run on a GPU machine): the default segmenter trains and predicts on CUDA, and the gate runs
end to end with ``--mriq-device cuda``. Prints timings; exits non-zero on any failure."""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 0
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data
    from mriq_validate.metrics.functional.downstream import dice_per_image
    from mriq_validate.segmenter import SegmenterConfig, train_segmenter

    cache = os.environ.setdefault("MRIQ_CACHE_DIR", "/tmp/mriq-cuda-cache")
    data = load_data("builtin:mni-tumour", DiskCache(cache))
    cfg, dev = SegmenterConfig().resolve(2), torch.device("cuda")
    start = time.perf_counter()
    net, history = train_segmenter(data.train.images, data.train.masks, 4, cfg, dev)
    torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    with torch.no_grad():
        pred = net(data.test.images.to(dev)).argmax(1, keepdim=True).cpu()
    dice = dice_per_image(pred > 0, data.test.masks > 0).mean()
    print(f"cuda: {torch.cuda.get_device_name()}; segmenter {cfg.epochs} epochs in {train_s:.1f} s "
          f"({history['epochs_per_s']:.2f} epochs/s); real-test whole-tumour Dice {dice:.3f}")
    args = ["-p", "mriq_validate.plugin", "-q", "suites/brain_tumour.yaml", "--mriq-model", "builtin:tumour-eraser",
            "--mriq-device", "cuda", "-k", "not PIQE and not NIQE", "--mriq-report", os.environ.get("OUT", "/tmp") + "/report"]
    code = pytest.main(args)
    print(f"gate on cuda with builtin:tumour-eraser: pytest exit code {int(code)} (1 = a gate failed, as expected)")
    return 0 if int(code) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
