"""``mriq-validate track``: readiness over training checkpoints (mriq_validate/track.py) and the example generator
(examples/). The pure parts run on reports built in memory; one heavy test trains the reduced generator and tracks it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mriq_validate.errors import MissingFileError, MriqError
from mriq_validate.report import build_report, write_report
from mriq_validate.track import (TrackError, checkpoint_step, curves, holding_back, markdown, ordered, read_run, track_figure,
                                 write_outputs)

ROOT = Path(__file__).resolve().parents[1]


def _estimate(v: float, half: float = 0.02) -> dict[str, Any]:
    return {"value": v, "ci_low": v - half, "ci_high": v + half, "se": half / 2, "n": 128, "n_boot": 100, "ci_level": 0.95}


def _record(cid: str, verdict: str, compared: float | None, *, gate: bool = True, kind: str = "model",
            bounds: dict[str, float | None] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"item_id": f"suites/brain_tumour.yaml::{cid}", "criterion_id": cid, "level": {}, "suite": "s.yaml", "gate": gate,
                         "kind": kind, "requirement": "r", "hazard": None, "rationale": "x", "verdict": verdict, "message": "m"}
    if compared is not None:
        r.update(metric={"name": "dice", "region": "whole_tumour"}, compared=_estimate(compared), value=_estimate(0.9 + compared),
                 baseline=_estimate(0.9), threshold={**(bounds or {"min": -0.05, "max": None}), "relative": "difference"},
                 bounds=bounds or {"min": -0.05, "max": None}, checked=compared, seed=1)
    return r


def _report(dice_wt: float, piqe: float, *, et_error: bool = False) -> dict[str, Any]:
    results = [_record("DICE-WT", "PASS" if dice_wt >= -0.05 else "FAIL", dice_wt),
               _record("DICE-ET", "ERROR", None) if et_error else _record("DICE-ET", "PASS", 0.0),
               _record("IQA-PIQE", "PASS" if piqe <= 1.5 else "FAIL", piqe, gate=False, bounds={"min": None, "max": 1.5}),
               _record("SELF-DICE-ERASE", "PASS", 0.3, kind="sensitivity")]
    report = build_report(results, {"settings": {"seed": 0, "device": "cpu"}, "suites": [], "finished": "2026-01-01T00:00:00+00:00"})
    return json.loads(json.dumps(report, default=str))


def _runs(tmp_path: Path) -> list[Any]:
    reports = {"gen-step01200": _report(-0.01, 0.5), "gen-step00050": _report(-0.6, 40.0, et_error=True), "gen-step00400": _report(-0.2, 2.0)}
    runs = []
    for name, rep in reports.items():
        write_report(rep, tmp_path / name, html=False)
        runs.append(read_run(name, tmp_path / name))
    return runs


@pytest.mark.parametrize("name, step", [("generator-step00400", 400), ("ckpt_epoch3", 3), ("model-it_250", 250), ("model7b", 7), ("final", None)])
def test_the_training_step_is_read_from_the_checkpoint_name(name: str, step: int | None) -> None:
    assert checkpoint_step(name) == step


def test_runs_are_ordered_by_step_and_decisions_say_what_holds_them_back(tmp_path: Path) -> None:
    runs = ordered(_runs(tmp_path))
    assert [r.step for r in runs] == [50, 400, 1200]
    assert [r.status for r in runs] == ["INCOMPLETE", "NOT CLEARED", "CLEARED"]  # an ERROR leaves it incomplete
    assert holding_back(runs[0].report) == ["DICE-WT (FAIL)", "DICE-ET (ERROR)"]
    assert holding_back(runs[1].report) == ["DICE-WT (FAIL)"] and holding_back(runs[2].report) == []


def test_curves_hold_the_model_criteria_per_step_with_ci_and_bounds(tmp_path: Path) -> None:
    c = curves(_runs(tmp_path))
    assert list(c) == ["DICE-ET", "DICE-WT", "IQA-PIQE"]  # report order; the self-check does not depend on the model: not drawn
    wt = c["DICE-WT"]
    assert wt["gate"] and [p.step for p in wt["points"]] == [50, 400, 1200]
    assert [p.value for p in wt["points"]] == [-0.6, -0.2, -0.01] and [p.verdict for p in wt["points"]] == ["FAIL", "FAIL", "PASS"]
    assert wt["points"][0].ci_low == pytest.approx(-0.62) and wt["points"][0].bounds == {"min": -0.05, "max": None}
    assert c["DICE-ET"]["points"][0].value is None and c["DICE-ET"]["points"][0].verdict == "ERROR"
    assert not c["IQA-PIQE"]["gate"] and "generated − real" in wt["quantity"]


def test_the_markdown_and_figure_are_written(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    text = markdown(runs)
    lines = text.splitlines()
    assert lines[2] == "| gen-step00050 | 50 | INCOMPLETE | DICE-WT (FAIL), DICE-ET (ERROR) | IQA-PIQE |"
    assert lines[4] == "| gen-step01200 | 1200 | CLEARED | – | – |"
    (wt,) = [ln for ln in lines if ln.startswith("| DICE-WT |")]
    assert "| -0.6 [-0.62, -0.58] FAIL | -0.2 [-0.22, -0.18] FAIL | -0.01 [-0.03, 0.01] PASS |" in wt and "min -0.05" in wt
    fig = track_figure(runs)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    written = write_outputs(runs, tmp_path / "out")
    assert written["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written["table"].read_text() == text


def test_a_missing_or_unfinished_report_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TrackError, match=r"checkpoint gen-step5: .*report.json not found"):
        read_run("gen-step5", tmp_path / "nothing")
    rep = _report(0.0, 0.0)
    rep["run"]["finished"] = None
    write_report(rep, tmp_path / "unfinished", html=False)
    with pytest.raises(TrackError, match="placeholder of a run that did not finish"):
        read_run("unfinished", tmp_path / "unfinished")


def test_track_refuses_missing_and_clashing_checkpoints(tmp_path: Path) -> None:
    from mriq_validate.track import track

    with pytest.raises(MissingFileError, match="nope.pt"):
        track([tmp_path / "nope.pt"], suite=["suites"], model="m.py:build", out=tmp_path / "o")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "ck.pt").write_bytes(b"")
    with pytest.raises(MriqError, match="same name"):
        track([tmp_path / "a" / "ck.pt", tmp_path / "b" / "ck.pt"], suite=["suites"], model="m.py:build", out=tmp_path / "o")


def _example_model() -> Any:
    spec = importlib.util.spec_from_file_location("mriq_example_model", ROOT / "examples" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_checkpoint_names_the_file_and_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _example_model()
    monkeypatch.setenv("MRIQ_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(MissingFileError, match=r"gone\.pt not found \(\$MRIQ_CHECKPOINT\); make it with: python examples/train_generator.py"):
        model.resolve_checkpoint()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    from mriq_validate.errors import ModelError

    with pytest.raises(ModelError, match=r"junk\.pt cannot be loaded"):
        model.ExampleGenerator(tmp_path / "junk.pt")


@pytest.mark.heavy
@pytest.mark.long
def test_reduced_training_then_tracking_end_to_end(tmp_path: Path) -> None:
    """``examples/run_example.py --reduced``: train the reduced generator (3 checkpoints) while the real-data side runs,
    gate the first checkpoint while training goes on and the last when it ends, on DICE-WT and INTENSITY-SCALE; the
    first checkpoint's report is reused by the last call, the images honour the model contract and Dice improves with
    training."""
    env = dict(os.environ, MRIQ_TORCH_THREADS="1")
    ck, out = tmp_path / "ck", tmp_path / "track"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "run_example.py"), "--reduced", "--steps", "30", "300",
                           "--checkpoints", str(ck), "--out", str(out), "-k", "DICE-WT and not LESIONWISE and not BY or INTENSITY-SCALE"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoints = sorted(ck.glob("generator-step*.pt"))
    assert [checkpoint_step(p.stem) for p in checkpoints] == [30, 100, 300] and (ck / "final.pt").is_file()
    assert "reused" in proc.stderr and "gating generator-step00030.pt while training goes on" in proc.stdout
    assert json.loads((out / "real-data" / "report.json").read_text())["decision"]["status"] == "INCOMPLETE"  # -k
    runs = [read_run(p.stem, out / p.stem) for p in (checkpoints[0], checkpoints[-1])]
    c = curves(runs)
    assert set(c) == {"DICE-WT", "INTENSITY-SCALE"}
    first, last = (p.value for p in c["DICE-WT"]["points"])
    assert last > first  # more training, images a real-data segmenter reads better
    assert all(r.status == "INCOMPLETE" for r in runs)  # the other gating criteria were not selected
    assert (out / "readiness.png").is_file() and "generator-step00300" in (out / "readiness.md").read_text()


def test_reuse_runs_only_checkpoints_whose_inputs_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``track(reuse=True)`` reads a checkpoint's report instead of running it again only when the run record (checkpoint,
    suite and model-file bytes, arguments) matches; a changed checkpoint, suite or argument, an unfinished report, or
    reuse off runs it again."""
    import mriq_validate.track as trk

    calls: list[str] = []

    def fake_run(checkpoint: Path, *, out: Path, **kwargs: Any) -> int:
        calls.append(Path(checkpoint).stem)
        write_report(_report(-0.01 * len(calls), 0.5), out, html=False)
        return 0

    monkeypatch.setattr(trk, "run_checkpoint", fake_run)
    suite, model = tmp_path / "s.yaml", tmp_path / "m.py"
    suite.write_text("criteria: []\n")
    model.write_text("def build(ctx): ...\n")
    cks = []
    for step in (50, 400):
        cks.append(tmp_path / f"gen-step{step:05d}.pt")
        cks[-1].write_bytes(bytes([step % 256]) * 10)
    kw = {"suite": [str(suite)], "model": f"{model}:build", "out": tmp_path / "out"}

    trk.track(cks[:1], reuse=True, **kw)
    assert calls == ["gen-step00050"]
    runs = trk.track(cks, reuse=True, **kw)  # the first is reused, the new one runs
    assert calls == ["gen-step00050", "gen-step00400"] and [r.name for r in runs] == ["gen-step00050", "gen-step00400"]
    record = json.loads((tmp_path / "out" / "gen-step00050" / trk.RUN_RECORD).read_text())
    assert record["checkpoint_sha256"] and record["model_file_sha256"] and str(suite) in record["suites"]
    trk.track(cks, reuse=True, **kw)
    assert len(calls) == 2  # nothing changed: nothing runs
    cks[0].write_bytes(b"retrained")  # new weights under the same name
    suite.write_text("criteria: [] # edited\n")  # and an edited suite
    trk.track(cks, reuse=True, **kw)
    assert calls[2:] == ["gen-step00050", "gen-step00400"]
    trk.track(cks, reuse=True, pytest_args=["-k", "DICE"], **kw)
    assert len(calls) == 6
    rep = json.loads((tmp_path / "out" / "gen-step00400" / "report.json").read_text())
    rep["run"]["finished"] = None  # a run that was stopped half way
    (tmp_path / "out" / "gen-step00400" / "report.json").write_text(json.dumps(rep))
    trk.track(cks, reuse=True, pytest_args=["-k", "DICE"], **kw)
    assert calls[6:] == ["gen-step00400"]
    trk.track(cks, pytest_args=["-k", "DICE"], **kw)  # reuse off: both run
    assert len(calls) == 9


def test_a_run_that_writes_no_report_never_reuses_an_older_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gate run that dies before writing its report (e.g. a usage error) leaves no report and no record behind:
    track names the missing report, and a later ``reuse`` runs the checkpoint again."""
    import mriq_validate.track as trk

    ck = tmp_path / "gen-step00050.pt"
    ck.write_bytes(b"w")
    kw = {"suite": [str(tmp_path / "s.yaml")], "model": "builtin:real", "out": tmp_path / "out"}
    (tmp_path / "s.yaml").write_text("criteria: []\n")
    monkeypatch.setattr(trk, "run_checkpoint", lambda c, *, out, **k: write_report(_report(0.0, 0.5), out, html=False) or 0)
    trk.track([ck], reuse=True, **kw)
    ck.write_bytes(b"new weights")
    monkeypatch.setattr(trk, "run_checkpoint", lambda c, *, out, **k: 2)  # dies without a report
    with pytest.raises(TrackError, match="report.json not found"):
        trk.track([ck], reuse=True, **kw)
    assert not (tmp_path / "out" / ck.stem / trk.RUN_RECORD).exists()
