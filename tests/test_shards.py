"""A gate run split across CI jobs (``--mriq-shard K/N``) and merged (``mriq-validate merge-reports``): the merge of the
shards equals the unsharded run's decision and report apart from times, paths and the shard record; shards that are not
the N parts of one run are refused with the folders and the field named."""

from __future__ import annotations

import json
import random
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mriq_validate.cli import main as cli_main
from mriq_validate.decision import decision
from mriq_validate.integrity import rederived_decision, seal
from mriq_validate.integrity import validate_report
from mriq_validate.report import mark_in_progress, strip_volatile
from mriq_validate.decision import shard_decision, shard_ok
from mriq_validate.shards import Shard, assign, parse_shard
from report_fixtures import fake_shards

#: brain_intensity (no segmenter, no pyiqa) keeps each pytester run to seconds on the cached embedded data
SUITE = textwrap.dedent(
    """\
    mriq_suite:
      name: shards
      context_of_use: sharded gate runs (tests)
      criteria:
        - id: INTENSITY
          requirement: brain 95th-percentile intensity within a factor sqrt(2) of real
          rationale: intensity scale
          metric: brain_intensity
          n_boot: 20
          params: {percentile: 95}
          threshold: {min: 0.7071, max: 1.4142, relative: ratio}
        - id: INTENSITY-ABS
          requirement: brain 95th-percentile intensity at most 1
          rationale: images lie in [0, 1]
          metric: brain_intensity
          n_boot: 20
          params: {percentile: 95}
          threshold: {max: 1.0}
        - id: SENS-INTENSITY-NOISE
          kind: sensitivity
          requirement: the measure moves under Gaussian noise
          rationale: known answer
          gate: false
          metric: brain_intensity
          n_boot: 20
          params: {percentile: 95}
          perturbation: {name: gaussian, sigma: [0.0, 0.2]}
          threshold: {min: 3, unit: se}
    """
)
ITEMS = ["suite.yaml::INTENSITY", "suite.yaml::INTENSITY-ABS", "suite.yaml::SENS-INTENSITY-NOISE[sigma=0.0]",
         "suite.yaml::SENS-INTENSITY-NOISE[sigma=0.2]"]
#: Fields that may differ between the unsharded run and the merge of its shards: times and durations, the command line
#: and local folders, and the shard record itself. Everything else must be equal.
MERGE_VOLATILE = (
    "run.started", "run.finished", "run.duration_s", "run.command_line", "run.invocation_dir", "run.settings.cache_dir",
    "run.shard", "results.*.duration_s", "integrity",
    "provenance.contexts.*.segmenters.*.history.seconds", "provenance.contexts.*.segmenters.*.history.epochs_per_s",
)


def load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())


# --------------------------------------------------------------------------------------------------- K/N parsing


@pytest.mark.parametrize("value, expected", [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)), (" 4 / 4 ", Shard(4, 4))])
def test_shard_values_parse(value: str, expected: Shard) -> None:
    assert parse_shard(value) == expected and str(expected) == f"{expected.index}/{expected.count}"


@pytest.mark.parametrize("value", ["0/2", "3/2", "1/0", "2", "1/2/3", "a/b", "-1/2", "1.5/2", ""])
def test_bad_shard_values_are_refused_naming_the_value(value: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="K/N") as info:
        parse_shard(value)
    assert repr(value) in str(info.value)


def test_bad_shard_options_are_usage_errors(pytester: pytest.Pytester, run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    result = run_plugin("--mriq-shard=3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mriq-shard*'3/2'*shard 3 of 2 does not exist*"])
    result = run_plugin("--mriq-shard=4/4", "--mriq-model=builtin:real")  # 3 criteria: a 4th shard would check nothing
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--mriq-shard 4/4: the collected suites hold 3 criteria*use at most 3 shards*"])
    pytester.makeini("[pytest]\nmriq_shard = half\n")
    result = run_plugin()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option mriq_shard = 'half'*expected K/N*"])


