"""A table of case attributes (CSV) attached to the reference data as per-item covariates.

A suite names it in its data block, ``case_attributes: attributes.csv`` (or ``{file: ..., id_column: ...}``): one
row per case, an id column (``id`` unless ``id_column`` says otherwise) and one column per attribute (scanner,
site, grade, ...). Each item of both splits takes the row of its own id, or of its case (a slice ``<case>:z042`` of
a NIfTI folder belongs to case ``<case>``), so criteria can be decided per subgroup of an attribute
(``by: scanner``, :mod:`mriq_validate.subgroups`). Everything is checked, each error naming the file, its line, the
column and the id: a missing id column, an id given twice or matching no case of the data, an empty value, a column
that is already a covariate of the data, an item without a row. A column of whole numbers is stored as integers,
any other as text.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .core import ReferenceData, Split

DEFAULT_ID_COLUMN = "id"
_SLICE_ID = re.compile(r"^(?P<case>.+):z\d+$")  # a NIfTI slice id: <case id>:z<index>
_INTEGER = re.compile(r"^[+-]?\d+$")
_SHOWN = 5  # ids named in an error before "and N more"


def case_of(item_id: str) -> str:
    """The case an item belongs to: a slice id ``<case>:z<index>`` of a NIfTI folder is its case's; any other id its own."""
    m = _SLICE_ID.match(item_id)
    return m.group("case") if m else item_id


def _listed(values: list[str]) -> str:
    return ", ".join(map(repr, values[:_SHOWN])) + (f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else "")


def read_table(path: Path, id_column: str = DEFAULT_ID_COLUMN) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """(id → {column: value}, id → line) of the CSV at ``path``; DataError naming the file, line, column and id for an
    unreadable file, a missing id column, a table without attribute columns, an id given twice or an empty value."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"case_attributes {path}: cannot be read ({exc}); expected a UTF-8 CSV file with a header row") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    if id_column not in header:
        raise DataError(f"case_attributes {path}: no id column {id_column!r} in the header {header}; name the column that "
                        f"holds the case ids {id_column!r}, or say which it is (`case_attributes: {{file: ..., id_column: NAME}}`)")
    columns = [h for h in header if h != id_column]
    if not columns:
        raise DataError(f"case_attributes {path}: only the id column {id_column!r}; expected at least one attribute column")
    rows: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in raw.items()}
        case = row.get(id_column, "")
        if not case:
            raise DataError(f"case_attributes {path}:{line}: the id column {id_column!r} is empty; give every row a case id")
        if case in rows:
            raise DataError(f"case_attributes {path}:{line}: id {case!r} appears twice (first on line {lines[case]}); give one "
                            f"row per case")
        empty = [c for c in columns if not row.get(c)]
        if empty:
            raise DataError(f"case_attributes {path}:{line}: column {empty[0]!r} is empty for id {case!r}; give every case a value")
        rows[case], lines[case] = {c: row[c] for c in columns}, line
    if not rows:
        raise DataError(f"case_attributes {path}: no rows under the header; expected one row per case")
    return rows, lines


def _column(values: list[str]) -> np.ndarray:
    """Integers where every value is a whole number, else text."""
    if all(_INTEGER.match(v) for v in values):
        return np.array([int(v) for v in values], np.int64)
    return np.array(values, dtype=str)


def attach_case_attributes(data: ReferenceData, file: str | Path, id_column: str = DEFAULT_ID_COLUMN) -> ReferenceData:
    """``data`` with the attribute columns of the CSV ``file`` added to both splits' covariates (each item takes the row of
    its id, else of its case), and the file's path, SHA-256 and columns in its provenance; DataError naming the file,
    column and id for a column that is already a covariate, an id that matches no case of the data, an item
    without a row, and every problem :func:`read_table` finds."""
    path = Path(file)
    rows, lines = read_table(path, id_column)
    columns = list(next(iter(rows.values())))
    taken = sorted(set(columns) & {*data.train.covariates, *data.test.covariates})
    if taken:
        raise DataError(f"case_attributes {path}: column {taken[0]!r} is already a covariate of data {data.name!r}; rename "
                        f"the column (the data's own covariates: {sorted({*data.train.covariates, *data.test.covariates})})")
    used: set[str] = set()
    splits = {}
    for name, split in (("train", data.train), ("test", data.test)):
        keys = []
        missing = []
        for item in split.ids:
            key = item if item in rows else case_of(item)
            if key not in rows:
                missing.append(item)
            keys.append(key)
        if missing:
            raise DataError(f"case_attributes {path}: no row for {len(missing)} item(s) of the {name} split of data {data.name!r}: "
                            f"{_listed(missing)} (matched on column {id_column!r}, by item id or by case id "
                            f"{_listed(sorted({case_of(m) for m in missing}))}); give every case a row")
        used.update(keys)
        splits[name] = replace(split, covariates={**split.covariates, **{c: _column([rows[k][c] for k in keys]) for c in columns}})
    unknown = [k for k in rows if k not in used]
    if unknown:
        raise DataError(f"case_attributes {path}:{lines[unknown[0]]}: id(s) {_listed(unknown)} match no case of data "
                        f"{data.name!r} (column {id_column!r}; its ids look like {_listed(list(data.test.ids[:2]))}); remove "
                        f"the rows or check the ids")
    record = {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "id_column": id_column,
              "columns": columns, "rows": len(rows)}
    train: Split = splits["train"]
    test: Split = splits["test"]
    return replace(data, train=train, test=test, provenance={**data.provenance, "case_attributes": record})
