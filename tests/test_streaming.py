"""Streaming the gate: the model is asked for images batch by batch into a mapped scratch array, per-image
measures are scored batch by batch, and none of it shows in the numbers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mriq_validate.cache_admin import verify
from mriq_validate.data.core import ReferenceData, Split
from mriq_validate.errors import ModelError
from mriq_validate.metrics import create_metric
from mriq_validate.options import parse_batch_size
from mriq_validate.seeding import derive_seed
from mriq_validate.session import SCRATCH_KIND, RunContext, RunSettings, auto_batch_size

N_TEST, SIZE = 7, 32


def tiny_data(n_test: int = N_TEST) -> ReferenceData:
    """A bright disc (brain) with a brighter lesion on a dark background; lesion position varies per item."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]

    def split(n: int, offset: int) -> Split:
        images = np.zeros((n, 1, SIZE, SIZE), np.float32)
        masks = np.zeros((n, 1, SIZE, SIZE), np.int64)
        for i in range(n):
            brain = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 2.5) ** 2
            cy, cx = 12 + (i + offset) % 8, 12 + (2 * i + offset) % 8
            lesion = (yy - cy) ** 2 + (xx - cx) ** 2 < 9
            images[i, 0] = np.where(brain, 0.4 + 0.1 * rng.random((SIZE, SIZE)), 0.0) + 0.3 * lesion
            masks[i, 0] = lesion
        return Split(torch.from_numpy(images), torch.from_numpy(masks), tuple(f"{offset + i}" for i in range(n)))

    return ReferenceData("test:tiny", split(12, 100), split(n_test, 0), {"tumour": 1}, {"whole_tumour": (1,)}, (1.0, 1.0),
                         ("t1",), {})


class PerItemNoise:
    """A stochastic model that draws each item's noise from the item itself (its mask) and its own seed: the same images
    whatever the batching. Records the seeds it was called with."""

    def __init__(self, seed: int = 0, nan_items: range = range(0)) -> None:
        self.seed, self.nan_items, self.seeds = seed, nan_items, []
        self.calls = 0

    def generate(self, masks: torch.Tensor, *, seed: int) -> torch.Tensor:
        self.seeds.append(seed)
        out = []
        for m in masks:
            key = int.from_bytes(hashlib.sha256(m.numpy().tobytes()).digest()[:8], "little")
            g = torch.Generator().manual_seed(key ^ self.seed)
            out.append((0.3 + 0.4 * m.float() + 0.1 * torch.rand(m.shape, generator=g)).clamp(0, 1))
        images = torch.stack(out)
        first = self.calls
        self.calls += len(masks)
        for i in range(len(masks)):
            if first + i in self.nan_items:
                images[i] = float("nan")
        return images


def context(tmp_path: Path, model: object, batch_size: int | str, data: ReferenceData | None = None) -> RunContext:
    """A run context on ``data`` (default: the tiny data) with ``model`` in-process, the cache under ``tmp_path``."""
    data = data or tiny_data()
    return RunContext(RunSettings(model="test:per-item", data="test:tiny", device="cpu", seed=3, cache_dir=str(tmp_path / "cache"),
                                  batch_size=batch_size), "test:tiny", data=data, model=model)


def _mapped_file(t: torch.Tensor) -> str | None:
    """The file whose mapping holds ``t``'s memory (/proc/self/maps), or None."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi and len(parts) == 6:
            return parts[5].strip()
    return None


def test_results_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    """(a) Generated images and per-image scores are identical for batch sizes 1, 3 and N (a model that seeds per item)."""
    metric = create_metric("brain_intensity", {"percentile": 90})
    images, scores = {}, {}
    for bs in (1, 3, N_TEST):
        ctx = context(tmp_path / str(bs), PerItemNoise(), bs)
        sample, paired = ctx.generated("test")
        assert paired and len(sample) == N_TEST
        images[bs], scores[bs] = sample.images.clone(), ctx.prepare(metric, sample)
        ctx.close()
    for bs in (1, 3):
        assert torch.equal(images[bs], images[N_TEST])
        np.testing.assert_array_equal(scores[bs], scores[N_TEST])
    assert len(np.unique(scores[N_TEST])) > 1  # the scores differ between items: the order of the batches is checked too


def test_each_batch_gets_its_own_seed_and_batch_zero_the_split_seed(tmp_path: Path) -> None:
    """Batch 0 is seeded as the one call for the whole split always was; batch k >= 1 with its own derived seed; the
    report's model provenance says so."""
    model = PerItemNoise()
    ctx = context(tmp_path, model, 3)
    ctx.generated("test")
    assert model.seeds == [derive_seed(3, "generated", "test")] + [derive_seed(3, "generated", "test", k) for k in (1, 2)]
    prov = ctx.provenance()["model"]
    assert prov["batch_size"] == 3 and "batch 0 seeded derive_seed(seed, 'generated', split)" in prov["batch_seeding"]
    ctx.close()


