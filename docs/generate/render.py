"""Render each ``docs/generated/*.json`` to its markdown block, and fill the blocks in README.md and docs/*.md.

A generated block sits between two markers, ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``. NAME is
``SOURCE`` or ``SOURCE.VIEW``: the JSON it is rendered from (``docs/generated/SOURCE.json``; ``zoo`` is
``docs/zoo.json``, written by ``make zoo``) and which rendering of it (:data:`VIEWS`). Text between markers is never
edited by hand: ``make docs`` (and ``make docs-long``, ``make zoo``) rewrite it, and ``tests/test_docs_generated.py``
fails when it differs from the rendering of its JSON.

    python docs/generate/render.py            # refill every block from the JSON files as they are
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "generated"
MARKER = re.compile(r"<!-- (/?)generated:([A-Za-z0-9_.-]+) -->")


class BlockError(ValueError):
    """A document's markers are malformed (unclosed, nested, repeated) or name an unknown block."""


# ------------------------------------------------------------------------------------------------ markers

def markers(name: str) -> tuple[str, str]:
    """The opening and closing marker of block ``name``."""
    return f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"


def spans(text: str) -> dict[str, tuple[int, int]]:
    """Every block of ``text``: NAME → (start, end) of its content. BlockError when a marker is opened and not closed
    (or closed without being opened), blocks nest, or one NAME appears twice in one document."""
    out: dict[str, tuple[int, int]] = {}
    open_name, open_end = None, 0
    for m in MARKER.finditer(text):
        closing, name = m.group(1) == "/", m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if not closing:
            if open_name is not None:
                raise BlockError(f"line {line}: block {name!r} opens inside block {open_name!r}")
            if name in out:
                raise BlockError(f"line {line}: block {name!r} appears twice")
            open_name, open_end = name, m.end()
        else:
            if open_name != name:
                raise BlockError(f"line {line}: block {name!r} is closed but " +
                                 (f"{open_name!r} is open" if open_name else "was not opened"))
            out[name] = (open_end, m.start())
            open_name = None
    if open_name is not None:
        raise BlockError(f"block {open_name!r} is opened and never closed")
    return out


def block(text: str, name: str) -> str:
    """The content of block ``name`` in ``text`` (without the newlines next to its markers)."""
    found = spans(text)
    if name not in found:
        raise BlockError(f"no block {name!r}")
    start, end = found[name]
    return text[start:end].strip("\n") + "\n"


def with_block(text: str, name: str, content: str) -> str:
    """``text`` with the content of block ``name`` replaced by ``content``."""
    start, end = spans(text)[name]
    return text[:start] + "\n" + content.rstrip("\n") + "\n" + text[end:]


# ------------------------------------------------------------------------------------------------ sources

def source_path(source: str) -> Path:
    """The JSON a block's SOURCE names."""
    return ROOT / "docs" / "zoo.json" if source == "zoo" else GENERATED / f"{source}.json"


def load(source: str) -> dict[str, Any]:
    path = source_path(source)
    if not path.is_file():
        how = "make zoo" if source == "zoo" else f"python docs/generate/{source}.py"
        raise BlockError(f"{path.relative_to(ROOT)} does not exist: run {how}")
    return json.loads(path.read_text(encoding="utf-8"))


def documents() -> list[Path]:
    """The documents whose blocks are generated: README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# ------------------------------------------------------------------------------------------------ helpers

def minutes(seconds: float) -> str:
    """``7 min 8 s``, ``47 s``, ``1 h 51 min``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def machine_words(m: dict[str, Any]) -> str:
    """``2 CPU cores, Intel(R) Xeon(R) Processor, x86_64, no GPU``."""
    dev = "no GPU" if m.get("device", "cpu") == "cpu" else m["device"]
    cpu = f"{m.get('arch')}, CPU model not recorded" if m.get("cpu") in (None, "not recorded") else f"{m['cpu']}, {m.get('arch')}"
    return f"{m.get('cores')} CPU cores, {cpu}, {dev}"


def measured(d: dict[str, Any]) -> str:
    """The provenance sentence of a dated block."""
    note = f" {d['conditions']}" if d.get("conditions") else ""
    load = d["machine"].get("load_average_at_start")
    shared = f" (load average {load[0]:g} at the start: other jobs shared the machine)" if load and load[0] > 1.5 else ""
    c = str(d["commit"])
    m = re.fullmatch(r"([0-9a-f]{40})(\+dirty)?", c)
    commit = (m[1][:10] + (" with uncommitted changes" if m[2] else "")) if m else c
    return f"Measured {d['date']} on {machine_words(d['machine'])}{shared}, commit {commit}:{note} `{d['command']}`."


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# ------------------------------------------------------------------------------------------------ views

