"""One GPU check of the gate on one CUDA device, in about 8 minutes: one table (and ``--json FILE``).

Parts, each reusing the benchmark that measures it:

- ``throughput``: images/s of the gate's segmenter training (:func:`mriq_validate.segmenter.train_segmenter`) against
  a bare MONAI loop of the same network, batch and precision, and their ratio (target >= 0.5);
  :func:`gpu_throughput.training`.
- ``bf16``: whole-tumour, tumour-core and enhancing-tumour Dice of the default segmenter trained at fp32 and at bf16
  on the embedded data, and the difference; :func:`bf16_dice.compare`.
- ``plugin``: the gate end to end through pytest (``--mriq-device cuda``, ``builtin:tumour-eraser``, DICE-WT only,
  so the decision is INCOMPLETE), whose DICE-WT must fail.
- ``suite``: ``mriq_validate/suites/brain_tumour.yaml`` over a cohort of 10,000 slices of 4×192×192 (the embedded
  template cohort enlarged and resampled; ``builtin:noisy`` generates for its 6,667 training and 3,333 test masks,
  10,000 generated slices), wall time per stage: data (build into a cold cache, warm load), generation, segmenter
  training, and each criterion evaluated as the gate does (:func:`scale.child`). Every segmenter trains for
  ``--epochs`` (default 2: 834 optimiser steps at the default batch 16 on 6,667 slices, more than the default
  budget's 640 on the embedded 256); a criterion not started within ``--budget-s`` (420 s) of the start is
  recorded as skipped, so that the check ends within 8 minutes.
- peak GPU memory (``torch.cuda.max_memory_allocated``) of each part and suite stage (the plugin runs in a child
  process and is not tracked).

Without CUDA it refuses (exit 2) unless ``--smoke`` is given: then the same parts run with tiny sizes on the CPU
(about a minute; peak memory is then the process's peak RSS), so that the script can be tested anywhere.

    .venv/bin/python benchmarks/gpu_check.py --json gpu_check.json          # on a CUDA machine
    MRIQ_TORCH_THREADS=1 .venv/bin/python benchmarks/gpu_check.py --smoke --json smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bf16_dice  # noqa: E402
import gpu_throughput  # noqa: E402
import scale  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "mriq_validate" / "suites" / "brain_tumour.yaml"
#: Sizes of the full check (CUDA) and of the smoke run (CPU).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"throughput": {"size": 192, "channels": 4, "n": 1024, "batch": [16, 64], "steps": 100, "warmup": 10},
             "bf16": {"seeds": 2, "epochs": None, "size": None},
             "suite": {"slices": 10000, "side": 192, "epochs": 2},
             "plugin": {"k": "DICE-WT and not LESIONWISE", "expect": "DICE-WT"}, "budget_s": 420},
    "smoke": {"throughput": {"size": 32, "channels": 4, "n": 32, "batch": [8], "steps": 3, "warmup": 1},
              "bf16": {"seeds": 1, "epochs": 1, "size": [32, 16]},
              "suite": {"slices": 96, "side": 48, "epochs": 1},
              "plugin": {"k": "INTENSITY-SCALE", "size": [32, 16]}, "budget_s": 900},
}
PARTS = ("throughput", "bf16", "plugin", "suite")  # the suite last: it stops starting criteria at --budget-s


class Peak:
    """Peak memory per named part: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb: dict[str, float] = {}
        self.current: str | None = None
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM; CPU smoke run)"

    def start(self, part: str) -> None:
        """Record the part running so far and start measuring ``part``."""
        self.stop()
        self.current = part
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux)

    def stop(self) -> None:
        """Record the peak of the part running, if any."""
        if self.current is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            mb = scale.status_mb("VmHWM")
        self.mb[self.current] = max(self.mb.get(self.current, 0.0), round(mb, 1))
        self.current = None


def throughput(sizes: dict[str, Any], device: torch.device, folder: Path) -> list[dict[str, Any]]:
    """(mriq, bare MONAI) images/s and their ratio per batch and precision, the set in memory and memory-mapped."""
    args = argparse.Namespace(**sizes, precision=["fp32", "bf16"], source=["memory", "mapped"])
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines; the table is the one output
        return gpu_throughput.training(args, device, folder)


