"""No guessed bit depth: integer images whose values fit a narrower depth than their type, with nothing saying so.

An integer image without a stated range (no PNG ``sBIT`` chunk, no ``mriq_folder.json``) is put on [0, 1] by its
type's maximum (255, 65535, 32767 for ``int16``). That is a guess when the values use only part of the type, the
common case being 12-bit scanner or converter output stored in 16-bit containers (PNG allows only 1, 2, 4, 8 and 16
bits per grey sample, ISO/IEC 15948 §11.2.2; NumPy and NIfTI-1 have no 12-bit integer type): read by 65535, such
images are 16 times too dark, which no per-image measure (Dice included) sees.

The rule: when the largest value of *every* such file of one type together is below 2^(b-2), b the type's value bits
(at least two of its bits are never used), the depth is not guessed; the folder is refused with a message that says
how to state it. One dark image is fine when others use the type's range, so only the folder-wide maximum counts. A
factor of 2 (one unused bit, e.g. 15-bit values in 16 bits) is left to the ``INTENSITY-SCALE`` criterion, which
catches brightness off by a factor of √2 or more. All-zero images are black whatever the depth: nothing is guessed.
"""

from __future__ import annotations

from pathlib import Path

#: Files named in a refusal before "... (N files)".
EXAMPLES = 3


def narrow_bits(largest: int, type_max: int) -> int | None:
    """The bits ``largest`` (the folder-wide maximum, > 0) needs when that is at least two fewer than the type's
    (``type_max`` = 2^b - 1), i.e. ``largest < 2^(b-2)``; None when the type's range is plausibly in use."""
    bits = int(type_max).bit_length()
    need = int(largest).bit_length()
    return need if largest > 0 and need <= bits - 2 else None


def refusal(files: list[Path], largest: int, type_max: int, type_name: str, sidecar: str, png: bool) -> str:
    """The message for ``files`` (one type, ``type_name`` e.g. ``16-bit PNG`` or ``int16``) whose folder-wide largest
    value ``largest`` fits :func:`narrow_bits`: the files (first few and the count), the values, the type's depth, and
    the ways to state the range (``sidecar`` is the folder's range file, with its field and an example)."""
    need = narrow_bits(largest, type_max)
    assert need is not None, "refusal() is for values that fit a narrower depth"
    folder, top, bits = files[0].parent, 2**need - 1, int(type_max).bit_length()
    named = ", ".join(p.name for p in files[:EXAMPLES]) + (", ..." if len(files) > EXAMPLES else "")
    ways = [f'a {sidecar} in the folder with the field "range" (the stored values that mean 0 and 1), e.g. {{"range": [0, {top}]}} '
            f"for {need}-bit data"]
    if png:
        ways.insert(0, f"an sBIT chunk in each PNG giving the significant bits, e.g. {need} (PNG specification ISO/IEC 15948 §11.3.3.4)")
    ways.append("save floating-point values in [0, 1], normalised as the reference data are")
    return (f"model folder {folder}: {named} ({len(files)} files) hold {type_name} integers whose largest stored value is "
            f"{largest}, folder-wide: that fits in {need} bits, not the type's {bits} value bits (maximum {type_max}). Read by "
            f"the type's maximum the images would be about {(type_max + 1) // (top + 1)} times too dark, so the bit depth is "
            f"not guessed: say what the values mean with " + "; or ".join(ways))
