"""The evidence report: per-criterion records, the release decision, provenance, ``report.json`` and ``report.html``.

The JSON document follows ``report_schema.json`` (JSON Schema draft 2020-12, shipped in this package); its layout
is described in ``docs/report.md``. Sections, in the order a reviewer reads them:

- ``decision``: CLEARED / NOT CLEARED / INCOMPLETE (:mod:`mriq_validate.decision`), with the failing gating
  criteria and why a run is incomplete;
- ``suites``: each suite's context of use, file hash and the git commit of its repository;
- ``results``: one record per criterion (per sweep level), the rows of the traceability table;
- ``deviations``: skipped, deselected or not-run criteria, overridden thresholds and their source, collection errors;
- ``limitations``: what each measure used is known to be blind to, and what the sensitivity criteria showed;
- ``self_check``: the tool's own checks in this run and the known-answer tests it ships;
- ``scorecard``: every criterion on the seven Cs and eight sections of the FDA Synthetic Data ScoreCard (:mod:`.scorecard`);
- ``provenance``: data digests, model, segmenters, package versions, device, seed;
- ``run``: settings, command line, times, exit status, interruption.

Everything but the fields in :data:`VOLATILE_FIELDS` is a function of the command, the seed and the inputs.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .decision import decision, is_self_check
from .integrity import REPORT_FILE, UnusableReport, read_finished_report, report_key, report_schema, seal, validate_report  # noqa: F401
from .scorecard import scorecard_section

REPORT_SCHEMA_VERSION = "1.1"
HTML_FILE = "report.html"
PACKAGES = ("mriq-validate", "torch", "monai", "pyiqa", "numpy", "scipy", "pydantic", "nibabel", "pytest", "pytest-xdist",
            "matplotlib")

#: Fields that may differ between two runs of the same command on the same inputs (times, durations, the command
#: line and local paths). Paths are dotted; ``*`` matches every list element or every mapping key at that level.
VOLATILE_FIELDS: tuple[str, ...] = (
    "run.started",
    "run.finished",
    "run.duration_s",
    "run.command_line",
    "run.invocation_dir",
    "run.settings.cache_dir",
    "results.*.duration_s",
    "provenance.contexts.*.segmenters.*.history.seconds",
    "provenance.contexts.*.segmenters.*.history.epochs_per_s",
    "provenance.contexts.*.results_reused",  # a warm run reads back what a cold one computed (mriq_validate.memo)
    "integrity",  # its digest covers the fields above
)

#: What reruns known answers where only the package is installed (:mod:`mriq_validate.selftest`; the tests below need
#: the source tree).
SELFTEST = ("mriq-validate selftest: Dice, FID, perturbation replay, seed-SD bounds and the report's seal and re-derived "
            "verdicts, from the installed package")
#: The known-answer tests of the tool's source tree (``make test`` in a checkout; wheel users rerun :data:`SELFTEST`).
KNOWN_ANSWER_TESTS: tuple[dict[str, str], ...] = (
    {"where": "tests/test_downstream.py", "checks": "Dice known answers (identical masks 1, disjoint 0, empty vs empty 1); "
     "segmenter training is deterministic on CPU"},
    {"where": "tests/test_plugin.py", "checks": "identical paired images give a Dice difference of exactly 0; builtin:real "
     "CLEARS and builtin:tumour-eraser FAILS the shipped brain-tumour suite; broken models ERROR, never pass"},
    {"where": "tests/test_distribution.py", "checks": "FID of identical sets is 0 and matches scipy sqrtm; KID, MMD and "
     "PRDC match reference formulas; mode collapse lowers recall, not precision"},
    {"where": "tests/test_perturb.py", "checks": "perturbations are seeded and replayable; noise variance grows with its "
     "strength; local edits change nothing outside their documented region (the lesion and a band each edit states)"},
    {"where": "tests/test_memorisation.py", "checks": "builtin:memoriser is flagged; held-out real images are flagged at "
     "the null rate; 15 % duplication of training images is detected"},
    {"where": "tests/test_niqe.py", "checks": "NIQE wrapper equals bare pyiqa; order clean < blur < noise"},
    {"where": "tests/test_report.py", "checks": "report.json validates against the schema; same command gives the same "
     "report; pytest-xdist runs merge into one report; interrupted runs are reported INCOMPLETE"},
    {"where": "tests/test_integrity.py", "checks": "every verdict and the decision of a real gate report re-derive from its "
     "values; a flipped verdict, a changed value, threshold or decision, a truncated report and an edit sealed again "
     "without the key are refused by merge-reports and track"},
)


# --------------------------------------------------------------------------------------------------------- helpers


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that change the numbers."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_iso() -> str:
    """UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 (hex) of a file's bytes (:func:`mriq_validate.cache.file_sha256`); None when it cannot be read."""
    from .cache import file_sha256 as sha256_and_size

    try:
        return sha256_and_size(Path(path))[0]
    except OSError:
        return None


