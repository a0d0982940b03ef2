"""The release decision: CLEARED, NOT CLEARED or INCOMPLETE, from the per-criterion records of a run.

A pure function of the records and of what did not run; the evidence report (:mod:`mriq_validate.report`) and the
terminal summary both show it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

VERDICTS = ("PASS", "FAIL", "ERROR", "SKIP")
NOT_RUN = "NOT RUN"
SELF_CHECK_KINDS = ("sensitivity", "reference")


def is_self_check(record: dict[str, Any]) -> bool:
    """A check of the tool on the reference data (``kind: sensitivity`` or ``reference``), not of the model."""
    return record.get("kind") in SELF_CHECK_KINDS


def decision(results: list[dict[str, Any]], *, not_run: Iterable[dict[str, Any]] = (), interruption: str | None = None,
             collection_errors: Iterable[dict[str, Any]] = (), deselected: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The release decision.

    CLEARED when every gating criterion of every collected suite ran and passed; NOT CLEARED when the run is complete
    and a gating criterion on the model FAILed; INCOMPLETE when any criterion ERRORed, a gating criterion was skipped or
    deselected (``-k``, ``-m``, node ids), a selected criterion did not run, a gating self-check of the tool
    (``kind: sensitivity`` or ``reference``) FAILed (the gate cannot judge on this data), a suite file could not be
    collected, the run was interrupted, or no gating criterion ran. Each reason lists the criteria by id.

    Args:
        results: one record per criterion item that ran (``item_id``, ``gate``, ``kind``, ``verdict``).
        not_run: plan entries (``item_id``) of selected items that did not run.
        interruption: why the run stopped early, if it did.
        collection_errors: files that could not be collected (``node_id``).
        deselected: plan entries (``item_id``, ``gate``) of collected items that were not selected to run.
    """
    not_run, collection_errors, deselected = list(not_run), list(collection_errors), list(deselected)
    gating = [r for r in results if r["gate"]]
    errors = [r["item_id"] for r in results if r["verdict"] == "ERROR"]
    skipped = [r["item_id"] for r in gating if r["verdict"] == "SKIP"]
    failed = [r["item_id"] for r in gating if r["verdict"] == "FAIL" and not is_self_check(r)]
    failed_self_checks = [r["item_id"] for r in gating if r["verdict"] == "FAIL" and is_self_check(r)]
    advisory_failed = [r["item_id"] for r in results if not r["gate"] and r["verdict"] == "FAIL"]
    deselected_gating = [d["item_id"] for d in deselected if d.get("gate")]
    reasons: list[str] = []
    if interruption:
        reasons.append(f"the run was interrupted ({interruption})")
    if collection_errors:
        reasons.append(f"{len(collection_errors)} file(s) could not be collected: {_ids(c['node_id'] for c in collection_errors)}")
    if errors:
        reasons.append(f"{len(errors)} criterion item(s) ERRORed (could not be evaluated): {_ids(errors)}")
    if failed_self_checks:
        reasons.append(f"{len(failed_self_checks)} gating self-check(s) of the tool FAILED, so the gate cannot judge on this data: "
                       f"{_ids(failed_self_checks)}")
    if skipped:
        reasons.append(f"{len(skipped)} gating criterion item(s) were skipped: {_ids(skipped)}")
    if not_run:
        reasons.append(f"{len(not_run)} selected criterion item(s) did not run: {_ids(n['item_id'] for n in not_run)}")
    if deselected_gating:
        reasons.append(f"{len(deselected_gating)} gating criterion item(s) were not selected to run: {_ids(deselected_gating)}")
    if not gating and not reasons:
        reasons.append("no gating criterion ran")
    if reasons:
        status = "INCOMPLETE"
        summary = "Incomplete: " + "; ".join(reasons) + "."
        if failed:
            summary += f" {len(failed)} gating criterion item(s) already FAILED, so the model cannot be cleared."
    elif failed:
        status = "NOT CLEARED"
        summary = f"Not cleared: {len(failed)} of {len(gating)} gating criterion item(s) FAILED."
    else:
        status = "CLEARED"
        summary = f"Cleared: all {len(gating)} gating criterion item(s) PASSED."
    counts = {v: sum(r["verdict"] == v for r in results) for v in VERDICTS}
    counts[NOT_RUN] = len(not_run)
    return {"status": status, "complete": not reasons, "summary": summary, "incomplete_reasons": reasons,
            "failed_gating": failed, "failed_self_checks": failed_self_checks, "errors": errors, "skipped_gating": skipped,
            "not_run": [n["item_id"] for n in not_run],
            "deselected_gating": deselected_gating, "advisory_failed": advisory_failed,
            "collection_errors": [c["node_id"] for c in collection_errors], "interruption": interruption,
            "counts": counts, "n_criteria": len(results), "n_gating": len(gating)}


def _open_lists(own: dict[str, Any]) -> bool:
    """Whether a decision leaves anything open besides "no gating criterion ran" (which a shard may well have)."""
    return any(own[k] for k in ("errors", "failed_self_checks", "skipped_gating", "not_run", "deselected_gating", "collection_errors",
                                "interruption"))


def shard_ok(own: dict[str, Any]) -> bool:
    """Whether a shard job may exit 0: its own items leave nothing open and no gating item FAILed."""
    return not own["failed_gating"] and not _open_lists(own)


def shard_decision(own: dict[str, Any], index: int, count: int, n_items: int, n_plan: int) -> dict[str, Any]:
    """The decision of shard ``index`` of ``count`` (``--mriq-shard K/N``): INCOMPLETE, first reason "partial: shard K of N",
    then the shard's own open points.

    ``own``: :func:`decision` over this shard's records; ``n_items`` of ``n_plan`` collected items belong to this shard."""
    partial = (f"partial: shard {index} of {count} ({n_items} of {n_plan} criterion items); merge the shard reports "
               f"(mriq-validate merge-reports) for the release decision")
    own_reasons = list(own["incomplete_reasons"]) if (own["n_gating"] or _open_lists(own)) else []  # drop "no gating criterion ran"
    reasons = [partial, *own_reasons]
    summary = "Incomplete: " + "; ".join(reasons) + "."
    if own["failed_gating"]:
        summary += f" {len(own['failed_gating'])} gating criterion item(s) already FAILED, so the model cannot be cleared."
    elif shard_ok(own):
        summary += (f" This shard's {own['n_gating']} gating criterion item(s) PASSED." if own["n_gating"] else
                    " This shard holds no gating criterion item.")
    return {**own, "status": "INCOMPLETE", "complete": False, "summary": summary, "incomplete_reasons": reasons}


def shard_record_decision(own: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """:func:`shard_decision` for the shard that ``record`` (a report's ``run.shard``: index, count, items, plan) describes."""
    return shard_decision(own, record["index"], record["count"], len(record["items"]), len(record["plan"]))


def _ids(item_ids: Iterable[str]) -> str:
    """Item ids as a reader knows them (the criterion part of the node id), comma-separated."""
    return ", ".join(str(i).split("::")[-1] for i in item_ids)