def bf16(sizes: dict[str, Any], device: torch.device, cache: str) -> dict[str, Any]:
    """Mean Dice per region at fp32 and bf16 and the differences, over ``seeds`` training seeds."""
    from mriq_validate.cache import DiskCache
    from mriq_validate.data import load_data
    from mriq_validate.segmenter import SegmenterConfig

    data = load_data("builtin:mni-tumour", DiskCache(cache), **({"size": sizes["size"]} if sizes["size"] else {}))
    base = SegmenterConfig(epochs=sizes["epochs"]).resolve(data.spatial_dims)
    results = bf16_dice.compare(data, base, sizes["seeds"], device, lambda line: print(f"  bf16 {line}", file=sys.stderr, flush=True))
    out: dict[str, Any] = {"seeds": sizes["seeds"], "epochs": base.epochs, "batch_size": base.batch_size,
                           "train_slices": len(data.train), "test_slices": len(data.test)}
    for region in bf16_dice.REGIONS:
        fp32, b16 = bf16_dice.mean(results, "fp32", region), bf16_dice.mean(results, "bf16", region)
        out[region] = {"fp32": fp32, "bf16": b16, "bf16_minus_fp32": b16 - fp32}
    out["train_s"] = {p: bf16_dice.mean(results, p, "train_s") for p in bf16_dice.PRECISIONS}
    return out


def suite(sizes: dict[str, Any], device: torch.device, cache: str, deadline: float, peak: Peak) -> dict[str, Any]:
    """The suite's stages over the enlarged, resampled cohort (:func:`scale.child`), GPU peak per stage."""
    stages = ["build", "load", "generate", "segmenter", "suite"]
    out = scale.child(2, sizes["slices"], stages, cache, int(os.environ.get("MRIQ_TORCH_THREADS", "1")), "auto",
                      device=str(device), side=sizes["side"], suite=SUITE, budget={"epochs": sizes["epochs"]},
                      deadline=deadline, on_stage=lambda stage: peak.start(f"suite/{stage}"))
    peak.stop()
    return out


def plugin(selection: dict[str, Any], device: torch.device, folder: Path) -> dict[str, Any]:
    """The gate end to end through pytest with ``builtin:tumour-eraser`` on the criteria of ``selection["k"]`` (the
    shipped suite; its data ``size`` replaced when ``selection["size"]`` is given): exit status, decision and verdicts
    from report.json, and whether ``selection["expect"]`` (a criterion id) failed, or every selected criterion was
    decided when it is None."""
    suite_file = SUITE
    if selection.get("size"):  # the data block's first line, "  data:", gets a size entry (the text is kept as written)
        text = SUITE.read_text()
        if "\n  data:\n" not in text:
            raise SystemExit(f"{SUITE}: no '  data:' block to give a size to")
        suite_file = folder / "plugin-suite.yaml"
        suite_file.write_text(text.replace("\n  data:\n", f"\n  data:\n    size: {json.dumps(selection['size'])}\n", 1))
    report = folder / "plugin-report"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite_file), "-k", selection["k"],
           "--mriq-model", "builtin:tumour-eraser", "--mriq-device", device.type, f"--mriq-cache={folder / 'cache'}",
           f"--mriq-report={report}", "--rootdir", str(folder)]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rep = json.loads((report / "report.json").read_text()) if (report / "report.json").exists() else {}
    verdicts = {r["criterion_id"]: r.get("verdict") for r in rep.get("results", [])}
    expect = selection.get("expect")
    ok = verdicts.get(expect) == "FAIL" if expect else bool(verdicts) and all(v in ("PASS", "FAIL") for v in verdicts.values())
    if not ok:
        print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", file=sys.stderr)
    return {"selection": selection["k"], "device": device.type, "exit": done.returncode, "s": round(wall, 2),
            "decision": rep.get("decision", {}).get("status", "no report"), "verdicts": verdicts, "as_expected": ok}