def eraser_output(d: dict[str, Any]) -> str:
    """DICE-WT's message as the run prints it, its first line wrapped at 120 columns and the requirement, hazard and
    rationale that follow cut to one line each."""
    first, *rest = d["dice_wt_message"].splitlines()
    lines = textwrap.wrap(first, 120)
    lines += [r if len(r) <= 120 else r[:r.rfind(" ", 0, 114)] + " ..." for r in rest]
    return "```\n" + "\n".join(lines) + "\n```"


def eraser_summary(d: dict[str, Any]) -> str:
    """The run's decision, exit status and what PIQE said about the same images, contrast by contrast."""
    per = d["piqe"]["per_contrast"]
    better = [c for c, v in per.items() if v["model"] < v["real"]]
    values = ", ".join(f"{c} {v['model']:.2f} vs {v['real']:.2f}" + (" (FAIL)" if v["verdict"] == "FAIL" else "")
                       for c, v in per.items())
    return (f"The run ends with `release decision: {d['decision']}` (exit status {d['exit_status']}; gating criteria "
            f"failed: {', '.join(d['failed_gating'])}) and writes `report.json` and `report.html` to the "
            f"`--mriq-report` folder. PIQE (lower is better; advisory) on the same images against real ones: {values}"
            + (f". On {' and '.join(better)} it scores the erased tumours *better* than real: the paper's warning, live."
               if better else "."))


def downstream_table(d: dict[str, Any]) -> str:
    """The table as the command printed it, and what it shows about PIQE against Dice."""
    better = [r["model"] for r in d["rows"] if r["model"] != "real" and r["piqe_delta"] < 0]
    def flagged(flag: str) -> str:
        return ", ".join(r["model"] for r in d["rows"] if flag in r["flags"]) or "none"
    return (d["markdown"].strip("\n") + f"\n\nPIQE scores {', '.join(f'`{m}`' for m in better) or 'no stand-in'} *better* "
            f"than real images (ΔPIQE < 0). Flagged by Dice A: {flagged('Dice A')}; by train-on-synthetic (TSTR): "
            f"{flagged('TSTR')}; by PIQE: {flagged('PIQE')}.")


def study_results(d: dict[str, Any]) -> str:
    """The generated part of docs/study.md as ``mriq-validate study`` wrote it (figures next to the page)."""
    return d["markdown"].replace("](figures/", "](./").strip("\n") + f"\n\n{measured(d)}"


def study_summary(d: dict[str, Any]) -> str:
    """One paragraph: grid size, which measures are aligned with Dice, Dice's ranking of the stand-ins."""
    rows = sorted(d["correlation"], key=lambda r: r["spearman"])
    aligned = [f"{r['measure']} {r['spearman']:+.2f}" for r in rows if r["label"] == "aligned with Dice"]
    other = [f"{r['measure']} {r['spearman']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" for r in rows
             if r["label"] != "aligned with Dice"]
    rk = d["ranking"]
    variant = f", {d['variant']}" if d.get("variant") else ""
    return (f"On `{d['data']}`{variant} ({d['n_measures']} measures × {d['n_conditions']} conditions, seed {d['seed']}, "
            f"{minutes(d['runtime_s'])}), Spearman correlation with Dice across the conditions, each measure signed so "
            f"that higher = worse. Aligned with Dice (CI below 0): {', '.join(aligned) or 'none'}. Advisory only: "
            f"{', '.join(other) or 'none'}. Ranking the stand-ins against their true quality, Dice scores "
            f"{rk['dice']:.3f}, the median no-reference/distribution/diversity measure {rk['median_other']:.3f}. "
            f"{measured(d)}")


def seed_floor(d: dict[str, Any]) -> str:
    """The false-alarm rates of the training-noise bound, measured on faithful models."""
    r = {(row["k"], row["rule"]): row for row in d["rows"]}
    k = d["k_shipped"]
    wide, plain = r[(k, "shipped (widened)")], r[(k, "earlier (c·s)")]
    means = d["seed_means"]
    rank = sorted(means, reverse=True).index(means[0]) + 1
    nth = {1: "best", 2: "second-best", 3: "third-best"}.get(rank, f"{rank}th-best")
    return (f"`benchmarks/seed_floor.py` (in a source checkout) measures the rate on faithful models ({len(means)} TRTR "
            f"seeds, each in turn baseline and \"faithful model\", floor from k = {k} seeds, bound {d['c']:g} seed SDs): "
            f"{pct(wide['every_rate'])} of {wide['every_n']} cases fail the widened bound (analytic "
            f"{pct(wide['analytic'])}), {pct(plain['every_rate'])} the unwidened one (analytic {pct(plain['analytic'])}); "
            f"against the shipped suite's baseline seed (seed 0, the {nth} of {len(means)}) "
            f"{pct(wide['baseline0_rate'])} of {wide['baseline0_n']}. TRTR whole-tumour Dice {sum(means) / len(means):.3f} on "
            f"average, seed-to-seed SD {d['sd']:.4f}. The cases share seeds, so they are not independent: the measured "
            f"rates check the order of magnitude of the analytic ones. {measured(d)}")


