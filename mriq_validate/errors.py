"""Exceptions with messages written for the person who has to fix the input.

Every error the tool raises on purpose derives from :class:`MriqError`; the plugin turns them into a
pytest ERROR (the criterion could not be evaluated), never a PASS.
"""

from __future__ import annotations


class MriqError(Exception):
    """Base class: a criterion could not be evaluated. The message names the file, key or value."""


class SuiteError(MriqError):
    """A suite file is malformed: bad YAML, unknown key, wrong type, unknown metric or perturbation."""


class DataError(MriqError):
    """Reference data is missing, corrupt or inconsistent (shape, spacing, labels, empty folder)."""


class ModelError(MriqError):
    """The model under test could not be loaded, raised, or broke the output contract."""


class MissingFileError(MriqError):
    """A file the user must supply (weights, parameters) is missing; nothing is downloaded."""


class MetricError(MriqError):
    """A metric cannot be computed on the given input (wrong parameters, too few images, ...)."""


class CacheError(MriqError):
    """The on-disk cache cannot be written, locked or repaired; the message names the folder or entry and the fix."""
