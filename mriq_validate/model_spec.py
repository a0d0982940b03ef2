"""The ``--mriq-model`` value, parsed once into a typed :class:`ModelSpec`: which kind of model it names, its target
(a builtin's name, a file, a folder or a module), its factory's name, and the SHA-256 of its file.

Kinds are detected in the order of :data:`KINDS`, each by a pure rule on the text (and, for folders, whether the folder
exists), as perturbations register by name: the first that matches decides. What a kind is built into is
:mod:`mriq_validate.models`' business; the gate (:func:`~mriq_validate.models.load_model`), the shard record, ``track``
and the report all take the spec and its one hash from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import file_sha256
from .errors import ModelError

TORCHSCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".torchscript"})
#: The kinds whose target is one file whose bytes are the model (hashed in the report, the shard record and track).
FILE_KINDS = ("torchscript", "python-file")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--mriq-model``: ``kind`` (a key of :data:`KINDS`), ``target`` (builtin name, path or module) and
    ``name`` (the factory of a ``python-file`` or ``module``; "" otherwise)."""

    text: str
    kind: str
    target: str
    name: str = ""

    @property
    def file(self) -> Path | None:
        """The model's own file (TorchScript, Python), None for kinds without one."""
        return Path(self.target) if self.kind in FILE_KINDS else None

    def sha256(self, where: str | Path = ".") -> str | None:
        """SHA-256 of :attr:`file` (relative to ``where``), None without a file or when it cannot be read."""
        if self.file is None:
            return None
        try:
            return file_sha256(Path(where) / self.file)[0]
        except OSError:
            return None


def _builtin(text: str) -> tuple[str, str] | None:
    return (text.split(":", 1)[1], "") if text.startswith("builtin:") else None


def _torchscript(text: str) -> tuple[str, str] | None:
    return (text, "") if Path(text).suffix in TORCHSCRIPT_SUFFIXES else None


def _folder(text: str) -> tuple[str, str] | None:
    return (text, "") if Path(text).is_dir() else None


def _python_file(text: str) -> tuple[str, str] | None:
    target, _, name = text.rpartition(":")
    return (target, name) if target.endswith(".py") else None


def _module(text: str) -> tuple[str, str] | None:
    target, _, name = text.rpartition(":")
    return (target, name) if target else None


#: kind → its rule (text → (target, name), or None when the text is not of this kind), tried in this order
KINDS: dict[str, Callable[[str], tuple[str, str] | None]] = {
    "builtin": _builtin, "torchscript": _torchscript, "folder": _folder, "python-file": _python_file, "module": _module,
}
FORMS = ("builtin:NAME, path/file.py:NAME, package.module:NAME, a folder of images, a MONAI bundle folder, a diffusers "
         "pipeline folder, or a TorchScript .pt file")


def parse_model_spec(text: str) -> ModelSpec:
    """``text`` as a :class:`ModelSpec`; ModelError naming the value and the forms when no kind matches."""
    for kind, rule in KINDS.items():
        found = rule(text)
        if found is not None:
            return ModelSpec(text, kind, *found)
    raise ModelError(f"--mriq-model {text!r}: not understood (or the folder does not exist); expected {FORMS}")