def timings_install(d: dict[str, Any]) -> str:
    """Install, test and demo wall times from a fresh clone."""
    v, parts = d["values"], []
    if "ci_run_s" in v:
        parts.append(f"`.ci/run` (install, `make test` with an empty cache, then `make test-heavy`) took "
                     f"{minutes(v['ci_run_s'])}.")
    if "venv_s" in v:
        parts.append(f"`make venv` took {minutes(v['venv_s'])} (pip's download cache warm); the venv is "
                     f"{v['venv_gb']:.1f} GB.")
    if "test_s" in v:
        parts.append(f"`make test` (empty cache) took {minutes(v['test_s'])}: {v['test_count']} tests on 2 pytest-xdist "
                     f"workers; the segmenter trains on one thread, so two workers use both cores.")
    if "test_heavy_s" in v:
        parts.append(f"`make test-heavy` took {minutes(v['test_heavy_s'])} ({v['test_heavy_count']} tests: {d['heavy_tests']}).")
    if "demo_cold_s" in v:
        parts.append(f"`make demo` (the three shipped suites, the 3D one included) took {minutes(v['demo_cold_s'])} with "
                     f"an empty cache ({v['demo_decision']}, {v['demo_items']} criterion items) and "
                     f"{minutes(v['demo_warm_s'])} warm.")
    return " ".join(parts) + f" {measured(d)}"


def timings_demo(d: dict[str, Any]) -> str:
    """One line for the first screen: how long ``make demo`` takes."""
    v = d["values"]
    return (f"`make demo` takes {minutes(v['demo_cold_s'])} from a fresh clone with an empty cache and "
            f"{minutes(v['demo_warm_s'])} warm ({d['date']}; {machine_words(d['machine'])}).")


def volumes_cohort(d: dict[str, Any]) -> str:
    c = d["cohort"]
    return (f"`builtin:mni-tumour-3d` has {c['n_train']} train / {c['n_test']} test volumes of "
            f"{'×'.join(map(str, c['shape']))} ({', '.join(c['contrasts'])}) at {c['spacing_mm']:g} mm, a CPU size; it is "
            f"built in {minutes(d['build_s'])} from an empty cache and takes {d['cache_mb']:.0f} MB of it. {measured(d)}")


def vessels_run(d: dict[str, Any]) -> str:
    adv = f"; advisory FAILs: {', '.join(d['advisory_failed'])}" if d["advisory_failed"] else ""
    return (f"`pytest suites/vessels.yaml --mriq-model builtin:real` runs {d['items']} items ({d['gating_items']} gating), "
            f"release decision {d['decision']}, exit status {d['exit_status']}{adv} ({d['date']}).")


def zoo(d: dict[str, Any]) -> str:
    """docs/zoo.md's tables, as ``examples/zoo/run_zoo.py`` renders them (a source checkout's ``make zoo``)."""
    spec = importlib.util.spec_from_file_location("mriq_zoo_run", ROOT / "examples" / "zoo" / "run_zoo.py")
    run_zoo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run_zoo
    sys.path.insert(0, str(ROOT / "examples" / "zoo"))
    try:
        spec.loader.exec_module(run_zoo)
    finally:
        sys.path.remove(str(ROOT / "examples" / "zoo"))
    return run_zoo.render_block("docs/zoo.md", d)


