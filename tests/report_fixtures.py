"""Report folders written by the run state itself (no pytest run), for tests of the tools that read reports back."""

from __future__ import annotations

from pathlib import Path

from mriq_validate.shards import Shard, assign

BOUND = -0.05  # the criteria's minimum on the compared quantity (a Dice difference)


def fake_shards(root: Path, checked: dict[str, float] | None = None) -> list[Path]:
    """Two shard report folders of one gate run of gating criteria ``A`` and ``B`` (one per shard), each a Dice
    difference checked against the minimum :data:`BOUND`; ``checked`` gives their values (default 0.0: both PASS)."""
    from mriq_validate.run_state import MriqRun
    from mriq_validate.session import RunSettings

    checked = {"A": 0.0, "B": 0.0, **(checked or {})}
    root.mkdir(parents=True, exist_ok=True)
    suite = root / "s.yaml"
    suite.write_text("mriq_suite: {}\n")
    plan = {f"s.yaml::{c}": {"item_id": f"s.yaml::{c}", "criterion_id": c, "level": {}, "suite": str(suite), "gate": True, "kind": "model",
                             "requirement": "r", "hazard": None, "rationale": "x", "metric_name": "dice"} for c in ("A", "B")}
    context = {"data_spec": "builtin:mni-tumour", "data_options": {}, "seed": 0, "device": "cpu", "cache_events": [],
               "model": {"spec": "builtin:real", "kind": "builtin"}}
    folders = []
    for k in (1, 2):
        owner = assign(plan, 2)
        mine = {i: e for i, e in plan.items() if owner[i] == k}
        run = MriqRun(RunSettings(model="builtin:real", data=None, cache_dir=str(root / "cache")), report_dir=root / f"s{k}",
                      collected=dict(plan), planned=mine, shard=Shard(k, 2), worker_contexts=[dict(context)],
                      suites={str(suite): {"name": "s", "version": "1", "context_of_use": "c", "path": str(suite), "n_criteria": 2}})
        for i, e in mine.items():
            v = checked[e["criterion_id"]]
            estimate = {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "se": 0.05, "n": 8, "n_boot": 100, "ci_level": 0.95}
            run.add_report(i, 0.1, {**e, "metric": {"name": "dice"}, "value": estimate, "baseline": estimate, "compared": estimate,
                                    "threshold": {"min": BOUND, "relative": "difference"}, "bounds": {"min": BOUND, "max": None},
                                    "checked": v, "seed": 1, "verdict": "PASS" if v >= BOUND else "FAIL"})
        run.finish(0)
        folders.append(root / f"s{k}")
    return folders