def test_a_shard_runs_its_items_and_other_shards_items_are_not_unselected(pytester: pytest.Pytester,
                                                                          run_plugin: Callable[..., pytest.RunResult]) -> None:
    """Without a model (items SKIP, nothing is computed): shard 2 of 2 keeps its two items; -k inside the shard still
    counts as unselecting a gating criterion, the other shard's items do not."""
    pytester.makefile(".yaml", suite=SUITE)
    result = run_plugin("--mriq-shard=2/2", "--mriq-report=out", "-k", "not INTENSITY-ABS")
    result.assert_outcomes(skipped=1, deselected=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # a skipped and an unselected gating item leave this shard open
    report = load(pytester.path / "out")
    validate_report(report)
    shard = report["run"]["shard"]
    assert (shard["index"], shard["count"], shard["plan"], shard["items"]) == (2, 2, ITEMS, ITEMS[:2])
    assert [e["item_id"] for e in shard["planned"]] == ITEMS[:1]
    d = report["decision"]
    assert d["deselected_gating"] == ["suite.yaml::INTENSITY-ABS"] and d["skipped_gating"] == ["suite.yaml::INTENSITY"]
    assert [x["item_id"] for x in report["deviations"]["deselected"]] == ["suite.yaml::INTENSITY-ABS"]
    assert d["incomplete_reasons"][0].startswith("partial: shard 2 of 2") and len(d["incomplete_reasons"]) == 3
    pytester.makeini("[pytest]\nmriq_shard = 1/2\n")
    result = run_plugin()
    result.assert_outcomes(skipped=2, deselected=2)
    result.stdout.fnmatch_lines(["*mriq-validate: model=*shard=1/2*"])


# ---------------------------------------------------------------------------------------------------- assignment


def _plan(sizes: dict[str, int], files: tuple[str, ...] = ("a.yaml", "b.yaml")) -> dict[str, dict[str, Any]]:
    plan = {}
    for i, (cid, n) in enumerate(sizes.items()):
        for level in range(n):
            item = f"{files[i % len(files)]}::{cid}" + (f"[sigma={level}]" if n > 1 else "")
            plan[item] = {"item_id": item, "criterion_id": cid, "gate": True}
    return plan


def test_the_assignment_keeps_criteria_together_balances_counts_and_ignores_order() -> None:
    plan = _plan({"A": 4, "B": 1, "C": 1, "D": 3, "E": 2, "F": 1, "G": 1, "H": 5})
    rng = random.Random(0)
    for n in range(1, 6):
        owner = assign(plan, n)
        assert set(owner) == set(plan) and set(owner.values()) == set(range(1, n + 1))  # every item once, no shard empty
        for cid in "ABCDEFGH":  # the sweep levels of a criterion run in one job
            assert len({k for i, k in owner.items() if plan[i]["criterion_id"] == cid}) == 1
        loads = [list(owner.values()).count(k) for k in range(1, n + 1)]
        assert max(loads) - min(loads) <= 5, loads  # LPT: at most the largest group apart
        for _ in range(3):  # the same split whatever the collection order (each job computes it alone)
            items = list(plan.items())
            rng.shuffle(items)
            assert assign(dict(items), n) == owner
    # the rule by hand: groups largest first onto the least-loaded shard (ties: the lower shard)
    owner = assign(_plan({"A": 3, "B": 2, "C": 1, "D": 1}, files=("s.yaml",)), 2)
    assert {i.split("::")[1][0]: k for i, k in owner.items()} == {"A": 1, "B": 2, "C": 2, "D": 1}


# ------------------------------------------------------------------------------------------ a shard's own decision


def _record(item: str, verdict: str, gate: bool = True, kind: str = "model") -> dict[str, Any]:
    return {"item_id": item, "criterion_id": item.split("::")[-1], "gate": gate, "kind": kind, "verdict": verdict}


@pytest.mark.parametrize(
    "records, ok",
    [
        ([_record("s::A", "PASS"), _record("s::B", "FAIL", gate=False)], True),
        ([_record("s::B", "FAIL", gate=False)], True),  # no gating item in this shard: nothing open here
        ([_record("s::A", "FAIL")], False),
        ([_record("s::A", "PASS"), _record("s::B", "ERROR", gate=False)], False),
        ([_record("s::A", "SKIP")], False),
        ([_record("s::S", "FAIL", kind="sensitivity")], False),
    ],
)
def test_a_shards_decision_is_partial_and_its_exit_follows_its_own_items(records: list[dict[str, Any]], ok: bool) -> None:
    own = decision(records)
    d = shard_decision(own, 2, 3, len(records), 7)
    assert d["status"] == "INCOMPLETE" and not d["complete"]
    assert d["incomplete_reasons"][0].startswith(f"partial: shard 2 of 3 ({len(records)} of 7 criterion items); merge the shard reports")
    assert shard_ok(own) is ok
    assert ("no gating criterion ran" in " ".join(d["incomplete_reasons"])) is False  # a shard may hold only advisory items
    assert d["failed_gating"] == own["failed_gating"] and d["counts"] == own["counts"]
    if own["failed_gating"]:
        assert "cannot be cleared" in d["summary"]


# ------------------------------------------------------------------------- the merge equals the unsharded run


def _compare(unsharded: dict[str, Any], merged: dict[str, Any]) -> None:
    """Decision and per-criterion records field by field, then the whole reports, without MERGE_VOLATILE."""
    assert merged["decision"] == unsharded["decision"]
    assert [r["item_id"] for r in merged["results"]] == [r["item_id"] for r in unsharded["results"]] == ITEMS
    for a, b in zip(unsharded["results"], merged["results"]):
        assert set(a) == set(b), (a["item_id"], set(a) ^ set(b))
        for key in a:
            if key != "duration_s":
                assert a[key] == b[key], (a["item_id"], key)
    assert strip_volatile(merged, MERGE_VOLATILE) == strip_volatile(unsharded, MERGE_VOLATILE)


def _shards(run_plugin: Callable[..., pytest.RunResult], *args: str, n: int = 2) -> list[pytest.RunResult]:
    return [run_plugin("--mriq-model=builtin:real", f"--mriq-report=shard{k}", f"--mriq-shard={k}/{n}", *args) for k in range(1, n + 1)]


@pytest.mark.heavy  # three pytester runs, each drawing the perturbation figure and report.html: 15-28 s on 2 busy cores
def test_the_merge_of_two_shards_equals_the_unsharded_run(pytester: pytest.Pytester, run_plugin: Callable[..., pytest.RunResult],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    full = run_plugin("--mriq-model=builtin:real", "--mriq-report=full")
    assert full.ret == pytest.ExitCode.OK
    one, two = _shards(run_plugin)
    # the sweep (2 items) is one group, the two single criteria the other shard; each job passes on its own items
    one.assert_outcomes(passed=2, deselected=2)
    two.assert_outcomes(passed=2, deselected=2)
    assert one.ret == two.ret == pytest.ExitCode.OK
    two.stdout.fnmatch_lines(["*shard=2/2*", "*release decision: INCOMPLETE*", "*partial: shard 2 of 2 (2 of 4 criterion items)*"])
    path = pytester.path
    for k, ran in ((1, ITEMS[2:]), (2, ITEMS[:2])):
        report = load(path / f"shard{k}")
        validate_report(report)
        shard = report["run"]["shard"]
        assert report["decision"]["status"] == "INCOMPLETE" and report["decision"]["deselected_gating"] == []
        assert report["deviations"]["deselected"] == [] and report["decision"]["not_run"] == []  # the other shard's, not unselected
        assert (shard["index"], shard["count"], shard["plan"], shard["items"]) == (k, 2, ITEMS, ran)
        assert [r["item_id"] for r in report["results"]] == ran and [e["item_id"] for e in shard["planned"]] == ran
        assert set(shard["suites"]) == {"suite.yaml"} and shard["model"] == {"spec": "builtin:real", "sha256": None}
    assert (path / "shard2" / "shard-samples.npz").is_file()  # the shard that generated images keeps its sample grid

    capsys.readouterr()
    code = cli_main(["merge-reports", str(path / "shard2"), str(path / "shard1"), "--out", str(path / "merged")])
    out = capsys.readouterr().out
    assert code == 0 and "release decision: CLEARED" in out
    merged, unsharded = load(path / "merged"), load(path / "full")
    validate_report(merged)
    assert merged["decision"]["status"] == "CLEARED"
    _compare(unsharded, merged)
    shard = merged["run"]["shard"]
    assert shard["index"] is None and shard["items"] == ITEMS and [m["index"] for m in shard["merged_from"]] == [1, 2]
    assert sorted(p.name for p in (path / "merged").iterdir()) == ["perturbations-mni-tumour.png", "report.html", "report.json"]
    page = (path / "merged" / "report.html").read_text()
    assert "Samples: real vs generated" in page and "CLEARED" in page


@pytest.mark.heavy
def test_a_failing_shard_exits_non_zero_and_the_merge_is_not_cleared(pytester: pytest.Pytester,
                                                                      run_plugin: Callable[..., pytest.RunResult]) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    override = "--mriq-threshold=INTENSITY-ABS.max=0.5"  # the real images' value is about 0.95: a gating FAIL
    full = run_plugin("--mriq-model=builtin:real", "--mriq-report=full", override)
    assert full.ret == pytest.ExitCode.TESTS_FAILED
    one, two = _shards(run_plugin, override)
    assert one.ret == pytest.ExitCode.OK and two.ret == pytest.ExitCode.TESTS_FAILED
    two.stdout.fnmatch_lines(["*release decision: INCOMPLETE (failing gates: suite.yaml::INTENSITY-ABS)*"])
    assert "cannot be cleared" in load(pytester.path / "shard2")["decision"]["summary"]
    code = cli_main(["merge-reports", "shard1", "shard2", "--out", "merged"])
    merged = load(pytester.path / "merged")
    assert code == 1 and merged["decision"]["status"] == "NOT CLEARED"
    assert merged["decision"]["failed_gating"] == ["suite.yaml::INTENSITY-ABS"]
    _compare(load(pytester.path / "full"), merged)


# ------------------------------------------------------------------------------------------- refusals (fast)


def _rewrite(folder: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as a job that really produced it would have: its decision re-derived and sealed, so that the merge
    meets the change itself, not a stale decision or digest (tests/test_integrity.py covers those)."""
    (folder / "report.json").write_text(json.dumps(seal({**report, "decision": rederived_decision(report)})))


def _edit(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    report = load(folder)
    change(report)
    _rewrite(folder, report)


def _digests(value: str) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        r["provenance"]["contexts"][0]["data"] = {"digests": {"train": "t", "test": value}}
    return change


def _override(r: dict[str, Any]) -> None:
    r["run"]["deviations"] = [{"criterion": "A", "field": "min", "value": -1.0, "source": "--mriq-threshold"}]


def _item_in_both(r: dict[str, Any]) -> None:
    r["run"]["shard"]["items"].append("s.yaml::B" if "s.yaml::A" in r["run"]["shard"]["items"] else "s.yaml::A")


def _item_in_none(r: dict[str, Any]) -> None:
    r["run"]["shard"]["items"] = []
    r["run"]["shard"]["planned"] = []
    r["results"] = []


#: (what one shard's report.json gets changed to, the field the refusal must name); shard 2 is changed.
REFUSALS = {
    "seed": (lambda r: r["run"]["settings"].update(seed=7), "run.settings.seed"),
    "batch size": (lambda r: r["run"]["settings"].update(batch_size=64), "run.settings.batch_size"),
    "suite hash": (lambda r: r["run"]["shard"]["suites"].update({"s.yaml": "0" * 64}), "run.shard.suites"),
    "model spec": (lambda r: r["run"]["settings"].update(model="builtin:noisy"), "run.settings.model"),
    "model file hash": (lambda r: r["run"]["shard"]["model"].update(sha256="1" * 64), "run.shard.model.sha256"),
    "model provenance": (lambda r: r["provenance"]["contexts"][0]["model"].update(sha256="2" * 64), "model (model provenance"),
    "data spec": (lambda r: r["run"]["settings"].update(data="/data/BraTS"), "run.settings.data"),
    "N": (lambda r: r["run"]["shard"].update(count=3), "run.shard.count"),
    "tool version": (lambda r: r["tool"].update(version="0.0.1"), "tool.version"),
    "overrides": (_override, "threshold overrides"),
    "plan": (lambda r: r["run"]["shard"]["plan"].append("s.yaml::C"), "run.shard.plan"),
    "item in two shards": (_item_in_both, "more than one shard"),
    "item in no shard": (_item_in_none, "in no shard"),
    "result outside the share": (lambda r: r["results"].append({**r["results"][0], "item_id": "s.yaml::A"}), "outside its share"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_shards_that_disagree_are_refused_naming_the_folders_and_the_field(name: str, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    s1, s2 = fake_shards(tmp_path)
    change, field = REFUSALS[name]
    _edit(s2, change)
    capsys.readouterr()
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mriq-validate merge-reports: ") and field in err, err
    if name not in ("item in no shard",):
        assert str(s2) in err, err
    assert not (tmp_path / "merged").exists()  # nothing written


def test_data_that_differs_between_shards_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s1, s2 = fake_shards(tmp_path)
    _edit(s1, _digests("aaaa"))
    _edit(s2, _digests("aaaa"))
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "same")]) == 0  # the control: same digests merge
    _edit(s2, _digests("bbbb"))
    capsys.readouterr()
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert "provenance.contexts[builtin:mni-tumour].data.digests" in err and str(s1) in err and str(s2) in err


def test_shards_checked_out_in_other_folders_merge_onto_the_first_shards_paths(tmp_path: Path) -> None:
    s1, s2 = fake_shards(tmp_path)
    text = (s2 / "report.json").read_text().replace(json.dumps(str(tmp_path))[1:-1], "/elsewhere/checkout")
    _rewrite(s2, json.loads(text))
    assert "/elsewhere/checkout/s.yaml" in text
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "merged")]) == 0
    merged = load(tmp_path / "merged")
    assert {r["suite"] for r in merged["results"]} == {str(tmp_path / "s.yaml")}
    (suite,) = merged["suites"]
    assert suite["path"] == str(tmp_path / "s.yaml") and suite["n_items"] == 2


def test_missing_repeated_unfinished_or_foreign_reports_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s1, s2 = fake_shards(tmp_path)
    merged = tmp_path / "merged"
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(merged)]) == 0  # the control
    assert load(merged)["decision"]["status"] == "CLEARED" and load(merged)["run"]["shard"]["count"] == 2
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(s1)]) == 2  # never over a shard's own report
    assert "is one of the shard folders" in capsys.readouterr().err and load(s1)["run"]["shard"]["index"] == 1
    copy = tmp_path / "copy"
    shutil.copytree(s1, copy)
    cases = [
        ([s1], "shard(s) 2/2 missing"),
        ([s1, copy, s2], f"given more than once: 1/2 in {copy}, {s1}"),
        ([s1, merged], "is a report merged from shards, not a shard's report"),
        ([s1, tmp_path / "nowhere"], f"{tmp_path / 'nowhere' / 'report.json'}: not found"),
        ([s1, s1], "given more than once"),
    ]
    for folders, message in cases:
        capsys.readouterr()
        assert cli_main(["merge-reports", *map(str, folders), "--out", str(tmp_path / "out")]) == 2, message
        assert message in capsys.readouterr().err
    # the INCOMPLETE placeholder of a shard run that died
    report = load(s2)
    mark_in_progress(s2, {"settings": report["run"]["settings"], "started": report["run"]["started"]})
    capsys.readouterr()
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "placeholder of a run that did not finish" in err and str(s2) in err
    # not JSON; not a report by the schema; an unsharded run's report
    (s2 / "report.json").write_text("{not json")
    capsys.readouterr()
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "out")]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err
    (s2 / "report.json").write_text(json.dumps({**report, "decision": {**report["decision"], "status": "MAYBE"}}))
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "out")]) == 2
    assert "does not follow the report schema at decision.status" in capsys.readouterr().err
    _rewrite(s2, {**report, "run": {**report["run"], "shard": None}})
    assert cli_main(["merge-reports", str(s1), str(s2), "--out", str(tmp_path / "out")]) == 2
    assert "the report of an unsharded run, not a shard's report" in capsys.readouterr().err
