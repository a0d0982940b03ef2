"""``mriq-validate track``: readiness over training. The same suite is run on each checkpoint of one generator, and the
measures with their CIs, thresholds and verdicts are drawn against training steps, with one row per checkpoint saying
its release decision and the criteria that hold it back.

One gate run per checkpoint: a fresh ``python -m pytest`` process (so nothing one checkpoint loads stays for the
next) with ``--mriq-model MODEL --mriq-report OUT/<checkpoint stem>/`` and the checkpoint's path in an environment
variable (``MRIQ_CHECKPOINT`` unless ``--checkpoint-env`` says otherwise) that the model file reads; see
``examples/model.py`` and docs/example.md. With ``reuse``, a checkpoint whose folder already holds a finished report
of a run on the same inputs (:func:`run_record`: the checkpoint's bytes, the suites' bytes, the model spec and file,
the extra pytest arguments, the package versions) is not run again, so that ``track`` can be called after each new
checkpoint during training and gates only the new one. The rest is pure: :func:`read_run` parses a ``report.json``,
:func:`curves`, :func:`holding_back`, :func:`markdown` and :func:`track_figure` build the outputs from the parsed runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import file_sha256
from .errors import MissingFileError, MriqError
from .figures import ADVISORY_FAIL, FONT, VERDICT_COLOURS, new_figure, png_bytes
from .figures import quantity_label  # "dice (whole_tumour): generated − real", as the report figures say it
from .integrity import REPORT_FILE, UnusableReport, read_finished_report
from .model_spec import parse_model_spec
from .report import package_versions
from .signals import run_child
from .study.models import checkpoint_step  # the training step in a checkpoint's name, shared with the model study

CHECKPOINT_ENV = "MRIQ_CHECKPOINT"
FIGURE_FILE = "readiness.png"
RUN_RECORD = "track-run.json"  # beside each checkpoint's report: what its run depended on (see run_record)
TABLE_FILE = "readiness.md"


class TrackError(MriqError):
    """A checkpoint's gate run left no usable report."""


@dataclass(frozen=True)
class CheckpointRun:
    """One checkpoint's gate run: its name (file stem), training step (None when the name has none) and report."""

    name: str
    step: int | None
    report: dict[str, Any] = field(repr=False)

    @property
    def status(self) -> str:
        return str(self.report["decision"]["status"])


@dataclass(frozen=True)
class Point:
    """One criterion item on one checkpoint: the compared quantity with its CI, the bounds and the verdict."""

    checkpoint: str
    step: int | None
    verdict: str
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    bounds: dict[str, float | None] = field(default_factory=dict)


def read_run(name: str, folder: Path) -> CheckpointRun:
    """``folder/report.json`` of checkpoint ``name``, schema-checked; TrackError when missing, unreadable or the
    placeholder of a run that did not finish."""
    try:
        report = read_finished_report(folder)
    except UnusableReport as exc:
        hint = ("; its gate run wrote no report (see its output above)" if exc.reason == "not found"
                else "; rerun it" if "did not finish" in exc.reason else "")
        raise TrackError(f"checkpoint {name}: {exc.path} {exc.reason}{hint}") from None
    return CheckpointRun(name, checkpoint_step(name), report)


def _short(item_id: str) -> str:
    """The criterion part of an item id (``suites/x.yaml::DICE-WT`` → ``DICE-WT``)."""
    return item_id.split("::")[-1]


def ordered(runs: Sequence[CheckpointRun]) -> list[CheckpointRun]:
    """Runs by training step (runs without a step keep their given order, after the others)."""
    return sorted(runs, key=lambda r: (r.step is None, r.step if r.step is not None else 0))


def curves(runs: Sequence[CheckpointRun], kinds: tuple[str, ...] = ("model",)) -> dict[str, dict[str, Any]]:
    """Per criterion item (of the given kinds; self-checks do not depend on the model), in first-seen order:
    ``{"gate": bool, "quantity": str, "points": [Point per checkpoint that has the item]}``."""
    out: dict[str, dict[str, Any]] = {}
    for run in ordered(runs):
        for r in run.report["results"]:
            if r.get("kind", "model") not in kinds:
                continue
            c = r.get("compared") if isinstance(r.get("compared"), dict) else {}
            entry = out.setdefault(_short(r["item_id"]), {"gate": bool(r.get("gate", True)), "quantity": quantity_label(r), "points": []})
            entry["points"].append(Point(run.name, run.step, r["verdict"], c.get("value"), c.get("ci_low"), c.get("ci_high"),
                                         dict(r.get("bounds") or {})))
    return out


HOLDING_BACK = (("failed_gating", "FAIL"), ("errors", "ERROR"), ("failed_self_checks", "self-check FAIL"),
                ("skipped_gating", "SKIP"), ("not_run", "not run"), ("deselected_gating", "not selected"),
                ("collection_errors", "collection error"))


