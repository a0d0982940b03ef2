"""Deterministic seeds: every random draw derives from the run's seed and a stable key."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(run_seed: int, *keys: object) -> int:
    """Return a 63-bit seed from ``run_seed`` and ``keys`` (e.g. the criterion id), stable across runs."""
    text = "\x1f".join([str(int(run_seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng_for(run_seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded by :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(run_seed, *keys))
