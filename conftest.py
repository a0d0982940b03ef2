"""What every pytest run from a checkout of this repository needs, whoever starts it (``make test``, ``.ci/run``, an
editor): the repository's own cache folder and no network.

- ``MRIQ_CACHE_DIR`` defaults to ``<repository>/.mriq-cache``: the embedded data and the trained segmenters are built
  there once and reused by every later run (``make clean`` removes it);
- the offline setting of :func:`mriq_validate._compat.go_offline`: a missing pretrained weight fails at once.

Both are defaults: a value already in the environment wins. Fixtures live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mriq_validate._compat import go_offline

os.environ.setdefault("MRIQ_CACHE_DIR", str(Path(__file__).resolve().parent / ".mriq-cache"))
go_offline()