def detectability(d: dict[str, Any]) -> str:
    """The classifier two-sample test next to FID on the builtin stand-ins, its real-vs-real noise and its self-check."""
    def ci(e: dict[str, float], fmt: str) -> str:
        return f"{e['value']:{fmt}} [{e['ci_low']:{fmt}}, {e['ci_high']:{fmt}}]"
    rows = d["rows"]
    table = ["| stand-in | behaviour | C2ST AUC [95% CI] | DET-C2ST | FID [95% CI] | ΔFID vs real | DIST-FID |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['behaviour']} | {ci(r['auc'], '.3f')} | {r['auc_verdict']} | {ci(r['fid'], '.4g')} | "
              f"{r['fid_difference']['value']:+.4g} | {r['fid_verdict']} |" for r in rows]
    n, s, rule = d["null"], d["sensitivity"], d["null"]["band_rule"]
    cls = d["metric"]["classifier"]
    delong = max(max(abs(r["auc"]["delong_low"] - r["auc"]["ci_low"]), abs(r["auc"]["delong_high"] - r["auc"]["ci_high"])) for r in rows)
    flagged = lambda key: ", ".join(r["model"] for r in rows if r[key] == "FAIL") or "none"  # noqa: E731
    head = (f"On `{d['data']}` (seed {d['seed']}), each stand-in's images for the {n['n_evaluated']} real test masks against the "
            f"{n['n_reference']} real training slices; classifier {cls['channels']} channels, {cls['input']}, {cls['epochs']} epochs, "
            f"{d['metric']['split'].split(':')[0]}. AUC decided by DET-C2ST (band [{d['band'][0]:g}, {d['band'][1]:g}]), FID by "
            f"DIST-FID (at most 3 bootstrap SEs above the real test images' FID, {rows[0]['fid_real']['value']:.4g}: ΔFID ≤ "
            f"{rows[0]['fid_bound']:.4g}); both advisory.")
    null = (f"Real against real: {len(n['seeds'])} classifier seeds of the real test against the real training images gave AUC "
            f"{n['seeds_summary']['min']:.3f}-{n['seeds_summary']['max']:.3f} (SD {n['seeds_summary']['sd']:.3f}), "
            f"{len(n['resplits'])} random re-splits of the real slices {n['resplits_summary']['min']:.3f}-"
            f"{n['resplits_summary']['max']:.3f} (SD {n['resplits_summary']['sd']:.3f}); all together SD {n['sd_pooled']:.3f}, "
            f"against {n['sd_expected']:.3f} for the scored images' sampling alone (the rest is the classifier's training noise, "
            f"which the CI leaves out: DeLong's CI covered 0.5 in {pct(n['seeds_summary']['delong_covers_half'])} and "
            f"{pct(n['resplits_summary']['delong_covers_half'])} of them). Band 0.5 ± ({rule['sds']} SD + tolerance "
            f"{rule['tolerance']:g}) = [{rule['band'][0]:g}, {rule['band'][1]:g}]. The CIs above are the gate's percentile "
            f"bootstrap; DeLong's differ from them by at most {delong:.3f}.")
    sens = (f"Self-check SENS-C2ST-ERASE (tumours erased from the real test images): AUC {s['clean']['value']:.3f} clean, "
            f"{s['perturbed']['value']:.3f} erased, a rise of {ci(s['rise'], '.3f')} (at least {s['bound']:g} asked): "
            f"{s['verdict']}. The two criteria add {minutes(d['suite_cold_s'])} to a cold run of the suite against "
            f"builtin:real (two classifier trainings; a warm run reads them from the results cache).")
    return "\n".join(table) + (f"\n\n{head}\n\nFlagged by DET-C2ST: {flagged('auc_verdict')}; by DIST-FID: {flagged('fid_verdict')}."
                              f"\n\n{null}\n\n{sens} {measured(d)}")


VIEWS: dict[str, Callable[[dict[str, Any]], str]] = {
    "eraser": lambda d: eraser_output(d) + "\n\n" + eraser_summary(d),
    "downstream_table": downstream_table,
    "study": study_results, "study.summary": study_summary,
    "seed_floor": seed_floor,
    "timings": timings_install, "timings.demo": timings_demo,
    "volumes": volumes_cohort,
    "vessels": vessels_run,
    "detectability": detectability,
    "zoo": zoo,
}
LONG = ("study", "seed_floor", "timings", "zoo")  # sources too long for make docs: their blocks say their date


def render(name: str) -> str:
    """The content block ``name`` must have, rendered from its JSON."""
    if name not in VIEWS:
        raise BlockError(f"unknown generated block {name!r}; known: {sorted(VIEWS)}")
    return VIEWS[name](load(name.split(".")[0])).rstrip("\n") + "\n"


def fill(path: Path, sources: set[str] | None = None) -> bool:
    """Refill the blocks of ``path`` (those of ``sources`` only, when given); True when the file changed."""
    text = path.read_text(encoding="utf-8")
    new = text
    for name in spans(text):
        if sources is None or name.split(".")[0] in sources:
            new = with_block(new, name, render(name))
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def fill_all(sources: set[str] | None = None) -> list[Path]:
    """Refill every document; the ones that changed."""
    return [p for p in documents() if fill(p, sources)]


if __name__ == "__main__":
    for changed in fill_all(set(sys.argv[1:]) or None):
        print(f"filled {changed.relative_to(ROOT)}")
