"""One gate run split across CI jobs (``--mriq-shard K/N``), and the shard reports merged into one decision.

**Assignment.** The collected criterion items are grouped by suite file and criterion id, so the sweep levels of one
criterion (which share the measure prepared on the real data) run in one job. Groups are placed largest first, each on
the shard with the fewest items so far (ties: the lower shard; equal groups in the order of their ids): the "longest
processing time first" rule of Graham (1969), *Bounds on multiprocessing timing anomalies*, SIAM J. Appl. Math.
17(2):416-429, with item counts as sizes, so no shard holds more than the smallest one plus the largest group. The
assignment depends only on the set of collected item ids: every job computes the same one, whatever its timing or the
order of collection.

**A shard's report** records the shard (``run.shard``: K, N, the whole collected plan, the items of this shard, the
plan entries it selected, the suite files' SHA-256 and the model file's SHA-256) and is INCOMPLETE with the first reason
"partial: shard K of N": it never clears a model alone. Items of other shards are neither "not selected" nor "not run".
A shard job exits 0 when its own items leave nothing open (no gating FAIL, no ERROR, no skipped or unselected gating
item), so CI goes on to the merge job; a failing gating item makes it exit non-zero, as an unsharded run would.

**The merge** (``mriq-validate merge-reports DIR...``) reads each ``DIR/report.json``, checks it against the schema,
refuses shards that disagree on what was run or on what (N, the plan, the suite files, the model, the data, the seed,
the device, the threshold overrides, the tool and package versions), that miss or repeat a K or an item, or that are
the placeholder of a run that did not finish, and builds ONE report with the same report builder and decision function
(:func:`mriq_validate.report.build_report`, :mod:`mriq_validate.decision`) over the union of the results.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MriqError
from .integrity import REPORT_FILE, UnusableReport, check_seal, read_finished_report, report_key
from .report import SHARD_SAMPLES_FILE

SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
#: the shard's sample grid (real vs generated slices) for the merged report.html; written beside a shard's report.json
SAMPLES_FILE = SHARD_SAMPLES_FILE
_SAMPLE_KEYS = ("real", "generated", "masks", "generated_masks", "contrasts", "slice_index")


class MergeRefused(MriqError):
    """Shard reports that cannot be merged into one decision; the message names the folders and the field."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: str) -> Shard:
    """``K/N`` with 1 ≤ K ≤ N (e.g. ``2/4``); :class:`argparse.ArgumentTypeError` naming the value otherwise."""
    m = SHARD_RE.match(str(value))
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r}: expected K/N, shard K of N with 1 <= K <= N (e.g. 1/2)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{value!r}: shard {k} of {n} does not exist; expected K/N with 1 <= K <= N (e.g. 1/{max(n, 2)})")
    return Shard(k, n)


# ------------------------------------------------------------------------------------------------------ assignment


def group_key(item_id: str, criterion_id: str) -> tuple[str, str]:
    """The group an item runs with: its suite file (the node id's file part) and its criterion id."""
    return item_id.split("::", 1)[0], criterion_id


def assign(plan: Mapping[str, Mapping[str, Any]], count: int) -> dict[str, int]:
    """Item id → shard index (1-based) for the collected ``plan`` (item id → plan entry with ``criterion_id``)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for item_id, entry in plan.items():
        groups.setdefault(group_key(item_id, str(entry.get("criterion_id", item_id))), []).append(item_id)
    loads = [0] * count
    out: dict[str, int] = {}
    for key, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        target = min(range(count), key=lambda i: (loads[i], i))
        loads[target] += len(items)
        out.update((item_id, target + 1) for item_id in items)
    return out


def n_groups(plan: Mapping[str, Mapping[str, Any]]) -> int:
    """How many groups (criteria) the plan's items form: the most shards that all get items."""
    return len({group_key(i, str(e.get("criterion_id", i))) for i, e in plan.items()})