def holding_back(report: dict[str, Any]) -> list[str]:
    """What keeps a report from CLEARED, as ``CRITERION (why)``: failed or errored gating criteria, failed self-checks,
    gating criteria skipped, not run or not selected, collection errors (empty when CLEARED)."""
    d = report["decision"]
    return [f"{_short(i)} ({why})" for key, why in HOLDING_BACK for i in d.get(key, [])]


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def markdown(runs: Sequence[CheckpointRun]) -> str:
    """Two tables: per checkpoint the decision and what holds it back (and the advisory model criteria that failed;
    failed advisory self-checks do not depend on the checkpoint and are in each report); per model criterion the
    compared quantity [95 % CI] and verdict on each checkpoint."""
    runs = ordered(runs)
    lines = ["| checkpoint | step | decision | holding it back | advisory FAIL |", "|---|---:|---|---|---|"]
    for run in runs:
        model_items = {r["item_id"] for r in run.report["results"] if r.get("kind", "model") == "model"}
        advisory = ", ".join(_short(i) for i in run.report["decision"].get("advisory_failed", []) if i in model_items)
        lines.append(f"| {run.name} | {'–' if run.step is None else run.step} | {run.status} | "
                     f"{', '.join(holding_back(run.report)) or '–'} | {advisory or '–'} |")
    lines += ["", "| criterion | gate | quantity | bounds | " + " | ".join(r.name for r in runs) + " |",
              "|---|---|---|---|" + "---|" * len(runs)]
    for cid, entry in curves(runs).items():
        by_run = {p.checkpoint: p for p in entry["points"]}
        bounds = next((p.bounds for p in entry["points"] if p.bounds), {})
        rule = " ".join(f"{k} {v:.4g}" for k, v in bounds.items() if v is not None) or "–"
        cells = []
        for run in runs:
            p = by_run.get(run.name)
            cells.append("–" if p is None else (f"{_fmt(p.value)} [{_fmt(p.ci_low)}, {_fmt(p.ci_high)}] {p.verdict}"
                                                if p.value is not None else p.verdict))
        lines.append(f"| {cid} | {'gate' if entry['gate'] else 'advisory'} | {entry['quantity']} | {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def track_figure(runs: Sequence[CheckpointRun]) -> Any | None:
    """One panel per model criterion: the compared quantity with its 95 % CI against the training step (checkpoint
    index when a name has no step), the bounds as red dashed lines, each point coloured by its verdict (advisory
    FAIL in amber, as in the report). None when there is nothing to draw."""
    runs = ordered(runs)
    data = curves(runs)
    if not data:
        return None
    xs = {r.name: (r.step if r.step is not None else i) for i, r in enumerate(runs)}
    ncol = min(3, len(data))
    nrow = -(-len(data) // ncol)
    fig = new_figure(4.2 * ncol, 2.6 * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, (cid, entry) in zip(axes, data.items()):
        pts = [p for p in entry["points"] if p.value is not None]
        ax.set_title(f"{cid} ({'gate' if entry['gate'] else 'advisory'})", fontsize=FONT + 1, fontweight="bold")
        ax.set_ylabel(entry["quantity"], fontsize=FONT)
        ax.tick_params(labelsize=FONT - 1)
        if pts:
            ax.plot([xs[p.checkpoint] for p in pts], [p.value for p in pts], "-", color="#8c959f", lw=1, zorder=1)
        for p in pts:
            colour = ADVISORY_FAIL if p.verdict == "FAIL" and not entry["gate"] else VERDICT_COLOURS.get(p.verdict, "#6e7781")
            lo = p.value - p.ci_low if p.ci_low is not None else 0.0
            hi = p.ci_high - p.value if p.ci_high is not None else 0.0
            ax.errorbar([xs[p.checkpoint]], [p.value], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="o", color=colour, ms=5,
                        capsize=3, lw=1.4, zorder=3)
        bounds = next((p.bounds for p in entry["points"] if p.bounds), {})
        for b in bounds.values():
            if b is not None:
                ax.axhline(b, color="#cf222e", ls="--", lw=1.1, zorder=2)
        ax.set_xticks(sorted(set(xs.values())))
        ax.set_xlabel("training step", fontsize=FONT)
    for ax in axes[len(data):]:
        ax.set_visible(False)
    status = "   ".join(f"{r.step if r.step is not None else r.name}: {r.status}" for r in runs)
    fig.suptitle(f"release decision by training step —  {status}", fontsize=FONT + 1)
    fig.tight_layout()
    return fig


def run_checkpoint(checkpoint: Path, *, suite: Sequence[str], model: str, out: Path, env_var: str = CHECKPOINT_ENV,
                   pytest_args: Sequence[str] = (), python: str = sys.executable) -> int:
    """One gate run of ``suite`` on ``model`` with ``env_var`` = the checkpoint's path, report in ``out``; the pytest exit
    code (0 CLEARED, 1 NOT CLEARED, other INCOMPLETE or usage error). A SIGINT or SIGTERM that stops this process is
    passed on to the gate run, which writes its INCOMPLETE report and stops; then it is raised again (:func:`run_child`)."""
    env = dict(os.environ, **{env_var: str(Path(checkpoint).resolve())})
    cmd = [python, "-m", "pytest", *suite, "--mriq-model", model, "--mriq-report", str(out), "-q", "-p", "no:cacheprovider",
           *pytest_args]
    return run_child(cmd, env=env)


def run_record(checkpoint: Path, *, suite: Sequence[str], model: str, env_var: str = CHECKPOINT_ENV,
               pytest_args: Sequence[str] = ()) -> dict[str, Any]:
    """What one checkpoint's gate run depends on besides the cache (whose entries are content-keyed and checked on
    read): the checkpoint's SHA-256, each suite file's SHA-256 (a folder: its ``*.yaml`` files), the model spec with
    its file's SHA-256 when it names a ``.py`` or TorchScript file, the environment variable, the extra pytest arguments and the
    versions of the packages that change the numbers (:func:`~mriq_validate.report.package_versions`). Code that the
    model file imports, and a data folder named in ``pytest_args``, are not hashed: after changing them, leave
    ``reuse`` off."""
    def sha(path: Path) -> str:
        return file_sha256(path)[0]

    suites = {}
    for s in suite:
        p = Path(s)
        files = sorted(p.rglob("*.yaml")) if p.is_dir() else [p]
        suites.update({str(f): sha(f) if f.is_file() else None for f in files})
    return {"checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": sha(Path(checkpoint)), "suites": suites,
            "model": model, "model_file_sha256": parse_model_spec(model).sha256(),
            "env_var": env_var, "pytest_args": list(pytest_args), "packages": package_versions()}


def _not_reusable(folder: Path, record: dict[str, Any]) -> str | None:
    """Why ``folder`` does not hold a finished, verified report of a run with exactly ``record``'s inputs (None when it
    does)."""
    try:
        if json.loads((folder / RUN_RECORD).read_text(encoding="utf-8")) != record:
            return "its inputs changed"
        read_finished_report(folder)
    except FileNotFoundError:
        return "no earlier run"
    except UnusableReport as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"{folder / RUN_RECORD} cannot be read ({exc})"
    return None


def track(checkpoints: Sequence[Path], *, suite: Sequence[str], model: str, out: Path, env_var: str = CHECKPOINT_ENV,
          pytest_args: Sequence[str] = (), progress: Callable[[str], None] = lambda msg: None,
          reuse: bool = False) -> list[CheckpointRun]:
    """Gate every checkpoint (reports in ``out/<stem>/``), then write ``out/readiness.md`` and ``out/readiness.png``;
    the runs in training order. With ``reuse``, a checkpoint whose folder holds a finished report of a run on the same
    inputs (:func:`run_record`) is read, not run again. MissingFileError for a checkpoint that is not a file,
    TrackError for a run without a usable report; two checkpoints with the same stem are refused (their reports would
    share a folder)."""
    paths = [Path(c) for c in checkpoints]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"checkpoint file(s) not found: {', '.join(missing)}")
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise MriqError(f"checkpoints with the same name {dupes}: each gets the report folder OUT/<name>/; rename them")
    runs = []
    for i, p in enumerate(paths, 1):
        folder = Path(out) / p.stem
        record = run_record(p, suite=suite, model=model, env_var=env_var, pytest_args=pytest_args)
        why = _not_reusable(folder, record) if reuse else None
        if reuse and why is None:
            progress(f"checkpoint {i}/{len(paths)}: {p} (reused: {folder} holds the report of a run on the same inputs)")
            runs.append(read_run(p.stem, folder))
            continue
        progress(f"checkpoint {i}/{len(paths)}: {p}" + (f" (not reused: {why})" if why else ""))
        for stale in (RUN_RECORD, REPORT_FILE):  # the record describes the report beside it, never an older one
            (folder / stale).unlink(missing_ok=True)
        run_checkpoint(p, suite=suite, model=model, out=folder, env_var=env_var, pytest_args=pytest_args)
        runs.append(read_run(p.stem, folder))  # TrackError when the run left no finished report (and then no record)
        (folder / RUN_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    write_outputs(runs, Path(out))
    return ordered(runs)


def write_outputs(runs: Sequence[CheckpointRun], out: Path) -> dict[str, Path]:
    """``out/readiness.md`` (the tables) and ``out/readiness.png`` (the curves, when there is a model criterion)."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"table": out / TABLE_FILE}
    written["table"].write_text(markdown(runs), encoding="utf-8")
    fig = track_figure(runs)
    if fig is not None:
        written["figure"] = out / FIGURE_FILE
        written["figure"].write_bytes(png_bytes(fig))
    return written
