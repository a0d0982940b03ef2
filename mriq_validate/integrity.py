"""Reading a report back, and evidence that cannot be edited into a pass: a report's schema, digest and signature, and
its verdicts re-derived on reading.

Writing (:func:`seal`): ``report.json`` gains an ``integrity`` section holding the SHA-256 of the rest of the
document in canonical form (keys sorted, no whitespace, the float text Python's ``repr`` gives, which survives a JSON
round trip exactly) and, where a key is configured, its HMAC-SHA256 (RFC 2104; Python's :mod:`hmac`). The key is the
value of ``MRIQ_REPORT_KEY`` or the content of the file that ``MRIQ_REPORT_KEY_FILE`` names; a CI pipeline keeps it
as a secret, so a shard edited between the job that wrote it and the job that merges it cannot be re-signed.

Reading (:func:`check_report`, used by every reader of a finished report: ``merge-reports``, ``track``, the study):

1. every PASS/FAIL verdict is re-derived from the recorded values with the gate's own code
   (:func:`mriq_validate.bounds.threshold_bounds`): the checked quantity from the compared estimate and ``on``, the
   bounds from the threshold and its noise unit, the verdict from both, per contrast where the measure decides per
   contrast and per subgroup where the criterion does (``by:``, with the subgroups' spread and Cochran's Q); the
   threshold must be the one the plan records;
2. the decision is re-derived from the verdicts with :func:`mriq_validate.decision.decision`;
3. the digest must match the content, and where a key is configured the report must carry a matching signature.

A report that fails any of these is refused with every disagreement named (criterion and field). Without a key the
digest only proves that the file was not changed by accident or by hand without recomputing it; with a key it proves
that whoever wrote the report held the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import MriqError

REPORT_FILE = "report.json"
SCHEMA_RESOURCE = "report_schema.json"
KEY_ENV = "MRIQ_REPORT_KEY"
KEY_FILE_ENV = "MRIQ_REPORT_KEY_FILE"
ALGORITHM = "sha256"
COVERS = "the whole report but this section, as canonical JSON (keys sorted, no whitespace, UTF-8)"
_ON = {"value": "value", "lower_ci": "ci_low", "upper_ci": "ci_high"}
_THRESHOLD_FIELDS = ("min", "max", "relative", "on", "unit", "tolerance")


class ReportKeyError(MriqError):
    """The configured report key cannot be read."""


# --------------------------------------------------------------------------------------------------- key and digest


def report_key(environ: dict[str, str] | None = None) -> bytes | None:
    """The configured HMAC key (``MRIQ_REPORT_KEY``, else the file named by ``MRIQ_REPORT_KEY_FILE``), None when
    neither is set; ReportKeyError for an empty key or an unreadable key file."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return env[KEY_ENV].encode("utf-8")
    name = env.get(KEY_FILE_ENV)
    if not name:
        return None
    try:
        key = Path(name).read_bytes().strip()
    except OSError as exc:
        raise ReportKeyError(f"{KEY_FILE_ENV}={name}: the report key file cannot be read ({exc.strerror or exc}); "
                             f"give a readable file holding the key, or unset {KEY_FILE_ENV}") from None
    if not key:
        raise ReportKeyError(f"{KEY_FILE_ENV}={name}: the report key file is empty; put the key in it, or unset {KEY_FILE_ENV}")
    return key


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (the first 16 hex digits of its SHA-256), so a report says which key signed it."""
    return hashlib.sha256(key).hexdigest()[:16]


def canonical_bytes(report: dict[str, Any]) -> bytes:
    """``report`` without its ``integrity`` section, as canonical JSON bytes."""
    body = {k: v for k, v in report.items() if k != "integrity"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def seal(report: dict[str, Any], key: bytes | None = None) -> dict[str, Any]:
    """``report`` (JSON-ready) with its ``integrity`` section: digest, and with ``key`` the HMAC-SHA256 of the same bytes."""
    data = canonical_bytes(report)
    integrity: dict[str, Any] = {"algorithm": ALGORITHM, "covers": COVERS, "digest": hashlib.sha256(data).hexdigest(),
                                 "signed": key is not None, "key_id": key_id(key) if key else None,
                                 "hmac": hmac.new(key, data, hashlib.sha256).hexdigest() if key else None}
    return {**{k: v for k, v in report.items() if k != "integrity"}, "integrity": integrity}


def check_seal(report: dict[str, Any], key: bytes | None) -> tuple[list[str], str]:
    """(problems, signature state) of ``report``'s ``integrity`` section; the state is ``verified``, ``not signed`` or
    ``not checked (no key configured)``."""
    integrity = report.get("integrity")
    if not isinstance(integrity, dict) or "digest" not in integrity:
        return ["it has no integrity section (integrity.digest): it was written by an older mriq-validate, or the section "
                "was removed; rerun it"], "not signed"
    data = canonical_bytes(report)
    problems = []
    digest = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(digest, str(integrity.get("digest"))):
        problems.append(f"its content was changed after it was written: its SHA-256 is {digest[:16]}…, integrity.digest "
                        f"records {str(integrity.get('digest'))[:16]}… (a hand edit, a truncation or a copy error)")
    signed = bool(integrity.get("signed")) and integrity.get("hmac")
    if key is None:
        return problems, "not checked (no key configured)" if signed else "not signed"
    if not signed:
        return problems + [f"it is not signed, but a report key is configured ({KEY_ENV} or {KEY_FILE_ENV}): every report "
                           "a signing pipeline reads must be written with the key"], "not signed"
    if integrity.get("key_id") != key_id(key):
        return problems + [f"it was signed with another key (key id {integrity.get('key_id')}; the configured key's id is "
                           f"{key_id(key)})"], "failed"
    if not hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), str(integrity["hmac"])):
        return problems + ["its signature (integrity.hmac) does not match its content under the configured key"], "failed"
    return problems, "verified" if not problems else "failed"


# ------------------------------------------------------------------------------------------ re-derived verdicts


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _same_bounds(a: Any, b: Any) -> bool:
    return isinstance(a, dict) and isinstance(b, dict) and all(_close(a.get(k), b.get(k)) for k in ("min", "max"))


def _noise_unit(unit: str, threshold: dict[str, Any], part: dict[str, Any]) -> Any:
    """The noise unit the gate used for one decision, from what the record holds (see criteria.noise_unit)."""
    from .bounds import NoiseUnit

    if unit == "absolute":
        return NoiseUnit("absolute")
    if unit == "se":  # the reference's bootstrap SE: the baseline's, else the value's
        return NoiseUnit("se", float((part.get("baseline") or part["value"])["se"]))
    recorded = threshold["noise_unit"]
    return NoiseUnit("seed_sd", float(recorded["seed_sd"]), int(recorded["seeds"]))


def _part_problems(where: str, threshold: dict[str, Any], part: dict[str, Any], verdict: str | None) -> tuple[list[str], bool]:
    """(disagreements, re-derived ok) of one decision: checked quantity, bounds and (when given) its recorded verdict."""
    from .bounds import threshold_bounds
    from .suite import Threshold

    th = Threshold(**{k: threshold.get(k) for k in _THRESHOLD_FIELDS if k in threshold})
    checked = part["compared"][_ON[th.on]]
    lo, hi = threshold_bounds(th, _noise_unit(th.unit, threshold, part))
    ok = checked is not None and (lo is None or checked >= lo) and (hi is None or checked <= hi)
    problems = []
    if not _close(part.get("checked"), checked):
        problems.append(f"{where}checked is {part.get('checked')}, but the {th.on.replace('_', ' ')} of compared is {checked}")
    for side, want in (("min", lo), ("max", hi)):
        if not _close((part.get("bounds") or {}).get(side), want):
            problems.append(f"{where}bounds.{side} is {(part.get('bounds') or {}).get(side)}, but the threshold gives {want}")
    if verdict is not None and verdict != ("PASS" if ok else "FAIL"):
        problems.append(f"{where}verdict is {verdict}, but checked {checked} against min {lo} and max {hi} is a {'PASS' if ok else 'FAIL'}")
    return problems, ok


def _decisions(rec: dict[str, Any]) -> tuple[dict[str, tuple[dict[str, Any], str | None]], str]:
    """The decisions a record holds, where → (decision, its recorded verdict or None), and what one of them is: every
    subgroup (× contrast) with ``by:``, every contrast of a measure taken on each contrast alone, else the record itself."""
    if rec.get("per_subgroup"):
        rows = rec["per_subgroup"]["subgroups"]
        return {f"per_subgroup.subgroups[{i}] ({r['subgroup']}{' ' + r['contrast'] if r.get('contrast') else ''})."
                : (r, r["verdict"]) for i, r in enumerate(rows)}, "subgroup"
    if rec.get("per_contrast"):
        return {f"per_contrast.{c}.": (p, p["verdict"]) for c, p in rec["per_contrast"].items()}, "contrast"
    return {"": (rec, None)}, "contrast"


def _heterogeneity_problems(name: str, per_subgroup: dict[str, Any] | None) -> list[str]:
    """Where a recorded spread of the subgroups (max - min, Cochran's Q, I²) differs from its re-derivation from the
    recorded subgroup estimates (:func:`mriq_validate.subgroups.heterogeneity`)."""
    from .subgroups import heterogeneity, heterogeneity_close

    if not per_subgroup:
        return []
    problems = []
    for i, h in enumerate(per_subgroup["heterogeneity"]):
        rows = [r for r in per_subgroup["subgroups"] if r.get("contrast") == h.get("contrast")]
        again = heterogeneity([r["compared"]["value"] for r in rows], [r["compared"]["se"] for r in rows])
        for key in heterogeneity_close(h, again):
            problems.append(f"{name}: per_subgroup.heterogeneity[{i}].{key} is {h.get(key)}, but the subgroups' compared "
                            f"estimates give {again[key]}")
    return problems


def result_problems(rec: dict[str, Any]) -> list[str]:
    """Where a result's recorded verdict, checked quantity or bounds disagree with its values and threshold (empty for
    ERROR and SKIP, which carry no values). Each problem names the criterion and the field."""
    if rec.get("verdict") not in ("PASS", "FAIL"):
        return []
    name = rec.get("item_id", "?").split("::")[-1]
    try:
        threshold = rec["threshold"]
        spec = rec.get("threshold_spec")
        problems = []
        if spec is not None and any(threshold.get(k) != spec.get(k) for k in _THRESHOLD_FIELDS if k in spec):
            problems.append(f"{name}: threshold {({k: threshold.get(k) for k in _THRESHOLD_FIELDS})} is not the planned "
                            f"threshold_spec {spec}")
        parts, each = _decisions(rec)
        oks = []
        for where, (part, recorded) in parts.items():
            found, ok = _part_problems(f"{name}: {where}", threshold, part, recorded)
            problems += found
            oks.append(ok)
        verdict = "PASS" if all(oks) else "FAIL"
        if rec["verdict"] != verdict:
            problems.append(f"{name}: verdict is {rec['verdict']}, but its values and threshold give {verdict}"
                            + (f" (every {each} must pass)" if len(parts) > 1 else f" (checked {rec.get('checked')}, "
                               f"bounds {rec.get('bounds')})"))
        if len(parts) > 1 and not any(_close(rec.get("checked"), p.get("checked")) and _same_bounds(rec.get("bounds"), p.get("bounds"))
                                      for p, _ in parts.values()):
            problems.append(f"{name}: checked {rec.get('checked')} with bounds {rec.get('bounds')} is the decision of no {each}")
        return problems + _heterogeneity_problems(name, rec.get("per_subgroup"))
    except (KeyError, TypeError, ValueError) as exc:
        return [f"{name}: the verdict cannot be re-derived from the record ({type(exc).__name__}: {exc})"]


def rederived_decision(report: dict[str, Any]) -> dict[str, Any]:
    """The decision of ``report`` re-derived from its results, deviations and interruption (a shard's partial decision
    for the report of one shard), with the gate's own functions."""
    from .decision import decision, shard_record_decision

    dev, run = report.get("deviations") or {}, report.get("run") or {}
    again = decision(report.get("results") or [], not_run=dev.get("not_run") or [], interruption=run.get("interruption"),
                     collection_errors=dev.get("collection_errors") or [], deselected=dev.get("deselected") or [])
    shard = run.get("shard") or {}
    if shard.get("index") is not None:
        again = shard_record_decision(again, shard)
    return again