def rows(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(part, item, value) rows of the one table."""
    r: list[tuple[str, str, str]] = []
    for t in out.get("throughput", []):
        item = f"train batch {t['batch']} {t['precision']} {t['source']}"
        r.append(("throughput", item, f"mriq {t['mriq_img_s']:.0f} img/s, bare MONAI {t['bare_img_s']:.0f} img/s, "
                                      f"ratio {t['ratio']:.2f} (target >= 0.5)"))
    b = out.get("bf16", {})
    for region in bf16_dice.REGIONS if b else ():
        d = b[region]
        r.append(("bf16", f"Dice {region} ({b['seeds']} seed(s), {b['epochs']} epochs)",
                  f"fp32 {d['fp32']:.4f}, bf16 {d['bf16']:.4f}, bf16-fp32 {d['bf16_minus_fp32']:+.4f}"))
    s = out.get("suite", {"stages": {}})
    what = f"{s.get('n')} slices {s.get('side')}x{s.get('side')}"
    for stage, fig in s["stages"].items():
        extra = f", {fig['items']} generated slices" if "items" in fig else ""
        extra += f", {fig['errors']} criteria not evaluable" if fig.get("errors") else ""
        r.append(("suite", f"{what}: {stage}", f"{fig['s']:.1f} s{extra}"))
    for name, c in s.get("criteria", {}).items():
        r.append(("suite", f"criterion {name}", f"{c['s']:.1f} s, {c['verdict'][:70].replace('|', '/')}"))
    if "plugin" in out:
        p = out["plugin"]
        verdicts = ", ".join(f"{k} {v}" for k, v in p["verdicts"].items()) or "none"
        r.append(("plugin", f"pytest -k '{p['selection']}', builtin:tumour-eraser, {p['device']}",
                  f"{p['decision']} (exit {p['exit']}; {verdicts}) in {p['s']:.1f} s, "
                  f"{'as expected' if p['as_expected'] else 'UNEXPECTED'}"))
    for part, mb in out["peak_memory_mb"].items():
        r.append(("memory", f"peak {part}", f"{mb:.0f} MB ({out['peak_memory_kind']})"))
    r.append(("total", "wall time", f"{out['wall_s']:.0f} s"))
    return r


def table(out: dict[str, Any]) -> str:
    """The one Markdown table."""
    head = f"gpu_check on {out['card']}; torch {out['torch']}, MONAI {out['monai']}; {out['date']}"
    return "\n".join([head, "", "| part | item | value |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows(out))])


def finite(value: Any) -> bool:
    """Whether every number in ``value`` (nested dicts and lists) is finite."""
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no CUDA needed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--slices", type=int, default=None, help="slices of the suite's cohort (default 10000; smoke 96)")
    ap.add_argument("--epochs", type=int, default=None, help="segmenter epochs in the suite part (default 2; smoke 1)")
    ap.add_argument("--budget-s", type=float, default=None, help="no criterion starts later than this after the start")
    ap.add_argument("--cache", type=Path, default=None, help="parent of the run's cache folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(f"gpu_check: needs a CUDA device, and torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees "
              "none (torch.cuda.is_available() is False). Run it on a machine with an NVIDIA GPU and a CUDA build of torch, "
              "or pass --smoke for the CPU smoke run.", file=sys.stderr)
        return 2
    import monai

    sizes = json.loads(json.dumps(SIZES["smoke" if args.smoke else "full"]))
    sizes["suite"].update({k: v for k, v in (("slices", args.slices), ("epochs", args.epochs)) if v is not None})
    budget_s = args.budget_s if args.budget_s is not None else sizes["budget_s"]
    device = torch.device("cpu" if args.smoke else "cuda")
    start = time.perf_counter()
    peak = Peak(device)
    out: dict[str, Any] = {
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, smoke run)",
        "torch": torch.__version__, "monai": monai.__version__, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]), "smoke": args.smoke, "sizes": sizes, "peak_memory_kind": peak.kind}
    steps: dict[str, Callable[[Path], Any]] = {
        "throughput": lambda tmp: throughput(sizes["throughput"], device, tmp),
        "bf16": lambda tmp: bf16(sizes["bf16"], device, str(tmp / "cache")),
        "suite": lambda tmp: suite(sizes["suite"], device, str(tmp / "suite-cache"), start + budget_s, peak),
        "plugin": lambda tmp: plugin(sizes["plugin"], device, tmp),
    }
    with tempfile.TemporaryDirectory(prefix="mriq-gpu-check-", dir=args.cache) as tmp:
        for part in args.parts:
            print(f"gpu_check: {part} ({time.perf_counter() - start:.0f} s in)", file=sys.stderr, flush=True)
            if part in ("throughput", "bf16"):  # the suite's stages are tracked one by one; the plugin runs in a child
                peak.start(part)
            out[part] = steps[part](Path(tmp))
            peak.stop()
    out["peak_memory_mb"] = peak.mb
    out["wall_s"] = round(time.perf_counter() - start, 1)
    text = table(out)
    out["table"] = text
    print(text)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    ok = finite(out) and ("plugin" not in out or out["plugin"]["as_expected"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