def git_info(path: str | Path) -> dict[str, Any]:
    """The commit checked out in the git repository holding ``path`` and whether ``path`` differs from it
    (``dirty``: modified or untracked). ``commit`` is None outside a repository or without git."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "-q", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--", p.name if p.is_file() else ".")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def hardware(devices: Iterable[str] = ()) -> dict[str, Any]:
    """CPU count and the CUDA device name when a criterion ran on CUDA (torch is imported only then)."""
    out: dict[str, Any] = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "cuda_device": None}
    if not any(str(d).startswith("cuda") for d in devices):
        return out
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover - a missing torch or a broken CUDA set-up must not lose the report
        pass
    return out


# ------------------------------------------------------------------------------------------------------ sections


def _suites(suites: list[dict[str, Any]], results: list[dict[str, Any]], plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in sorted(suites, key=lambda s: s["path"]):
        items = {r["item_id"] for r in [*results, *plan] if r.get("suite") == s["path"]}  # collected items, run or not
        out.append({
            "name": s.get("name"), "version": s.get("version"), "path": s["path"], "sha256": file_sha256(s["path"]),
            "git": git_info(s["path"]), "description": (s.get("description") or "").strip() or None,
            "context_of_use": (s.get("context_of_use") or "").strip(), "n_criteria": s.get("n_criteria"), "n_items": len(items),
        })
    return out


def _deviations(run: dict[str, Any], results: list[dict[str, Any]], not_run: list[dict[str, Any]]) -> dict[str, Any]:
    rebuilt = [e for c in run.get("contexts") or [] for e in c.get("cache_events", [])]
    return {
        "cache_rebuilt": [dict(t) for t in dict.fromkeys(tuple(sorted(e.items())) for e in rebuilt)],  # once, in order
        "threshold_overrides": run.get("deviations", []),
        "skipped": [{"item_id": r["item_id"], "criterion_id": r["criterion_id"], "gate": r["gate"], "reason": r.get("message")}
                    for r in results if r["verdict"] == "SKIP"],
        "not_run": [{"item_id": n["item_id"], "criterion_id": n["criterion_id"], "gate": n["gate"]} for n in not_run],
        "deselected": [{"item_id": d["item_id"], "criterion_id": d["criterion_id"], "gate": d["gate"]} for d in run.get("deselected", [])],
        "collection_errors": run.get("collection_errors", []),
    }


def _level_text(level: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((level or {}).items()))


def _sensitivity(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        if r.get("kind") != "sensitivity":
            continue
        metric = (r.get("metric") or {}).get("name") or r.get("metric_name") or "?"
        pert = r.get("perturbation") or {}
        spec = r.get("perturbation_spec") or {}
        name = pert.get("name") or spec.get("name") or "?"
        params = pert.get("params") or r.get("level") or {k: v for k, v in spec.items() if k != "name"}
        what = f"{name} ({_level_text(params)})" if params else name
        detected = {"PASS": True, "FAIL": False}.get(r["verdict"])
        statement = {True: f"{metric} detects {what}", False: f"{metric} does not detect {what} at the required effect size"}.get(
            detected, f"{metric} on {what}: not established ({r['verdict']})")
        if "checked" in r and detected is not None:
            statement += f" (moved {r['checked']:.4g} towards worse; {_bounds_text(r.get('bounds'))})"
        out.append({"item_id": r["item_id"], "criterion_id": r["criterion_id"], "metric": metric, "perturbation": name,
                    "params": params, "verdict": r["verdict"], "detected": detected, "statement": statement})
    return out


def _bounds_text(bounds: dict[str, Any] | None) -> str:
    parts = [f"{k} {v:.4g}" for k, v in (bounds or {}).items() if v is not None]
    return "required " + " and ".join(parts) if parts else "no bound"


def _metric_limitations(name: str) -> list[str]:
    """What measure ``name`` is known to be blind to: its class's ``limitations``."""
    try:
        from .metrics import METRICS  # the package registers every metric

        own = getattr(METRICS.get(name), "limitations", None)
        if own:
            return [own] if isinstance(own, str) else list(own)
    except Exception:  # pragma: no cover - the report must not fail on a broken metric module
        pass
    return ["No limitations are recorded for this measure yet; treat its verdicts with care."]


