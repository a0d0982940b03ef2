"""Train one family of the model zoo on ``builtin:mni-tumour`` and write its checkpoints (docs/zoo.md).

    python examples/zoo/train.py ddpm                     # the full preset, checkpoints at its budgets
    python examples/zoo/train.py spade --preset reduced   # the heavy test's tiny budgets

Checkpoints are cache entries (kind ``zoo``) keyed by the content hash of everything that decides their bytes: the
family, its preset, the seed, the training data's digest, the zoo's source files and the torch and MONAI versions.
Each is written atomically with its SHA-256 and verified before use (``mriq_validate.cache.DiskCache``); a family
whose every checkpoint is present and verified is not trained again. The verified checkpoints are then copied to
``OUT/<family>/<family>-step<NNNNN>.pt`` (what ``mriq-validate track`` gates). Training runs on ``$MRIQ_TORCH_THREADS``
torch threads (default 1, which keeps the weights the same from run to run); every draw comes from ``--seed`` (drawn on
the CPU, so a GPU run takes the same draws). ``--device cuda`` (or ``auto``) trains on a GPU: its checkpoints are
entries of their own (the device is part of the key), since GPU arithmetic rounds differently.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from families import FAMILIES, Batch, mask_condition  # noqa: E402

DATA = "builtin:mni-tumour"
DEFAULT_OUT = HERE / "checkpoints"
SOURCES = ("families.py", "train.py")  # the code whose bytes decide a checkpoint's


def code_digest() -> str:
    """SHA-256 (16 hex) of the zoo's training code."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:16]


def plan(family: str, preset: str, seed: int, cache: Any, device: str = "cpu") -> tuple[dict[str, Any], Any, str]:
    """The config, the training data and the cache key prefix of ``family`` at ``preset`` on ``device``."""
    import monai

    from mriq_validate.cache import content_hash
    from mriq_validate.data import load_data

    data = load_data(DATA, cache)
    config = {**FAMILIES[family].presets[preset], "family": family, "preset": preset, "seed": seed, "data": DATA,
              "contrasts": list(data.contrasts), "n_contrasts": len(data.contrasts), "train_slices": int(data.train.images.shape[0])}
    parts = [config, data.train.digest(), code_digest(), torch.__version__, monai.__version__]
    key = content_hash(*parts, *([device] if device != "cpu" else []))
    return config, data, f"{family}-{preset}-{key}" + ("" if device == "cpu" else f"-{device}")


def entry_name(prefix: str, step: int) -> str:
    return f"{prefix}-step{step:05d}"


def train(family: str, preset: str, *, seed: int = 0, cache_dir: str | None = None, out: Path = DEFAULT_OUT,
          device: str = "cpu", log: Callable[[str], None] = print) -> list[Path]:
    """Checkpoints of ``family`` at every budget of ``preset`` (trained when any is missing from the cache), copied to
    ``out/<family>/``; their paths, in budget order."""
    from mriq_validate.cache import DiskCache, check_entry, default_cache_dir

    cache = DiskCache(cache_dir or default_cache_dir())
    config, data, prefix = plan(family, preset, seed, cache, device)
    budgets = list(config["budgets"])
    entries = {b: cache.path("zoo", entry_name(prefix, b), ".pt") for b in budgets}
    if all(check_entry(p) is None for p in entries.values()):
        log(f"[zoo] {family}: {len(budgets)} checkpoints cached and verified ({prefix})")
    else:
        _train(config, data, cache, prefix, torch.device(device), log)
    dest = out / family
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for b, entry in entries.items():
        reason = check_entry(entry)
        if reason is not None:
            raise RuntimeError(f"zoo checkpoint {entry} failed verification after training ({reason})")
        target = dest / f"{family}-step{b:05d}.pt"
        part = target.with_name(target.name + ".part")
        shutil.copyfile(entry, part)
        os.replace(part, target)  # a checkpoint that exists is complete
        paths.append(target)
    return paths


def _train(config: dict[str, Any], data: Any, cache: Any, prefix: str, device: torch.device, log: Callable[[str], None]) -> None:
    r, bs, seed = config["resolution"], config["batch_size"], config["seed"]
    x0_all = (F.adaptive_avg_pool2d(data.train.images.float(), r) * 2 - 1).to(device)
    cond_all = mask_condition(data.train.masks, r).to(device)
    torch.manual_seed(seed)
    fam = FAMILIES[config["family"]](dict(config))  # networks initialised from the seed (on the CPU)
    for net in fam.nets.values():
        net.to(device)
    fam.start_training()
    gen = torch.Generator().manual_seed(seed)
    n, total = x0_all.shape[0], max(config["budgets"]) + int(config.get("ae_steps", 0))
    params = sum(p.numel() for net in fam.nets.values() for p in net.parameters()) / 1e6
    log(f"[zoo] {config['family']} ({fam.title}): {n} slices at {r}x{r}, {params:.2f} M parameters, {total} steps, "
        f"checkpoints at {config['budgets']}" + (f" after {config['ae_steps']} autoencoder steps" if "ae_steps" in config else ""))
    start = time.perf_counter()
    offset = int(config.get("ae_steps", 0))  # a checkpoint's step counts the generator's steps after any first stage
    for step in range(1, total + 1):
        idx = torch.randint(0, n, (bs,), generator=gen)
        flip = (torch.rand(bs, generator=gen) < 0.5)[:, None, None, None].to(device)  # left-right flip of image and mask together
        x0, cond = x0_all[idx], cond_all[idx]
        batch = Batch(torch.where(flip, x0.flip(-1), x0), torch.where(flip, cond.flip(-1), cond))
        loss = fam.step(batch, gen, step)
        elapsed = time.perf_counter() - start
        if step % 100 == 0 or step in (1, 10):
            log(f"[zoo] {config['family']} step {step}/{total} loss {loss:.4f} ({elapsed:.0f} s, about "
                f"{elapsed / step * (total - step):.0f} s left)")
        if step - offset in config["budgets"]:
            state = fam.state(step - offset, elapsed)
            state["state_dicts"] = {k: {n: t.cpu() for n, t in sd.items()} for k, sd in state["state_dicts"].items()}
            state["config"] = dict(fam.config)  # e.g. the latent scale fixed after the autoencoder stage
            cache.get_or_create("zoo", entry_name(prefix, step - offset), ".pt", lambda: state,
                                lambda s, p: torch.save(s, p), lambda p: p)
            log(f"[zoo] {config['family']}: checkpoint at step {step - offset} ({elapsed:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=sorted(FAMILIES))
    ap.add_argument("--preset", choices=["full", "reduced"], default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder for OUT/<family>/<family>-step<N>.pt")
    ap.add_argument("--cache", default=None, help="the mriq cache (default: $MRIQ_CACHE_DIR or ~/.cache/mriq-validate)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, or auto (cuda when available)")
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device here; use --device cpu")
    torch.set_num_threads(int(os.environ.get("MRIQ_TORCH_THREADS", "1")))
    paths = train(args.family, args.preset, seed=args.seed, cache_dir=args.cache, out=Path(args.out), device=device)
    print(f"[zoo] {args.family}: " + " ".join(str(p) for p in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