def test_generated_images_are_mapped_from_the_scratch_folder_which_close_removes(tmp_path: Path) -> None:
    """(b) The generated sample is backed by a file in <cache>/scratch/<pid>-<random>/; close() removes the folder; a
    scratch folder left by a dead process is removed by the next run, and the cache commands take it in their stride."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "cache" / SCRATCH_KIND / f"{dead.pid}-0000"
    stale.mkdir(parents=True)
    (stale / "1.bin").write_bytes(b"left by a killed run")
    ctx = context(tmp_path, PerItemNoise(), 3)
    sample, _ = ctx.generated("test")
    folder = ctx.scratch_dir
    assert folder is not None and folder.parent == tmp_path / "cache" / SCRATCH_KIND and folder.name.startswith(f"{os.getpid()}-")
    assert (_mapped_file(sample.images) or "").startswith(str(folder))
    assert not stale.exists()
    _, bad, busy = verify(tmp_path / "cache")
    assert bad == [] and busy == []
    ctx.close()
    assert not folder.exists()
    assert float(sample.images.sum()) > 0  # the mapped tensor stays readable after its file is unlinked


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_a_bad_batch_size_is_refused(value: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
        parse_batch_size(value)
    assert parse_batch_size("auto") == "auto" and parse_batch_size("64") == 64


@pytest.mark.parametrize("value", ["0", "abc"])
def test_a_bad_batch_size_is_a_usage_error_naming_the_option(run_plugin, value: str) -> None:  # type: ignore[no-untyped-def]
    """(c) --mriq-batch-size 0 / abc: usage error naming the option."""
    result = run_plugin(f"--mriq-batch-size={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--mriq-batch-size" in result.stderr.str() and repr(value) in result.stderr.str()


def test_nan_in_the_second_batch_is_an_error_naming_its_items(tmp_path: Path) -> None:
    """(d) A model that returns NaN in batch 2 ERRORs naming the batch's item range."""
    ctx = context(tmp_path, PerItemNoise(nan_items=range(4, 5)), 3)
    with pytest.raises(ModelError, match=r"generate\(\) for items 3-5 of 7 returned non-finite values .* image\(s\) \[1\]"):
        ctx.generated("test")
    ctx.close()


@pytest.mark.parametrize("name", ["builtin:mni-tumour", "builtin:mni-tumour-3d"])
def test_auto_batch_keeps_the_embedded_splits_in_one_batch(cache_dir: Path, name: str) -> None:
    """auto on CPU: each split of the embedded 2D and 3D data (their item shapes and sizes as loaded) is one batch."""
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data

    data = load_data(name, DiskCache(cache_dir))
    n = auto_batch_size(tuple(data.image_shape), torch.device("cpu"))
    assert n >= max(len(data.train), len(data.test)), (n, len(data.train), len(data.test))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_batch_is_the_most_whole_segmenter_batches_the_budget_holds(device: str) -> None:
    """The batch is derived from the budget of the device's kind (AUTO_BATCH_BYTES) and the segmenter's inference batch
    (SEGMENTER_BATCH): it fits the budget, one more segmenter batch would not, and it is a multiple of the segmenter's
    batch whenever one fits; an item larger than the budget goes alone (BraTS-size volumes on CPU)."""
    from mriq_validate.devices import AUTO_BATCH_BYTES, SEGMENTER_BATCH

    budget = AUTO_BATCH_BYTES[device]
    shapes = [(4, 128, 128), (1, 128, 128), (3, 240, 240), (4, 64, 72, 64), (1, 96, 112, 96), (4, 155, 240, 240), (4, 512, 512, 512)]
    for shape in shapes:
        item = int(np.prod(shape)) * 4  # float32
        unit = SEGMENTER_BATCH[len(shape) - 1]
        n = auto_batch_size(shape, torch.device(device))
        if item > budget:
            assert n == 1, (shape, n)
            continue
        step = unit if n >= unit else 1
        assert n * item <= budget < (n + step) * item, (shape, n)
        assert budget // item < unit or n % unit == 0, (shape, n)


def test_auto_batch_size_is_the_one_the_run_uses(tmp_path: Path) -> None:
    """--mriq-batch-size auto: the run asks the model once for the tiny split (it fits one batch) and says so."""
    model = PerItemNoise()
    ctx = context(tmp_path, model, "auto")
    sample, _ = ctx.generated("test")
    assert ctx.batch_size == auto_batch_size(tuple(ctx.data.image_shape), torch.device("cpu")) >= N_TEST
    assert len(model.seeds) == 1 and len(sample) == N_TEST
    assert ctx.provenance()["model"]["batch_size"] == ctx.batch_size
    ctx.close()


