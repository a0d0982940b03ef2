"""The numbers in README.md and docs/*.md that a command measured are generated (``make docs``, ``make docs-long``,
``make zoo``): every generated block equals the rendering of its JSON, every JSON says which commit, date, machine and
command made it, and every marker opened is closed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _render():
    spec = importlib.util.spec_from_file_location("mriq_docs_render", ROOT / "docs" / "generate" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


render = _render()
DOCS = render.documents()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_generated_block_equals_the_rendering_of_its_json(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for name in render.spans(text):
        assert render.block(text, name) == render.render(name), (
            f"{doc.relative_to(ROOT)}: block {name!r} differs from {render.source_path(name.split('.')[0]).relative_to(ROOT)}; "
            f"run make docs (or python docs/generate/render.py) instead of editing it")


def test_every_json_records_commit_date_machine_and_command() -> None:
    files = sorted((ROOT / "docs" / "generated").glob("*.json"))
    assert files, "docs/generated/ holds no JSON"
    for path in files:
        rec = json.loads(path.read_text(encoding="utf-8"))
        for key in ("commit", "date", "machine", "command"):
            assert rec.get(key), f"{path.relative_to(ROOT)} lacks {key!r}"
        assert rec["machine"].get("cores") and rec["machine"].get("device"), f"{path.relative_to(ROOT)}: machine lacks cores or device"


def test_every_json_is_shown_and_every_block_has_a_json() -> None:
    shown = {name.split(".")[0] for doc in DOCS for name in render.spans(doc.read_text(encoding="utf-8"))}
    stored = {p.stem for p in (ROOT / "docs" / "generated").glob("*.json")}
    assert stored <= shown, f"JSON shown in no document: {sorted(stored - shown)}"
    for source in shown:
        assert render.source_path(source).is_file(), f"blocks of {source!r} but no {render.source_path(source)}"


@pytest.mark.parametrize("text, problem", [
    ("<!-- generated:a -->\nx\n", "never closed"),
    ("x\n<!-- /generated:a -->\n", "was not opened"),
    ("<!-- generated:a -->\n<!-- generated:b -->\n<!-- /generated:b -->\n<!-- /generated:a -->\n", "opens inside"),
    ("<!-- generated:a -->\n<!-- /generated:b -->\n", "'a' is open"),
    ("<!-- generated:a -->\n<!-- /generated:a -->\n<!-- generated:a -->\n<!-- /generated:a -->\n", "twice"),
])
def test_a_marker_opened_and_not_closed_is_refused(text: str, problem: str) -> None:
    with pytest.raises(render.BlockError, match=problem):
        render.spans(text)


def test_with_block_replaces_only_the_content() -> None:
    text = "head\n<!-- generated:a -->\nold\n<!-- /generated:a -->\ntail\n"
    new = render.with_block(text, "a", "new\nlines")
    assert new == "head\n<!-- generated:a -->\nnew\nlines\n<!-- /generated:a -->\ntail\n"
    assert render.block(new, "a") == "new\nlines\n"


def test_every_document_has_balanced_markers() -> None:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        render.spans(text)  # raises BlockError naming the line
        assert text.count("<!-- generated:") == text.count("<!-- /generated:"), doc