def empty_shard_problem(shard: Shard, plan: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why ``shard`` would check nothing (no criterion collected, or more shards than criteria); None when it has items."""
    if shard.index in assign(plan, shard.count).values():
        return None
    groups = n_groups(plan)
    if not groups:
        return f"{shard}: no criterion item was collected, so there is nothing to split; collect a suite or drop the option"
    return (f"{shard}: the collected suites hold {groups} criteria ({len(plan)} items; the sweep levels of one criterion stay "
            f"together), so shard {shard.index} of {shard.count} would check nothing; use at most {groups} shards")


# ------------------------------------------------------------------------------------------- a shard's own report


def model_file_sha256(spec: str | None, where: str | Path = ".") -> str | None:
    """SHA-256 of the model's file for ``file.py:NAME`` and TorchScript specs (:meth:`ModelSpec.sha256`; folders are
    hashed in the model's provenance when loaded, builtin and module specs have no file of their own); None otherwise,
    and for a spec the gate cannot parse (the gate run reports that itself)."""
    from .errors import ModelError
    from .model_spec import parse_model_spec

    try:
        return parse_model_spec(spec).sha256(where) if spec else None
    except ModelError:
        return None


def shard_record(shard: Shard, collected: Mapping[str, Mapping[str, Any]], planned: Mapping[str, Mapping[str, Any]],
                 model: str | None, where: str | Path = ".") -> dict[str, Any]:
    """``run.shard`` of a shard's report: K, N, the whole collected plan (item ids in collection order), this shard's
    items, the plan entries it selected to run, each suite file's SHA-256 (keyed by its node-id path, which is the same
    on every CI job) and the model file's SHA-256."""
    from .report import file_sha256

    owner = assign(collected, shard.count)
    suites: dict[str, str | None] = {}
    for item_id, entry in collected.items():
        rel = item_id.split("::", 1)[0]
        if rel not in suites:
            suites[rel] = file_sha256(entry["suite"]) if entry.get("suite") else None
    return {"index": shard.index, "count": shard.count, "plan": list(collected),
            "items": [i for i in collected if owner[i] == shard.index], "planned": [dict(e) for e in planned.values()],
            "suites": dict(sorted(suites.items())), "model": {"spec": model, "sha256": model_file_sha256(model, where)}}


def save_samples(samples: Mapping[str, Any] | None, folder: Path) -> Path | None:
    """Write a shard's sample grid (numpy arrays; ``contrasts`` as strings) to ``folder/shard-samples.npz``."""
    import numpy as np

    if not samples:
        return None
    arrays = {}
    for key in _SAMPLE_KEYS:
        value = samples.get(key)
        if value is None:
            continue
        if hasattr(value, "detach"):  # torch.Tensor, without importing torch
            value = value.detach().cpu().numpy()
        arrays[key] = np.asarray(value)
    path = Path(folder) / SAMPLES_FILE
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def load_samples(folder: Path) -> dict[str, Any] | None:
    """The sample grid a shard saved (see :func:`save_samples`), or None; never unpickles."""
    import numpy as np

    path = Path(folder) / SAMPLES_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files}
    if "contrasts" in out:
        out["contrasts"] = [str(c) for c in out["contrasts"]]
    return out


# ------------------------------------------------------------------------------------------------------- the merge


@dataclass
class ShardReport:
    """One shard's folder and its parsed, schema-checked ``report.json``."""

    folder: Path
    report: dict[str, Any]

    @property
    def shard(self) -> dict[str, Any]:
        return self.report["run"]["shard"]

    @property
    def label(self) -> str:
        return f"{self.folder} (shard {self.shard['index']}/{self.shard['count']})"


def read_shard_report(folder: Path) -> ShardReport:
    """``folder/report.json``, parsed and checked against the schema; MergeRefused when it is missing, not JSON, not a
    report, the placeholder of a run that did not finish, or not a shard's report."""
    try:
        report = read_finished_report(folder)
    except UnusableReport as exc:
        hint = "rerun that shard" if "did not finish" in exc.reason else (
            "each DIR must be the --mriq-report folder of one shard" if exc.reason == "not found" else "")
        raise MergeRefused(str(exc) + (f"; {hint}" if hint else "")) from None
    path = Path(folder) / REPORT_FILE
    run = report["run"]
    shard = run.get("shard")
    if not shard or shard.get("index") is None:
        what = "a report merged from shards" if shard else "the report of an unsharded run"
        raise MergeRefused(f"{path}: is {what}, not a shard's report (run.shard.index); give the folders of pytest runs "
                           "with --mriq-shard K/N")
    return ShardReport(Path(folder), report)