def decision_problems(report: dict[str, Any]) -> list[str]:
    """Where the recorded decision differs from :func:`rederived_decision`."""
    again = rederived_decision(report)
    recorded = report.get("decision") or {}
    return [f"decision.{k} is {json.dumps(recorded.get(k))[:120]}, but the results give {json.dumps(v)[:120]}"
            for k, v in again.items() if recorded.get(k) != v]


def report_problems(report: dict[str, Any], key: bytes | None) -> tuple[list[str], str]:
    """Every disagreement in ``report`` (re-derived verdicts, decision, seal) and its signature state."""
    problems = [p for r in report.get("results") or [] for p in result_problems(r)]
    problems += decision_problems(report)
    sealed, state = check_seal(report, key)
    return problems + sealed, state


# ------------------------------------------------------------------------------------------ reading a report


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``report.json``, as shipped in the package."""
    return json.loads(resources.files("mriq_validate").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow the shipped schema."""
    import jsonschema

    jsonschema.Draft202012Validator(report_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(report)


class UnusableReport(MriqError):
    """A report folder holds no finished, valid report; ``reason`` says why, in words that follow the file's path."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def read_finished_report(folder: Path) -> dict[str, Any]:
    """``folder/report.json`` parsed, checked against the schema, finished and verified; :class:`UnusableReport` when it
    is missing, not JSON, not a report, the INCOMPLETE placeholder of a run that did not finish, or when a recorded verdict
    or the decision disagrees with the recorded values, its digest with its content, or (where a report key is
    configured) its signature with the key (:func:`report_problems`)."""

    import jsonschema

    path = Path(folder) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnusableReport(path, "not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnusableReport(path, f"cannot be read as JSON ({type(exc).__name__}: {exc})") from None
    try:
        validate_report(report)
    except jsonschema.ValidationError as exc:
        where = ".".join(map(str, exc.absolute_path)) or "(top level)"
        raise UnusableReport(path, f"does not follow the report schema at {where}: {exc.message[:300]}") from None
    if report["run"].get("finished") is None:
        raise UnusableReport(path, f"is the INCOMPLETE placeholder of a run that did not finish ({report['run'].get('interruption')})")
    problems, _ = report_problems(report, report_key())
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UnusableReport(path, f"is refused: {shown}. A report is read only as the gate wrote it; rerun the gate")
    return report
