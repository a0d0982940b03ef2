"""Value parsers shared by the pytest options (``--mriq-device``, ``--mriq-seed``, ...) and the ``mriq-validate`` CLI.

Each takes the text as given and returns the typed value, or raises :class:`argparse.ArgumentTypeError` with what was
expected; pytest and argparse both turn that into a usage error (exit status 4 and 2) naming the option.
"""

from __future__ import annotations

import argparse
import re

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def parse_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not _DEVICE_RE.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def parse_seed(value: str) -> int:
    """A non-negative integer."""
    try:
        seed = int(value)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a non-negative integer")
    return seed


def parse_spec(value: str) -> str:
    """A non-empty model or data spec, stripped."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; expected a model or data spec (e.g. builtin:real, my_model.py:build, a folder)")
    return value.strip()


def parse_timeout(value: str) -> float:
    """A positive, finite number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive number of seconds")
    return seconds


def _auto_or_positive(value: str, what: str) -> int | str:
    """``auto`` or a positive integer; ArgumentTypeError naming ``what`` the integer counts otherwise."""
    if value.strip() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a positive integer ({what}) or auto")
    return n


def parse_batch_size(value: str) -> int | str:
    """``auto`` or a positive integer (items per model call and per batch of per-image scoring)."""
    return _auto_or_positive(value, "items per batch")


def parse_workers(value: str) -> int | str:
    """``auto`` or a positive integer (CPU processes for independent segmenter trainings)."""
    return _auto_or_positive(value, "training processes")
