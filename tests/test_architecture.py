"""The import contract of docs/architecture.md: layers, registries that import none of their implementations, no cycles.

What these tests guarantee (imports under ``if TYPE_CHECKING:``, for type annotations only, count like the others):

* ``lint-imports`` keeps every contract in pyproject.toml ``[tool.importlinter]``: a module imports only modules of
  the layers below its own (never above, never a sibling of its layer, directly or through another module); the
  registry modules (``perturb.base``, ``data.core``, ``metrics.base``) import none of their implementations; and no
  two sibling modules or packages import each other, at any depth (``acyclic_siblings``).
* no cycle at all in the module-level import graph of ``mriq_validate``, including a module that imports its own
  package's ``__init__`` and modules on one layer or inside one package, which the layers do not order.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_is_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")  # the environment's own, next to its python
    assert exe.exists(), f"{exe} is missing; install the test extra: pip install -e '.[test]'"
    out = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)  # reads pyproject.toml
    assert out.returncode == 0, f"lint-imports found broken contracts:\n{out.stdout}\n{out.stderr}"


def import_cycles(package: str) -> list[list[str]]:
    """The strongly connected components of more than one module in ``package``'s import graph (each one cycle or more)."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = [(index[a], index[b]) for a in modules for b in graph.find_modules_directly_imported_by(a) if b in index]
    rows, cols = zip(*edges) if edges else ((), ())
    adjacency = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(modules), len(modules)))
    _, label = connected_components(adjacency, directed=True, connection="strong")
    groups: dict[int, list[str]] = {}
    for m, lab in zip(modules, label):
        groups.setdefault(int(lab), []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def test_no_import_cycles_between_modules() -> None:
    cycles = import_cycles("mriq_validate")
    if cycles:
        graph = grimp.build_graph("mriq_validate", exclude_type_checking_imports=False, cache_dir=None)
        lines = []
        for group in cycles:
            lines.append(f"cycle among {group}:")
            for a in group:
                for b in sorted(set(group) & graph.find_modules_directly_imported_by(a)):
                    for d in graph.get_import_details(importer=a, imported=b):
                        lines.append(f"  {a} -> {b} (line {d['line_number']}: {d['line_contents']})")
        raise AssertionError("\n".join(lines))


def test_the_cycle_check_finds_a_cycle(tmp_path: Path, monkeypatch) -> None:
    """The check itself: a two-module package that imports itself in a circle is reported, and an acyclic one is not."""
    pkg = tmp_path / "circle_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")  # a function-level import closes the circle too
    (pkg / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("circle_pkg") == [["circle_pkg.a", "circle_pkg.b"]]
    (pkg / "b.py").write_text("")
    assert import_cycles("circle_pkg") == []


def test_tests_build_runs_through_the_public_constructor() -> None:
    """No test subclasses the run or reaches into its private state: runs built in code pass their data and model to
    ``RunContext(..., data=..., model=...)``."""
    import re

    pattern = re.compile(r"class \w+\((?:\w+\.)?RunContext\)|\b(?:ctx|run|context)\._[a-z]\w*")
    found = [f"{p.name}:{i}: {line.strip()}" for p in sorted((ROOT / "tests").glob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line) and p.name != Path(__file__).name]
    assert found == [], "\n".join(found)
