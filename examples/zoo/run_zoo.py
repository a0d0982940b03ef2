"""``make zoo``: train the model zoo, gate every checkpoint with the shipped suite, and study how each measure orders
real generators against downstream Dice (docs/zoo.md).

    python examples/zoo/run_zoo.py                     # the four default families, the full preset (docs/zoo.md: time)
    python examples/zoo/run_zoo.py --families ddpm ldm rflow spade vae   # and the conditional VAE
    python examples/zoo/run_zoo.py --families ddpm spade --preset reduced -k "DICE-WT and not LESIONWISE and not BY"  # the CI form

Jobs run two at a time (``--jobs``), each on one torch thread: the gate's real-data side (the suite against
``builtin:real``, which fills the cache with what every gate shares and must clear), the training of each family whose
checkpoints are not cached (``examples/zoo/train.py``), and, once a family is trained and the real-data side is done,
``mriq-validate track --reuse`` on its checkpoints (``OUT/reports/<family>/<checkpoint>/report.json``). Then
``mriq-validate study --models OUT/reports/*`` writes ``OUT/study/models.{json,md,png}``; ``--docs`` copies them to
``docs/zoo.json``, ``docs/zoo.md`` and ``docs/zoo_models.png``. Progress lines say what runs and how long the rest
should take (from each family's training time per step measured here, then from what has run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from families import FAMILIES  # noqa: E402

SUITE = "suites/brain_tumour.yaml"
DEFAULT_FAMILIES = ("ddpm", "ldm", "rflow", "spade")  # the four architecture families make zoo trains and gates
MODEL = "examples/zoo/model.py:build"
# Seconds per training step on one torch thread of a 2-core x86-64 machine with another job on the other core
# (measured 2026-12-07), for the time estimate only; the latent diffusion's autoencoder steps are counted at the first
# value, its diffusion steps at the second.
SECONDS_PER_STEP = {"ddpm": 1.5, "rflow": 1.4, "ldm": (1.0, 0.35), "spade": 1.4, "vae": 0.5}
DOC_TABLES = {"docs/zoo.md": ("zoo", "agreement", "clearance")}  # what each document's block shows
GATE_SECONDS = {"full": 240, "reduced": 25}  # one checkpoint's gate, warm real-data side, one thread


def training_estimate(family: str, preset: str) -> float:
    """Seconds the training of ``family`` at ``preset`` should take on one thread here."""
    p = FAMILIES[family].presets[preset]
    rate = SECONDS_PER_STEP[family]
    if isinstance(rate, tuple):
        return p.get("ae_steps", 0) * rate[0] + max(p["budgets"]) * rate[1]
    return max(p["budgets"]) * rate


@dataclass
class Job:
    """One subprocess: its name, command, what must finish first, the log file and its estimated seconds."""

    name: str
    cmd: list[str]
    after: list[str]
    log: Path
    estimate: float
    proc: subprocess.Popen | None = None
    started: float = 0.0
    code: int | None = None
    needs_ok: bool = True
    fh: object = field(default=None, repr=False)


def run_jobs(jobs: list[Job], slots: int, env: dict[str, str], say=print) -> dict[str, int]:
    """Run ``jobs`` at most ``slots`` at a time, each once what it is ``after`` has finished with exit 0; their exit codes
    (a job whose prerequisite failed is not run: code -1)."""
    pending, running, done = list(jobs), [], {}
    judged = {j.name for j in jobs if not j.needs_ok}  # exit codes judged by the caller, not as a prerequisite
    start = time.perf_counter()
    while pending or running:
        for job in list(running):
            if job.proc.poll() is not None:
                job.code = job.proc.returncode
                job.fh.close()
                running.remove(job)
                done[job.name] = job.code
                what = "done" if job.code == 0 or job.name in judged else f"FAILED (exit {job.code}), see {job.log}"
                say(f"[zoo] {job.name}: {what} in "
                    f"{time.perf_counter() - job.started:.0f} s")
        for job in list(pending):
            failed = [a for a in job.after if a in done and done[a] != 0 and a not in judged]
            if failed:
                pending.remove(job)
                done[job.name] = -1
                say(f"[zoo] {job.name}: not run, {', '.join(failed)} failed")
            elif len(running) < slots and all(a in done for a in job.after):
                pending.remove(job)
                job.fh = open(job.log, "w")
                job.started = time.perf_counter()
                job.proc = subprocess.Popen(job.cmd, cwd=ROOT, env=env, stdout=job.fh, stderr=subprocess.STDOUT)
                running.append(job)
                left = sum(j.estimate for j in pending) + sum(max(0.0, j.estimate - (time.perf_counter() - j.started)) for j in running)
                say(f"[zoo] {job.name}: started (about {job.estimate / 60:.0f} min); about {left / 60 / slots:.0f} min of work left "
                    f"on {slots} cores ({(time.perf_counter() - start) / 60:.1f} min so far)")
        time.sleep(1)
    return done


def real_side_problem(folder: Path, k: list[str]) -> str | None:
    """None when the suite against ``builtin:real`` cleared (with ``-k``: no gating criterion failed or errored)."""
    from mriq_validate.integrity import UnusableReport, read_finished_report

    try:
        report = read_finished_report(folder)
    except UnusableReport as exc:
        return f"{exc.path} {exc.reason}"
    bad = [f"{r['criterion_id']} {r['verdict']}" for r in report["results"] if r["verdict"] == "ERROR" or (r["verdict"] == "FAIL" and r["gate"])]
    status = report["decision"]["status"]
    if bad or (status != "CLEARED" and not k):
        return f"the gate on builtin:real is {status} ({', '.join(bad) or 'see the report'})"
    return None


def write_docs(study_dir: Path) -> None:
    """docs/zoo.json (the study, with the command, date, machine and commit), docs/zoo_models.png, and the generated
    block ``zoo`` of each document of :data:`DOC_TABLES` (docs/generate/render.py: its markers and rendering)."""
    import platform
    from datetime import date

    import torch

    sys.path.insert(0, str(ROOT / "docs" / "generate"))
    from render import with_block

    study = json.loads((study_dir / "models.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    study["made_by"] = {"command": "make zoo (python examples/zoo/run_zoo.py --docs)", "date": date.today().isoformat(),
                        "commit": commit, "device": "cpu", "torch_threads_per_job": 1,
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    zoo = []
    for fam, cls in FAMILIES.items():
        ckpts = sorted((study_dir.parent / "checkpoints" / fam).glob(f"{fam}-step*.pt"))
        if not ckpts:
            continue
        last = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        params = sum(t.numel() for sd in last["state_dicts"].values() for k, t in sd.items() if "running" not in k and t.dtype.is_floating_point)
        reports = sorted((study_dir.parent / "reports" / fam).glob("*/report.json"))
        gate_seconds = sum(json.loads(r.read_text())["run"].get("duration_s") or 0.0 for r in reports)
        zoo.append({"family": fam, "title": cls.title, "resolution": last["config"]["resolution"], "parameters": params,
                    "budgets": last["config"]["budgets"], "train_seconds": last["train_seconds"], "gate_seconds": round(gate_seconds, 1)})
    study["zoo"] = zoo
    (ROOT / "docs" / "zoo.json").write_text(json.dumps(study, indent=1) + "\n")
    shutil.copyfile(study_dir / "models.png", ROOT / "docs" / "zoo_models.png")
    for doc in DOC_TABLES:
        path = ROOT / doc
        path.write_text(with_block(path.read_text(), "zoo", render_block(doc, study)))


def summary(study: dict) -> str:
    """One paragraph of counts from docs/zoo.json: checkpoints, decisions, the gating criteria that held them back,
    and the measures that order the models as each utility does."""
    models = study["models"]
    families = sorted({m["family"] for m in models})
    status = {s: sum(m["status"] == s for m in models) for s in ("CLEARED", "NOT CLEARED", "INCOMPLETE")}
    held: dict[str, int] = {}
    for m in models:
        for c in m["failed_gating"]:
            held[c] = held.get(c, 0) + 1
    parts = [f"{len(models)} checkpoints of {len(families)} families ({', '.join(families)}) gated: "
             + ", ".join(f"{n} {s}" for s, n in status.items() if n) + "."]
    if held:
        parts.append("Gating criteria that failed: " + ", ".join(f"{c} on {n}" for c, n in sorted(held.items(), key=lambda kv: -kv[1])) + ".")
    for name, uid in study["utilities"].items():
        good = [c["measure"] for c in study["correlations"] if c["utility"] == name and c["label"] == "orders as utility"]
        rev = [c["measure"] for c in study["correlations"] if c["utility"] == name and c["label"] == "reversed"]
        parts.append(f"Against {uid}: {len(good)} measure{'s' if len(good) != 1 else ''} order{'' if len(good) != 1 else 's'} "
                     f"the models as it does ({', '.join(good) or 'none'})"
                     + (f", {len(rev)} reversed ({', '.join(rev)})" if rev else "") + ".")
    return " ".join(parts)


def render_block(doc: str, study: dict) -> str:
    """The generated block of ``doc`` (a key of :data:`DOC_TABLES`) from docs/zoo.json's content."""
    from mriq_validate.study.models import ModelStudy, markdown

    tables = DOC_TABLES[doc]
    text = summary(study) + "\n\n" + markdown(ModelStudy.from_dict(study), tables)
    if "zoo" in tables and study.get("zoo"):
        rows = ["| family | architecture | trained at | parameters | checkpoints (steps) | training (1 thread) | gating its checkpoints |",
                "|---|---|---|---|---|---|---|"]
        rows += [f"| {z['family']} | {z['title']} | {z['resolution']}×{z['resolution']} | {z['parameters'] / 1e6:.2f} M | "
                 f"{', '.join(map(str, z['budgets']))} | {z['train_seconds'] / 60:.1f} min | {z['gate_seconds'] / 60:.1f} min |"
                 for z in study["zoo"]]
        m = study.get("made_by", {})
        rows += ["", f"Generated by `{m.get('command')}` on {m.get('date')} ({m.get('machine')}, {m.get('device')}, one torch "
                     f"thread per job, two jobs at a time; commit {str(m.get('commit'))[:10]}). Times are wall times of jobs "
                     f"that shared the machine."]
        text = "\n".join(rows) + "\n\n" + text
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(DEFAULT_FAMILIES),
                    help=f"default: {' '.join(DEFAULT_FAMILIES)} (add vae, the conditional VAE, for a fifth family)")
    ap.add_argument("--preset", choices=["full", "reduced"], default="full")
    ap.add_argument("--out", default="mriq-zoo", help="folder: checkpoints/, reports/<family>/, study/, logs/")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="jobs at once (default: the cores there are)")
    ap.add_argument("-k", default=None, help="pytest -k expression selecting criteria (the decisions are then INCOMPLETE)")
    ap.add_argument("--utilities", default=None, help="comma-separated utility criteria for the study (default: DICE-TSTR-WT,DICE-WT)")
    ap.add_argument("--docs", action="store_true", help="copy the study's outputs to docs/zoo.json, docs/zoo.md, docs/zoo_models.png")
    ap.add_argument("--study-only", action="store_true", help="train and gate nothing: the study (and --docs) from the reports in OUT/reports")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    for sub in ("checkpoints", "reports", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    k = ["-k", args.k] if args.k else []
    env = dict(os.environ, MRIQ_TORCH_THREADS=os.environ.get("MRIQ_TORCH_THREADS", "1"), PYTHONUNBUFFERED="1")
    env.setdefault("MRIQ_CACHE_DIR", str(ROOT / ".mriq-cache"))  # the cache every pytest run from this checkout uses
    py = sys.executable
    jobs = [Job("real-data side", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE, "--mriq-model", "builtin:real",
                                   "--mriq-report", str(out / "real-data"), *k], [], out / "logs" / "real-data.log",
                GATE_SECONDS[args.preset], needs_ok=False)]
    for fam in args.families:
        budgets = FAMILIES[fam].presets[args.preset]["budgets"]
        ckpts = [str(out / "checkpoints" / fam / f"{fam}-step{b:05d}.pt") for b in budgets]
        jobs.append(Job(f"train {fam}", [py, str(HERE / "train.py"), fam, "--preset", args.preset, "--out", str(out / "checkpoints")],
                        [], out / "logs" / f"train-{fam}.log", training_estimate(fam, args.preset)))
        jobs.append(Job(f"gate {fam}", [py, "-m", "mriq_validate.cli", "track", *ckpts, "--suite", SUITE, "--model", MODEL,
                                        "--out", str(out / "reports" / fam), "--reuse", *k],
                        ["real-data side", f"train {fam}"], out / "logs" / f"gate-{fam}.log", GATE_SECONDS[args.preset] * len(budgets)))
    jobs.sort(key=lambda j: (j.name.startswith("gate"), j.name != "real-data side", -j.estimate))  # longest training first
    total = sum(j.estimate for j in jobs)
    if not args.study_only:
        print(f"[zoo] {len(args.families)} families ({', '.join(args.families)}), preset {args.preset}: about {total / 60:.0f} min "
              f"of work, {total / 60 / max(1, args.jobs):.0f} min on {args.jobs} cores; logs in {out / 'logs'}", flush=True)
    start = time.perf_counter()
    if not args.study_only:
        codes = run_jobs(jobs, max(1, args.jobs), env, say=lambda s: print(s, flush=True))
        problem = real_side_problem(out / "real-data", k)
        if problem:
            print(f"[zoo] the real-data side did not clear: {problem}; see {out / 'logs' / 'real-data.log'}", file=sys.stderr)
            return 1
        failed = [n for n, c in codes.items() if c != 0 and n != "real-data side"]
        if failed:
            print(f"[zoo] failed: {', '.join(failed)} (logs in {out / 'logs'})", file=sys.stderr)
            return 1
    study = [py, "-m", "mriq_validate.cli", "study", "--models", *[str(out / "reports" / f) for f in args.families],
             "--out", str(out / "study"), *(["--utilities", args.utilities] if args.utilities else [])]
    code = subprocess.run(study, cwd=ROOT, env=env).returncode
    if code != 0:
        return code
    if args.docs:
        write_docs(out / "study")
    print(f"[zoo] done in {(time.perf_counter() - start) / 60:.1f} min: {out / 'study' / 'models.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