def _contexts_by_key(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {json.dumps([c.get("data_spec"), c.get("data_options")], sort_keys=True): c for c in report["provenance"]["contexts"]}


def _overrides(report: Mapping[str, Any]) -> list[list[Any]]:
    return sorted([d.get("criterion"), d.get("field"), d.get("value")] for d in report["run"].get("deviations") or [])


#: What every shard of one gate run must agree on: field (as named in refusals) → how to read it from a report.
AGREEMENT: dict[str, Any] = {
    "run.shard.count (N)": lambda r: r["run"]["shard"]["count"],
    "run.shard.plan (the collected criterion items)": lambda r: r["run"]["shard"]["plan"],
    "run.shard.suites (suite file SHA-256)": lambda r: r["run"]["shard"].get("suites"),
    "run.settings.model": lambda r: r["run"]["settings"].get("model"),
    "run.shard.model.sha256 (model file SHA-256)": lambda r: (r["run"]["shard"].get("model") or {}).get("sha256"),
    "run.settings.data": lambda r: r["run"]["settings"].get("data"),
    "run.settings.seed": lambda r: r["run"]["settings"].get("seed"),
    "run.settings.device": lambda r: r["run"]["settings"].get("device"),
    "run.settings.batch_size": lambda r: r["run"]["settings"].get("batch_size"),  # a stochastic model draws per call
    "threshold overrides (run.deviations)": _overrides,
    "tool.version": lambda r: r["tool"]["version"],
    "provenance.packages": lambda r: r["provenance"]["packages"],
    "provenance.python": lambda r: r["provenance"]["python"],
}
#: What shards that used the same data context must agree on: field of ``provenance.contexts[]`` → how to read it.
CONTEXT_AGREEMENT: dict[str, Any] = {
    "data.digests (data content hashes)": lambda c: (c.get("data") or {}).get("digests"),
    "model (model provenance, file hashes included)": lambda c: c.get("model"),
    "device": lambda c: c.get("device") if c.get("device") not in (None, "auto") else None,
}


def _refuse_disagreement(shards: list[ShardReport], field: str, values: list[Any], labels: list[str]) -> None:
    if all(v == values[0] for v in values):
        return
    shown = "; ".join(f"{label}: {json.dumps(v, sort_keys=True, default=str)[:200]}" for label, v in zip(labels, values))
    raise MergeRefused(f"the shard reports disagree on {field}: {shown}. Shards of one gate run must come from the same command "
                       "on the same suites, data and model; rerun the odd shard(s)")


def check_shards(shards: list[ShardReport]) -> None:
    """MergeRefused unless the shards are the N parts of one gate run: same N, plan, suites, model, data, seed, device,
    batch size, overrides, tool and package versions; each K once; each collected item in exactly one shard; results
    only for the shard's own items."""
    labels = [s.label for s in shards]
    for field, read in AGREEMENT.items():
        _refuse_disagreement(shards, field, [read(s.report) for s in shards], labels)
    contexts = [_contexts_by_key(s.report) for s in shards]
    for key in sorted({k for c in contexts for k in c}):
        having = [(s.label, c[key]) for s, c in zip(shards, contexts) if key in c]
        for field, read in CONTEXT_AGREEMENT.items():
            pairs = [(label, read(ctx)) for label, ctx in having if read(ctx) is not None]
            if pairs:
                where = f"provenance.contexts[{json.loads(key)[0]}].{field}"
                _refuse_disagreement(shards, where, [v for _, v in pairs], [label for label, _ in pairs])
    n = shards[0].shard["count"]
    seen: dict[int, list[str]] = {}
    for s in shards:
        seen.setdefault(s.shard["index"], []).append(str(s.folder))
    repeated = {k: v for k, v in seen.items() if len(v) > 1}
    if repeated:
        raise MergeRefused("shard(s) given more than once: " + "; ".join(f"{k}/{n} in {', '.join(v)}" for k, v in sorted(repeated.items())))
    missing = sorted(set(range(1, n + 1)) - set(seen))
    if missing:
        raise MergeRefused(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing: got {', '.join(labels)}; a decision needs "
                           f"all {n} shard reports")
    owner: dict[str, list[str]] = {}
    for s in shards:
        for item_id in s.shard["items"]:
            owner.setdefault(item_id, []).append(s.label)
        outside = [r["item_id"] for r in s.report["results"] if r["item_id"] not in set(s.shard["items"])]
        if outside:
            raise MergeRefused(f"{s.label}: results for items outside its share (run.shard.items): {', '.join(outside[:10])}")
    twice = {i: v for i, v in owner.items() if len(v) > 1}
    if twice:
        raise MergeRefused("criterion item(s) in more than one shard (run.shard.items): "
                           + "; ".join(f"{i} in {' and '.join(v)}" for i, v in list(twice.items())[:10]))
    plan = shards[0].shard["plan"]
    lost = [i for i in plan if i not in owner]
    if lost:
        raise MergeRefused(f"criterion item(s) of the plan in no shard (run.shard.items of {', '.join(labels)}): {', '.join(lost[:10])}")
    extra = [i for i in owner if i not in set(plan)]
    if extra:
        raise MergeRefused(f"criterion item(s) in a shard but not in the plan (run.shard.plan): {', '.join(extra[:10])}")


def _union(lists: Iterable[Iterable[Any]]) -> list[Any]:
    out: list[Any] = []
    for items in lists:
        out += [x for x in items if x not in out]
    return out


def _suite_path(item_id: str, suite_paths: list[str]) -> str | None:
    """The path shard 1 recorded for the suite file of ``item_id`` (jobs may check the repository out in other folders)."""
    rel = item_id.split("::", 1)[0]
    found = [p for p in suite_paths if p == rel or p.replace("\\", "/").endswith("/" + rel)]
    return min(found, key=len) if found else None


def _as_first_shard(entry: dict[str, Any], suite_paths: list[str]) -> dict[str, Any]:
    path = _suite_path(entry["item_id"], suite_paths)
    return {**entry, "suite": path} if path and "suite" in entry else entry


@dataclass
class Merged:
    """The merged report, the sample grid for its page, and the perturbation figures of the shards."""

    report: dict[str, Any]
    sample_images: dict[str, Any] | None
    figures: dict[str, Path]


def merge_shards(folders: list[Path], *, command_line: list[str] | None = None, invocation_dir: str = "") -> Merged:
    """One report from the shard report folders (see the module docstring); MergeRefused when they cannot be merged."""
    from .report import build_report, now_iso

    if not folders:
        raise MergeRefused("no shard report folder given")
    shards = sorted((read_shard_report(Path(f)) for f in folders), key=lambda s: (s.shard["index"], str(s.folder)))
    check_shards(shards)
    key = report_key()
    first = shards[0].report
    paths = [s["path"] for s in first["suites"]]
    plan_order = {item_id: i for i, item_id in enumerate(first["run"]["shard"]["plan"])}
    planned = sorted((_as_first_shard(e, paths) for s in shards for e in s.shard["planned"]),
                     key=lambda e: plan_order.get(e["item_id"], len(plan_order)))
    results = [_as_first_shard({k: v for k, v in r.items() if k != "duration_s"}, paths) for s in shards for r in s.report["results"]]
    durations = {r["item_id"]: r["duration_s"] for s in shards for r in s.report["results"] if r.get("duration_s") is not None}
    contexts = [c for s in shards for c in s.report["provenance"]["contexts"]]
    events: dict[Any, list[Any]] = {}  # cache rebuilds in any shard, each once, per data spec (as the report merges contexts)
    for c in contexts:
        events[c.get("data_spec")] = _union([events.get(c.get("data_spec"), []), c.get("cache_events") or []])
    interruptions = [f"shard {s.shard['index']}/{s.shard['count']}: {s.report['run']['interruption']}" for s in shards
                     if s.report["run"].get("interruption")]
    statuses = [s.report["run"].get("exit_status") for s in shards]
    run_info = {
        "settings": first["run"]["settings"],
        "command_line": list(command_line or []), "invocation_dir": invocation_dir,
        "started": min(s.report["run"]["started"] for s in shards if s.report["run"].get("started")) if any(
            s.report["run"].get("started") for s in shards) else None,
        "finished": max(s.report["run"]["finished"] for s in shards),
        "suites": first["suites"], "deviations": first["run"]["deviations"],
        "contexts": [{**c, "cache_events": events[c.get("data_spec")]} for c in contexts],
        "planned": {e["item_id"]: e for e in planned},
        "deselected": _union(s.report["deviations"]["deselected"] for s in shards),
        "collection_errors": _union(s.report["deviations"]["collection_errors"] for s in shards),
        "durations": durations, "xdist_workers": sum(int(s.report["run"].get("xdist_workers") or 0) for s in shards),
        "exit_status": max((x for x in statuses if x is not None), default=None),
        "interruption": "; ".join(interruptions) or None,
    }
    report = build_report(results, run_info)
    recorded = {s["path"]: s for sh in shards for s in sh.report["suites"]}  # the shards hashed the suite files they read
    report["suites"] = [{**s, **{k: recorded[s["path"]][k] for k in ("sha256", "git") if s["path"] in recorded}} for s in report["suites"]]
    report["provenance"].update({k: first["provenance"][k] for k in ("python", "platform", "hardware", "packages")})
    report["tool"] = dict(first["tool"])
    report["run"]["shard"] = {
        "index": None, "count": first["run"]["shard"]["count"], "plan": list(first["run"]["shard"]["plan"]),
        "items": list(first["run"]["shard"]["plan"]), "suites": first["run"]["shard"].get("suites"),
        "model": first["run"]["shard"].get("model"),
        "merged_from": [{"index": s.shard["index"], "folder": str(s.folder), "items": list(s.shard["items"]),
                         "status": s.report["decision"]["status"], "exit_status": s.report["run"].get("exit_status"),
                         "started": s.report["run"].get("started"), "finished": s.report["run"].get("finished"),
                         "duration_s": s.report["run"].get("duration_s"), "xdist_workers": s.report["run"].get("xdist_workers"),
                         "command_line": s.report["run"].get("command_line"), "platform": s.report["provenance"]["platform"],
                         "hardware": s.report["provenance"]["hardware"],
                         "integrity": {"digest": s.report["integrity"]["digest"], "signature": check_seal(s.report, key)[1]}}
                        for s in shards],
    }
    if report["run"]["started"] is None:
        report["run"]["started"] = now_iso()
    samples = next((x for x in (load_samples(s.folder) for s in shards) if x), None)
    figures: dict[str, Path] = {}
    for s in shards:
        for p in sorted(s.folder.glob("perturbations-*.png")):
            figures.setdefault(p.name, p)
    return Merged(report, samples, figures)


def write_merged(merged: Merged, out: Path, inputs: Iterable[Path]) -> Path:
    """Write the merged ``report.json``, ``report.html`` and the shards' perturbation figures into ``out`` (never into a
    shard's own folder); MergeRefused naming the file when it cannot be written."""
    from .report import write_report

    out = Path(out)
    for folder in inputs:
        if out.resolve() == Path(folder).resolve():
            raise MergeRefused(f"--out {out} is one of the shard folders; the merged report would replace that shard's report")
    try:
        path = write_report(merged.report, out, sample_images=merged.sample_images)
        for name, src in merged.figures.items():
            shutil.copyfile(src, out / name)
    except OSError as exc:
        raise MergeRefused(f"{exc.filename or out}: the merged report cannot be written there ({exc.strerror or exc})") from None
    return path
