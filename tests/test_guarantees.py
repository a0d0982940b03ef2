"""README.md's table "What the gate guarantees" names, for every promise, the tests that check it: each test file it names
exists, and each test it names (a full name, or a prefix ending in ``*``) is defined in the test files, so that a
renamed or removed test cannot leave a promise checked by nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SECTION = re.compile(r"^#{2,}\s+What the gate guarantees\s*$", re.IGNORECASE)
DEFINED = re.compile(r"^\s*(?:async\s+)?def\s+(test_\w+)\s*\(", re.MULTILINE)
TOKEN = re.compile(r"`([^`]+)`")
#: a test file named in the table, then the tests of that file in parentheses: `tests/test_x.py` (`test_a`, `test_b_*`)
FILE_THEN_NAMES = re.compile(r"`([^`]+\.py)`\s*\(([^)]*)\)")


def split_row(line: str) -> list[str]:
    """The cells of a Markdown table row; a ``|`` inside backticks or escaped as ``\\|`` does not split."""
    cells, cell, in_code, i = [], "", False, 0
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cell, i = cell + "|", i + 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        i += 1
    cells.append(cell.strip())
    return cells


def guarantee_rows(readme: str) -> list[tuple[str, str]]:
    """(promise, checked by) of each row of the first table under the "What the gate guarantees" heading, wherever the
    section stands in the README; the columns are found by their header names."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if SECTION.match(line)), None)
    assert start is not None, "README.md has no '## What the gate guarantees' section"
    table: list[str] = []
    for line in lines[start + 1:]:
        if re.match(r"^#{1,2}\s", line) and not table:
            break  # the next section began before any table
        if line.lstrip().startswith("|"):
            table.append(line)
        elif table:
            break  # the table ended
    assert len(table) >= 3, "the guarantees section holds no table (header, separator, rows)"
    header = [c.lower() for c in split_row(table[0])]
    assert "promise" in header and "checked by" in header, f"the guarantees table's header is {header}"
    assert set(table[1].replace("|", "").strip()) <= set("-: "), f"no separator row under the header: {table[1]!r}"
    p, c = header.index("promise"), header.index("checked by")
    rows = []
    for line in table[2:]:
        cells = split_row(line)
        assert len(cells) == len(header), f"a row of {len(cells)} cells in a table of {len(header)} columns: {line[:120]!r}"
        rows.append((cells[p], cells[c]))
    return rows


def defined_tests() -> dict[str, set[str]]:
    """Test function names defined in each tests/*.py file (by file name)."""
    return {p.name: set(DEFINED.findall(p.read_text(encoding="utf-8"))) for p in sorted(TESTS.glob("*.py"))}


def matches(reference: str, names: set[str]) -> bool:
    """Whether a test named in the table (``test_x`` exactly, ``test_x_*`` as a prefix, ``test_x[param]`` by its
    function) is among ``names``."""
    name = reference.split("::")[-1].split("[")[0]
    if name.endswith("*"):
        return any(n.startswith(name[:-1]) for n in names)
    return name in names


def references(checked_by: str) -> tuple[list[str], list[str], list[str]]:
    """(test files, test names, anything else) among the backticked items of a "checked by" cell."""
    files, names, other = [], [], []
    for token in TOKEN.findall(checked_by):
        token = token.strip()
        path = token.split("::")[0]
        if path.endswith(".py"):
            files.append(path)
            if "::" in token:
                names.append(token)
        elif token.startswith("test_"):
            names.append(token)
        else:
            other.append(token)
    return files, names, other


def test_the_guarantee_table_parses_and_every_promise_names_its_tests() -> None:
    rows = guarantee_rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 10, f"only {len(rows)} promises in the guarantees table"
    for promise, checked_by in rows:
        files, names, other = references(checked_by)
        assert files or names, f"a promise names no test: {promise[:100]!r}"
        assert other == [], f"{other} in 'checked by' is neither a test file nor a test name ({promise[:60]!r})"


def test_every_test_file_and_test_the_guarantees_name_exists() -> None:
    defined = defined_tests()
    everywhere = set().union(*defined.values())
    missing = []
    for promise, checked_by in guarantee_rows((ROOT / "README.md").read_text(encoding="utf-8")):
        files, names, _ = references(checked_by)
        missing += [f"file {f}" for f in files if not (ROOT / f).is_file()]
        missing += [f"file {f} defines no test" for f in files if (ROOT / f).is_file() and not defined.get(Path(f).name)]
        missing += [f"test {n}" for n in names if not matches(n, everywhere)]
        for path, inner in FILE_THEN_NAMES.findall(checked_by):  # `tests/test_x.py` (`test_a_*`): test_a_* is in that file
            in_file = defined.get(Path(path).name, set())
            missing += [f"test {n} in {path}" for n in TOKEN.findall(inner) if n.startswith("test_") and not matches(n, in_file)]
    assert missing == [], "README.md's guarantees table names what does not exist: " + "; ".join(missing)


@pytest.mark.parametrize("reference, found", [("test_a_*", True), ("test_a_b", True), ("test_a_b[x]", True), ("test_c_*", False),
                                              ("test_a", False), ("tests/test_f.py::test_a_b", True)])
def test_a_name_in_the_table_matches_by_prefix_only_with_a_star(reference: str, found: bool) -> None:
    assert matches(reference, {"test_a_b", "test_ab"}) is found


def test_the_parser_finds_the_table_anywhere_and_splits_cells_outside_code() -> None:
    readme = ("# Title\n\n## Other\n\n| a | b |\n|---|---|\n| x | `tests/test_nope.py` |\n\n## What the gate guarantees\n\nText.\n\n"
              "| promise | checked by |\n|:--|--:|\n| **A.** `x | y` stays one cell | `tests/test_guarantees.py` (`test_every_*`) |\n"
              "| B | `test_the_parser_*`, `tests/test_cache.py` |\n\n## Next\n\n| promise | checked by |\n|---|---|\n| C | `test_z` |\n")
    rows = guarantee_rows(readme)
    assert rows == [("**A.** `x | y` stays one cell", "`tests/test_guarantees.py` (`test_every_*`)"),
                    ("B", "`test_the_parser_*`, `tests/test_cache.py`")]
    assert references(rows[1][1]) == (["tests/test_cache.py"], ["test_the_parser_*"], [])
    with pytest.raises(AssertionError, match="no '## What the gate guarantees' section"):
        guarantee_rows("# Title\n\n| promise | checked by |\n|---|---|\n| A | `test_a` |\n")