RSS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from pathlib import Path
    from mriq_validate.arrays import as_tensor, read_bundle, write_bundle
    from mriq_validate.data.core import ReferenceData, Split
    from mriq_validate.metrics import create_metric
    from mriq_validate.session import RunContext, RunSettings

    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

    def reset():
        open("/proc/self/clear_refs", "w").write("5")

    tmp, n, bs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    brain = ((yy - 64) ** 2 + (xx - 64) ** 2 < 50 ** 2).astype(np.float32)
    images = np.lib.format.open_memmap(tmp / "img.npy", "w+", np.float32, (n, 1, 128, 128))
    for i in range(0, n, 500):
        images[i:i + 500] = brain * rng.uniform(0.3, 0.9, (min(500, n - i), 1, 1, 1)).astype(np.float32)
    masks = np.lib.format.open_memmap(tmp / "msk.npy", "w+", np.int64, (n, 1, 128, 128))
    for i in range(0, n, 500):
        masks[i:i + 500, :, 60:68, 60:68] = 1
    write_bundle(tmp / "data.bundle", {"images": images, "masks": masks})
    del images, masks
    arrays, _ = read_bundle(tmp / "data.bundle")
    split = Split(as_tensor(arrays["images"]), as_tensor(arrays["masks"]), tuple(map(str, range(n))))
    small = Split(split.images[:4], split.masks[:4], ("0", "1", "2", "3"))
    data = ReferenceData("test:big", small, split, {"tumour": 1}, {"whole_tumour": (1,)}, (1.0, 1.0), ("t1",), {})

    class Scaled:
        def generate(self, masks, *, seed):
            return 0.5 * (masks > 0).float() + 0.25

    ctx = RunContext(RunSettings(model="test", data="test", device="cpu", cache_dir=str(tmp / "cache"), batch_size=bs), "test",
                     data=data, model=Scaled())
    metric = create_metric("brain_intensity", {"percentile": 90})
    out = {}
    reset(); base = hwm()
    ctx.generated("test")
    out["generate"] = hwm() - base
    reset(); base = hwm()
    ctx.prepare(metric, ctx.real("test"))
    out["prepare_real"] = hwm() - base
    ctx.close()
    print(json.dumps(out))
""")


@pytest.mark.heavy
def test_peak_memory_of_generation_and_per_image_scoring_stays_flat(tmp_path: Path) -> None:
    """(e) A mapped split of 6000 slices (1×128×128 float32 images, 393 MB, and int64 masks, 786 MB): generating images
    for its masks into the scratch array and scoring a per-image measure on it, 256 a batch (1/23 of the split), raise
    the peak RSS by under a quarter of the split's size (295 MB); holding it whole would take 1180 MB. Measured on one
    thread over repeated runs: 98-199 MB for generating and 69 MB for scoring. The spread is the C allocator's, not
    the data's (glibc keeps or returns a freed batch's arrays depending on its history: the same run at 3000 slices
    ranged 97-166 MB), so the split is large enough for a quarter of it to stand clear of that noise."""
    n = 6000
    data_bytes = n * 128 * 128 * (4 + 8)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as under xdist: the allocator's widest spread
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path), str(n), "256"], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks["generate"] < data_bytes / 4, peaks
    assert peaks["prepare_real"] < data_bytes / 4, peaks


class Unconditional:
    """A model with only ``sample``: each call's images and masks; masks stop after ``masks_until`` calls."""

    def __init__(self, masks_until: int = 99) -> None:
        self.sizes: list[int] = []
        self.masks_until = masks_until

    def sample(self, n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.sizes.append(n)
        g = torch.Generator().manual_seed(seed)
        masks = (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.9).long()
        return 0.2 + 0.5 * masks.float(), masks if len(self.sizes) <= self.masks_until else None


def test_an_unconditional_model_is_asked_batch_by_batch(tmp_path: Path) -> None:
    """``sample`` is called per batch (3, 3, 1 items); images and masks land in mapped arrays in order; a model whose
    masks stop half way is an error naming the batch."""
    model = Unconditional()
    ctx = context(tmp_path, model, 3)
    sample, paired = ctx.generated("test")
    assert not paired and model.sizes == [3, 3, 1] and sample.masks is not None
    assert torch.equal(sample.images, 0.2 + 0.5 * sample.masks.float())
    assert (_mapped_file(sample.masks) or "").startswith(str(ctx.scratch_dir))
    ctx.close()
    ctx = context(tmp_path / "b", Unconditional(masks_until=1), 3)
    with pytest.raises(ModelError, match=r"masks for some batches and none for others \(items 3-5 of 7: none\)"):
        ctx.generated("test")
    ctx.close()