def _limitations(results: list[dict[str, Any]], plan: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({(r.get("metric") or {}).get("name") or r.get("metric_name") for r in [*results, *plan]} - {None})
    advisory = sorted({r["criterion_id"] for r in [*results, *plan] if not r["gate"]})
    return {"measures": {n: _metric_limitations(n) for n in names}, "sensitivity": _sensitivity(results),
            "advisory_criteria": advisory}


def _self_check(results: list[dict[str, Any]], not_run: list[dict[str, Any]]) -> dict[str, Any]:
    checks = [r for r in results if is_self_check(r)]
    missing = [n for n in not_run if is_self_check(n)]
    gating = [r for r in checks if r["gate"]]
    if not checks and not missing:
        status = "NOT RUN"
    elif any(r["verdict"] == "ERROR" for r in checks) or missing or any(r["verdict"] == "SKIP" for r in gating):
        status = "INCOMPLETE"
    elif any(r["verdict"] == "FAIL" for r in gating):
        status = "FAIL"
    else:
        status = "PASS"
    return {
        "status": status,
        "criteria": [{"item_id": r["item_id"], "criterion_id": r["criterion_id"], "kind": r.get("kind"), "gate": r["gate"],
                      "verdict": r["verdict"]} for r in checks],
        "not_run": [n["item_id"] for n in missing],
        "note": ("Criteria of kind 'sensitivity' (a known perturbation of the real data must move the measure) and 'reference' "
                 "(the tool must be competent on the real data) check the tool and its measures in this run, whatever the "
                 "model. A failed gating self-check makes the decision INCOMPLETE: the gate cannot judge on this data. "
                 "Advisory sensitivity FAILs characterise a measure (what it does not detect); they are listed under limitations."),
        "known_answer_tests": [dict(t) for t in KNOWN_ANSWER_TESTS],
        "selftest": SELFTEST,
    }


def _merge_contexts(contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per data spec; provenance from several processes (pytest-xdist workers) merged key by key."""
    merged: dict[str, dict[str, Any]] = {}

    def deep(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                a[k] = deep(dict(a[k]), v)
            elif k not in a or a[k] in (None, "auto", {}, []):
                a[k] = copy.deepcopy(v)
        return a

    for c in contexts:
        key = json.dumps(c.get("data_spec"), sort_keys=True)
        merged[key] = deep(merged.get(key, {}), c)
    return [merged[k] for k in sorted(merged)]


def _devices(contexts: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    found = sorted({str(c["device"]) for c in contexts if c.get("device")} - {"auto"})
    return found or [str(settings.get("device", "auto"))]


def _plan_order(results: list[dict[str, Any]], plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    index = {p["item_id"]: i for i, p in enumerate(plan)}
    return sorted(results, key=lambda r: (index.get(r["item_id"], len(index)), r["item_id"]))


# ---------------------------------------------------------------------------------------------------------- build


def build_report(results: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The report document (see the module docstring and ``report_schema.json``).

    ``results``: the per-item records (``rep.mriq_record``); ``run``: what the plugin knows about the session
    (see :meth:`mriq_validate.run_state.MriqRun.info`): settings, command line, times, suites, threshold overrides (``deviations``),
    context provenance (``contexts``), the collected plan (``planned``: item id → record stub), ``deselected``,
    ``collection_errors``, ``durations`` (item id → seconds), ``interruption`` and ``exit_status``.
    Missing keys are treated as empty, so a partial ``run`` still gives a valid report.
    """
    plan = list((run.get("planned") or {}).values())
    plan_by_id = {p["item_id"]: p for p in plan}
    durations = run.get("durations") or {}
    records = []
    for r in results:
        rec = {**plan_by_id.get(r["item_id"], {}), **r}
        rec["duration_s"] = round(float(durations[r["item_id"]]), 3) if r["item_id"] in durations else None
        records.append(rec)
    records = _plan_order(records, plan)
    done = {r["item_id"] for r in records}
    not_run = [p for p in plan if p["item_id"] not in done]
    contexts = _merge_contexts(run.get("contexts") or [])
    settings = dict(run.get("settings") or {})
    started, finished = run.get("started"), run.get("finished")
    try:
        duration = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds() if started and finished else None
    except ValueError:
        duration = None
    interruption = run.get("interruption")
    dec = decision(records, not_run=not_run, interruption=interruption, collection_errors=run.get("collection_errors", []),
                   deselected=run.get("deselected", []))
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": {"name": "mriq-validate", "version": package_versions()["mriq-validate"]},
        "decision": dec,
        "suites": _suites(list(run.get("suites") or []), records, plan),
        "results": records,
        "deviations": _deviations(run, records, not_run),
        "limitations": _limitations(records, plan),
        "self_check": _self_check(records, not_run),
        "provenance": {
            "seed": settings.get("seed"),
            "devices": _devices(contexts, settings),
            "hardware": hardware(_devices(contexts, settings)),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": package_versions(),
            "contexts": contexts,
        },
        "run": {
            "settings": settings,
            "command_line": list(run.get("command_line") or []),
            "invocation_dir": run.get("invocation_dir"),
            "started": started,
            "finished": finished,
            "duration_s": duration,
            "exit_status": run.get("exit_status"),
            "interruption": interruption,
            "xdist_workers": int(run.get("xdist_workers") or 0),
            "deviations": run.get("deviations", []),
            "shard": run.get("shard"),  # --mriq-shard K/N, or a report merged from shards (mriq_validate.shards)
        },
    }
    return {**report, "scorecard": scorecard_section(report, [*records, *not_run], run.get("deselected") or [])}


# ---------------------------------------------------------------------------------------------------------- write


def _json_text(report: dict[str, Any]) -> str:
    """The text of ``report.json``: ``report`` made JSON-ready, then sealed (digest, and HMAC where a report key is
    configured; :mod:`mriq_validate.integrity`)."""
    plain = json.loads(json.dumps(_finite(report), default=str, allow_nan=False))
    return json.dumps(seal(plain, report_key()), indent=2, sort_keys=False, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    """NaN and inf become None (JSON has no NaN; the schema allows null where a value may be missing)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(report: dict[str, Any], folder: Path, *, sample_images: dict[str, Any] | None = None, html: bool = True,
                 gallery_images: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``report.json`` and, with ``html``, the self-contained ``report.html`` into ``folder``; return the path of
    ``report.json``. ``gallery_images``: item id → the worst items' images of a criterion, for report.html's gallery.

    The JSON is written first, so a failure while drawing the HTML never loses it; such a failure is written into
    ``report.html`` as a short error page and re-raised.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = _json_text(report)
    path = folder / REPORT_FILE
    _write_text(path, text)
    if html:
        from .report_html import notice_page, render_html

        try:
            page = render_html(json.loads(text), sample_images=sample_images, gallery_images=gallery_images)
        except Exception as exc:
            _write_text(folder / HTML_FILE, notice_page("report.html could not be drawn", repr(exc)))
            raise
        _write_text(folder / HTML_FILE, page)
    return path


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, rename), so a reader never sees half a report."""
    from .cache import write_atomic

    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


#: Figures of an earlier run, removed at the start of a run (report.json and report.html are replaced).
_EARLIER_FIGURES = "perturbations-*.png"
#: A shard's sample grid for the merged report.html (``--mriq-shard``; see :mod:`mriq_validate.shards`), also removed.
SHARD_SAMPLES_FILE = "shard-samples.npz"


def mark_in_progress(folder: Path, run: dict[str, Any]) -> Path:
    """At the start of a run: replace an earlier report in ``folder`` by an INCOMPLETE placeholder ("the run has not
    finished") and remove the earlier run's figures, so a run that dies never leaves the previous decision in place.
    Raises OSError when the folder cannot be written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob(_EARLIER_FIGURES), *folder.glob(SHARD_SAMPLES_FILE)]:
        old.unlink()
    note = (f"the run started at {run.get('started') or now_iso()} has not finished; if this placeholder is still here, the run died before it "
            f"could decide (look at its log)")
    placeholder = build_report([], {**run, "interruption": note, "finished": None})
    path = folder / REPORT_FILE
    _write_text(path, _json_text(placeholder))
    from .report_html import notice_page

    _write_text(folder / HTML_FILE, notice_page("INCOMPLETE: run in progress", note))
    return path


# ------------------------------------------------------------------------------------------------ schema, volatile


def strip_volatile(report: dict[str, Any], fields: Iterable[str] = VOLATILE_FIELDS) -> dict[str, Any]:
    """A deep copy of ``report`` without the volatile fields (for comparing two runs)."""
    out = copy.deepcopy(report)
    for field in fields:
        _drop(out, field.split("."))
    return out


def _drop(node: Any, parts: list[str]) -> None:
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
        for child in children:
            _drop(child, rest)
    elif isinstance(node, dict) and head in node:
        if rest:
            _drop(node[head], rest)
        else:
            del node[head]
