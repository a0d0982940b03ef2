"""Reading a suite's YAML safely: its encoding (UTF-8, or UTF-16/32 with a BOM), YAML 1.2 booleans, a bound on alias
expansion ("billion laughs"), and the key paths and lines that error messages name (:mod:`mriq_validate.suite`)."""

from __future__ import annotations

import codecs
import math
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import SuiteError

MAX_YAML_NODES = 100_000  # after alias expansion: bounds "billion laughs" alias bombs
_REPR_CHARS = 80
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class SuiteLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. (YAML 1.1 reads ``on:``, ``yes``, ``no``, ``off`` as booleans, which would
    turn the threshold key ``on:`` into ``True``.)"""


SuiteLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SuiteLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def decode_suite_bytes(raw: bytes, path: Path | str) -> str:
    """Text of a suite file: UTF-8 (with or without BOM) or UTF-16/32 with a BOM; SuiteError naming the file otherwise."""
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not valid {encoding.upper()} text (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}); save "
                         f"the suite as UTF-8") from None


def short(value: Any) -> str:
    """``repr(value)``, cut to a readable length for error messages."""
    text = repr(value)
    return text if len(text) <= _REPR_CHARS else f"{text[:_REPR_CHARS]}... ({len(text)} characters)"


def expanded_nodes(node: yaml.Node, memo: dict[int, int] | None = None) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (memoised on shared nodes: linear time)."""
    memo = {} if memo is None else memo

    def count(n: yaml.Node) -> int:
        if id(n) not in memo:
            memo[id(n)] = 0  # a recursive alias counts once
            children = [c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode) else (
                n.value if isinstance(n, yaml.SequenceNode) else [])
            memo[id(n)] = 1 + sum(count(c) for c in children)
        return memo[id(n)]

    return count(node)


def bomb_site(root: yaml.Node, memo: dict[int, int]) -> tuple[tuple[Any, ...], int]:
    """Where an alias bomb expands: the key path and line of the innermost node, first in document order, whose alias
    expansion (``memo`` of :func:`_expanded_nodes`) exceeds :data:`MAX_YAML_NODES` (an alias node is its anchor's node,
    YAML 1.2 §3.2.2.2, so the path is the anchor's or the first use's)."""
    loc: tuple[Any, ...] = ()
    node, line = root, root.start_mark.line + 1
    while True:
        pairs = ([(k.value if isinstance(k, yaml.ScalarNode) else "?", k, v) for k, v in node.value] if isinstance(node, yaml.MappingNode)
                 else [(i, v, v) for i, v in enumerate(node.value)] if isinstance(node, yaml.SequenceNode) else [])
        heavy = next(((part, at, child) for part, at, child in pairs if memo.get(id(child), 0) > MAX_YAML_NODES), None)
        if heavy is None:
            return loc, line
        loc, line, node = (*loc, heavy[0]), heavy[1].start_mark.line + 1, heavy[2]


def non_finite(node: Any, loc: tuple[Any, ...] = ()) -> tuple[tuple[Any, ...], float] | None:
    """The first NaN or infinite number in parsed YAML, with its key path."""
    if isinstance(node, float) and not math.isfinite(node):
        return loc, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found = non_finite(child, (*loc, key))
        if found:
            return found
    return None


def loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the key (or list item) at ``loc``, or of its deepest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            key, node = pair
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
