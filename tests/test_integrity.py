"""Evidence that cannot be edited into a pass: readers of a finished report (merge-reports, track, the study) re-derive
every verdict and the decision from the recorded values with the gate's code, check the digest, and, where a report
key is configured, the HMAC; an edited, truncated or unsigned report is refused naming the criterion and the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mriq_validate.cli import main as cli_main
from mriq_validate.integrity import (KEY_ENV, KEY_FILE_ENV, ReportKeyError, check_seal, decision_problems, rederived_decision,
                                     report_key, result_problems, seal)
from report_fixtures import BOUND, fake_shards

#: suites/brain_tumour.yaml on a real generator: seed-SD bounds loosened by a clinical tolerance, SE bounds, ratios,
#: lower-CI checks and per-contrast decisions, 24 verdicts (see its "about")
REAL = json.loads((Path(__file__).parent / "data" / "zoo_rflow_1500_results.json").read_text())


def _problems(report: dict[str, Any]) -> list[str]:
    return [p for r in report["results"] for p in result_problems(r)] + decision_problems(report)


def _by_id(report: dict[str, Any], cid: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["criterion_id"] == cid)


def test_every_verdict_and_the_decision_of_a_real_gate_report_rederive() -> None:
    kinds = {(r["threshold"]["unit"], bool(r["threshold"].get("tolerance")), r["threshold"]["on"], bool(r.get("per_contrast")))
             for r in REAL["results"]}
    assert len(REAL["results"]) == 24 and len(kinds) >= 5  # the kinds of decision the shipped suite makes
    assert _problems(REAL) == [] and REAL["decision"]["status"] == "CLEARED"


def _flip(cid: str) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        rec = _by_id(r, cid)
        rec["verdict"] = "FAIL" if rec["verdict"] == "PASS" else "PASS"
    return change


def _set(cid: str, path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        node = _by_id(r, cid)
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return change


#: edit of the real report → what the refusal must name
EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "flipped gating verdict": (_flip("DICE-WT"), "DICE-WT: verdict is FAIL, but its values and threshold give PASS"),
    "flipped advisory verdict": (_flip("DIST-FID"), "DIST-FID: verdict is PASS"),
    "changed checked value": (_set("DICE-WT", "checked", -0.888), "DICE-WT: checked is -0.888"),
    "changed compared value": (_set("DICE-TSTR-WT", "compared.value", -0.2), "DICE-TSTR-WT: checked is"),
    "changed threshold": (_set("DICE-ET", "threshold.min", -0.5), "DICE-ET: threshold"),
    "changed tolerance": (_set("DICE-TSTR-WT", "threshold.tolerance", {"min": -0.5, "max": None}), "DICE-TSTR-WT: threshold"),
    "changed seed SD": (_set("DICE-TSTR-WT", "threshold.noise_unit.seed_sd", 0.05), "DICE-TSTR-WT: bounds.min"),
    "changed bound": (_set("INTENSITY-SCALE", "bounds.min", 0.5), "INTENSITY-SCALE: checked 0.866562797048047 with bounds {'min': 0.5"),
    "flipped contrast verdict": (_set("INTENSITY-SCALE", "per_contrast.t1.verdict", "FAIL"), "INTENSITY-SCALE: per_contrast.t1.verdict is FAIL"),
    "changed contrast value": (_set("MEM-COPY", "per_contrast.flair.compared.ci_low", 0.5), "MEM-COPY: per_contrast.flair.checked"),
    "changed decision": (lambda r: r["decision"].update(status="NOT CLEARED"), 'decision.status is "NOT CLEARED", but the results give "CLEARED"'),
    "dropped failure": (lambda r: r["decision"].update(advisory_failed=[]), "decision.advisory_failed is []"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_an_edited_record_or_decision_is_found_naming_the_criterion_and_field(name: str) -> None:
    report = copy.deepcopy(REAL)
    change, expected = EDITS[name]
    change(report)
    problems = _problems(report)
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------------------------------------ seal and key


def test_the_seal_detects_any_change_and_the_key_proves_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {"results": [{"x": 0.1 + 0.2}], "decision": {"status": "CLEARED"}}
    sealed = json.loads(json.dumps(seal(doc)))  # through JSON, as a reader gets it
    assert check_seal(sealed, None) == ([], "not signed")
    edited = copy.deepcopy(sealed)
    edited["results"][0]["x"] = 0.3
    assert "changed after it was written" in check_seal(edited, None)[0][0]
    signed = json.loads(json.dumps(seal(doc, b"k1")))
    assert check_seal(signed, b"k1") == ([], "verified") and check_seal(signed, None) == ([], "not checked (no key configured)")
    assert "signed with another key" in check_seal(signed, b"k2")[0][0]
    assert "not signed, but a report key is configured" in check_seal(sealed, b"k1")[0][0]
    forged = seal({**signed, "decision": {"status": "NOT CLEARED"}})  # re-digested without the key
    forged["integrity"].update(signed=True, key_id=signed["integrity"]["key_id"], hmac=signed["integrity"]["hmac"])
    assert check_seal(forged, b"k1")[0] == ["its signature (integrity.hmac) does not match its content under the configured key"]
    del sealed["integrity"]
    assert "no integrity section" in check_seal(sealed, None)[0][0]


def test_the_key_comes_from_the_environment_or_a_file_and_a_bad_file_is_named(tmp_path: Path) -> None:
    assert report_key({}) is None and report_key({KEY_ENV: "s3cret"}) == b"s3cret"
    (tmp_path / "key").write_text("from-file\n")
    assert report_key({KEY_FILE_ENV: str(tmp_path / "key")}) == b"from-file"
    with pytest.raises(ReportKeyError, match=f"{KEY_FILE_ENV}=.*nowhere: the report key file cannot be read"):
        report_key({KEY_FILE_ENV: str(tmp_path / "nowhere")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ReportKeyError, match="is empty"):
        report_key({KEY_FILE_ENV: str(tmp_path / "empty")})


# --------------------------------------------------------------------------------------------- merge-reports


def _load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())


def _shard_of(folders: list[Path], cid: str) -> Path:
    return next(f for f in folders if any(r["criterion_id"] == cid for r in _load(f)["results"]))


def _merge(folders: list[Path], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli_main(["merge-reports", *map(str, folders), "--out", str(out)])
    return code, capsys.readouterr().err


#: hand edits of the shard holding the failing criterion A (checked -0.888, minimum -0.05) → what the refusal names
SHARD_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "flipped verdict": (lambda r: r["results"][0].update(verdict="PASS"), "A: verdict is PASS, but its values and threshold give FAIL"),
    "changed value": (lambda r: r["results"][0]["compared"].update(value=-0.01), "A: checked is -0.888, but the value of compared is -0.01"),
    "changed threshold": (lambda r: r["results"][0]["threshold"].update(min=-1.0), "A: bounds.min is -0.05, but the threshold gives -1.0"),
    "changed decision": (lambda r: r["decision"].update(failed_gating=[]), "decision.failed_gating is []"),
    "consistent edit": (lambda r: (r["results"][0].update(verdict="PASS", checked=-0.01), r["results"][0]["compared"].update(value=-0.01),
                                   r.update(decision=rederived_decision(r))), "its content was changed after it was written"),
}


@pytest.mark.parametrize("name", list(SHARD_EDITS))
def test_merge_refuses_a_hand_edited_shard(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = fake_shards(tmp_path, {"A": -0.888})
    code, _ = _merge(folders, tmp_path / "control", capsys)
    assert code == 1 and _load(tmp_path / "control")["decision"]["failed_gating"] == ["s.yaml::A"]  # the unedited merge
    edited = _shard_of(folders, "A")
    report = _load(edited)
    change, expected = SHARD_EDITS[name]
    change(report)
    (edited / "report.json").write_text(json.dumps(report, indent=2))
    code, err = _merge(folders, tmp_path / "merged", capsys)
    assert code == 2 and expected in err and str(edited) in err, err
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_truncated_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = fake_shards(tmp_path)
    text = (folders[1] / "report.json").read_text()
    (folders[1] / "report.json").write_text(text[: len(text) // 2])
    code, err = _merge(folders, tmp_path / "merged", capsys)
    assert code == 2 and "cannot be read as JSON" in err and str(folders[1]) in err


def test_with_a_key_shards_are_signed_verified_on_merge_and_a_re_sealed_edit_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "pipeline-secret")
    folders = fake_shards(tmp_path, {"A": -0.888})
    assert all(_load(f)["integrity"]["signed"] for f in folders)
    code, _ = _merge(folders, tmp_path / "merged", capsys)
    merged = _load(tmp_path / "merged")
    assert code == 1 and merged["integrity"]["signed"]
    assert [m["integrity"]["signature"] for m in merged["run"]["shard"]["merged_from"]] == ["verified", "verified"]
    # an editor without the key makes a consistent report and seals it: the digest matches, the signature cannot
    edited = _shard_of(folders, "A")
    report = _load(edited)
    SHARD_EDITS["consistent edit"][0](report)
    (edited / "report.json").write_text(json.dumps(seal(report)))
    code, err = _merge(folders, tmp_path / "forged", capsys)
    assert code == 2 and "is not signed, but a report key is configured" in err, err
    monkeypatch.setenv(KEY_ENV, "another-secret")
    (edited / "report.json").write_text(json.dumps(seal(report, b"another-secret")))
    code, err = _merge(folders, tmp_path / "forged2", capsys)
    assert code == 2 and "signed with another key" in err and str(folders[0] if edited == folders[1] else folders[1]) in err, err
    monkeypatch.delenv(KEY_ENV)  # without a key: the digests are checked, the signatures are said unchecked
    (edited / "report.json").write_text(json.dumps(seal(report)))
    code, _ = _merge(folders, tmp_path / "nokey", capsys)
    states = sorted(m["integrity"]["signature"] for m in _load(tmp_path / "nokey")["run"]["shard"]["merged_from"])
    assert code == 0 and states == ["not checked (no key configured)", "not signed"]


def test_a_bad_key_file_is_a_usage_error_of_the_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folders = fake_shards(tmp_path)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing.key"))
    code, err = _merge(folders, tmp_path / "merged", capsys)
    assert code == 2 and "missing.key: the report key file cannot be read" in err


# ----------------------------------------------------------------------------------------------------- track


def test_track_reuse_never_reads_an_edited_report_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``track --reuse`` runs a checkpoint again when its report was edited, and says why."""
    import mriq_validate.track as trk

    folders = fake_shards(tmp_path / "src", {"A": -0.888})
    shard = _shard_of(folders, "A")
    calls: list[str] = []

    def fake_run(checkpoint: Path, *, out: Path, **kwargs: Any) -> int:
        calls.append(Path(checkpoint).stem)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text((shard / "report.json").read_text())
        return 1

    monkeypatch.setattr(trk, "run_checkpoint", fake_run)
    (tmp_path / "s.yaml").write_text("criteria: []\n")
    ck = tmp_path / "gen-step00100.pt"
    ck.write_bytes(b"w")
    kw = {"suite": [str(tmp_path / "s.yaml")], "model": "builtin:real", "out": tmp_path / "out"}
    runs = trk.track([ck], reuse=True, **kw)
    assert calls == [ck.stem] and runs[0].report["decision"]["failed_gating"] == ["s.yaml::A"]
    path = tmp_path / "out" / ck.stem / "report.json"
    report = json.loads(path.read_text())
    report["results"][0]["verdict"] = "PASS"
    path.write_text(json.dumps(report))
    said: list[str] = []
    runs = trk.track([ck], reuse=True, progress=said.append, **kw)
    assert calls == [ck.stem, ck.stem] and "not reused" in said[0] and "A: verdict is PASS" in said[0], said
    assert runs[0].report["results"][0]["verdict"] == "FAIL"
    with pytest.raises(trk.TrackError, match="A: verdict is PASS"):  # and a report read back without reuse is refused
        path.write_text(json.dumps(report))
        trk.read_run(ck.stem, path.parent)
