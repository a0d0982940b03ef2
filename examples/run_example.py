"""``make example``: train the example generator and gate its checkpoints while it trains (docs/example.md).

Two cores, two jobs. The generator trains on one torch thread (``examples/train_generator.py``). Meanwhile the other
core first runs the suite against ``builtin:real``: what the gate needs from the real data alone (the real-data
segmenters and noise-floor seeds, reference features, the NIQE model) is computed once into the cache, so no
checkpoint pays for it. Then it gates each checkpoint as soon as training writes it, with the command a team would run
after each new checkpoint during development::

    mriq-validate track <checkpoints so far> --suite suites/brain_tumour.yaml --model examples/model.py:build --reuse

``--reuse`` reads back the reports of checkpoints already gated on the same inputs, so each call gates only the new
checkpoint. The last checkpoint is gated when training ends, and that last call draws readiness over all of them.

    python examples/run_example.py [--steps 50 400 1200] [--out mriq-track] [--checkpoints examples/checkpoints]
    python examples/run_example.py --reduced --steps 30 300 -k "DICE-WT and not LESIONWISE and not BY"   # the CI form

The real-data side writes its report to ``OUT/real-data/`` (its output in ``OUT/real-data.log``); it must clear
(with ``-k``: no gating criterion it ran may FAIL, none may ERROR), else nothing is gated.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from train_generator import DEFAULT_CHECKPOINT, PRESETS  # noqa: E402

from mriq_validate.integrity import UnusableReport, read_finished_report  # noqa: E402

SUITE = "suites/brain_tumour.yaml"


def track(checkpoints: list[Path], out: Path, k: list[str]) -> int:
    """``mriq-validate track --reuse`` on ``checkpoints``; its exit code."""
    cmd = [sys.executable, "-m", "mriq_validate.cli", "track", *map(str, checkpoints), "--suite", SUITE,
           "--model", "examples/model.py:build", "--out", str(out), "--reuse", *k]
    return subprocess.run(cmd, cwd=ROOT).returncode


def real_data_side(out: Path, k: list[str]) -> str | None:
    """Run the suite against ``builtin:real`` into the shared cache; None when it cleared (with ``-k``: when no
    gating criterion it ran failed and none errored), else what went wrong."""
    folder, log = out / "real-data", out / "real-data.log"
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE, "--mriq-model", "builtin:real",
                        "--mriq-report", str(folder), *k], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    try:
        report = read_finished_report(folder)  # schema-checked, and not the placeholder of a run that stopped
    except UnusableReport as exc:
        return f"{exc.path} {exc.reason}; see {log}"
    bad = [f"{r['criterion_id']} {r['verdict']}" for r in report["results"]
           if r["verdict"] == "ERROR" or (r["verdict"] == "FAIL" and r["gate"])]  # advisory FAILs are findings, not faults
    status = report["decision"]["status"]
    if bad or (status != "CLEARED" and not k):
        return f"the gate on builtin:real is {status} ({', '.join(bad) or 'see the report'}): see {log}"
    return None


def wait_for(path: Path, trainer: subprocess.Popen) -> bool:
    """Wait until ``path`` exists (True) or training has ended without writing it (False)."""
    while not path.exists():
        if trainer.poll() is not None:
            return path.exists()
        time.sleep(2)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", nargs="+", type=int, default=[50, 400, 1200], help="checkpoints to gate, by training step")
    ap.add_argument("--out", default="mriq-track", help="the track folder (reports, readiness.md and readiness.png)")
    ap.add_argument("--checkpoints", default=str(DEFAULT_CHECKPOINT.parent), help="the checkpoint folder (its checkpoints are replaced)")
    ap.add_argument("--reduced", action="store_true", help="train the reduced generator (the CI form)")
    ap.add_argument("-k", default=None, help="pytest -k expression selecting criteria (then every decision is INCOMPLETE)")
    args = ap.parse_args(argv)
    budgets = PRESETS["reduced" if args.reduced else "full"]["budgets"]
    if any(s not in budgets for s in args.steps):
        ap.error(f"--steps {args.steps}: the training writes checkpoints at steps {budgets} only")
    k = ["-k", args.k] if args.k else []
    folder = Path(args.checkpoints).resolve()
    wanted = [folder / f"generator-step{s:05d}.pt" for s in sorted(args.steps)]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MRIQ_TORCH_THREADS=os.environ.get("MRIQ_TORCH_THREADS", "1"))
    for old in [*folder.glob("generator-step*.pt"), folder / "final.pt"]:
        old.unlink(missing_ok=True)  # an earlier training's checkpoint must not be gated as this one's
    start = time.perf_counter()
    trainer = subprocess.Popen([sys.executable, str(ROOT / "examples" / "train_generator.py"), "--out", str(folder),
                                *(["--reduced"] if args.reduced else [])], cwd=ROOT, env=env)
    try:
        problem = real_data_side(out, k)
        if problem:
            print(f"run_example: {problem}", file=sys.stderr)
            return 1
        print(f"run_example: the gate's real-data side is cached ({time.perf_counter() - start:.0f} s)", flush=True)
        for i, path in enumerate(wanted[:-1]):
            if not wait_for(path, trainer):
                break
            print(f"run_example: gating {path.name} while training goes on ({time.perf_counter() - start:.0f} s)", flush=True)
            if track(wanted[:i + 1], out, k) != 0:
                return 1
        if trainer.wait() != 0:
            print(f"run_example: training failed (exit {trainer.returncode})", file=sys.stderr)
            return 1
        missing = [p.name for p in wanted if not p.exists()]
        if missing:
            print(f"run_example: training ended without writing {', '.join(missing)}", file=sys.stderr)
            return 1
        code = track(wanted, out, k)
        print(f"run_example: {time.perf_counter() - start:.0f} s in all", flush=True)
        return code
    finally:
        if trainer.poll() is None:
            trainer.terminate()
            trainer.wait()


if __name__ == "__main__":
    sys.exit(main())
