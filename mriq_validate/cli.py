"""``mriq-validate``: commands for work that is not a gate (demo, listing what is available, exporting masks, tracking
checkpoints).

Options take the same values as the plugin's (``--device`` as ``--mriq-device``, ``--seed`` as ``--mriq-seed``; see
:mod:`mriq_validate.options`); an error the user can fix (:class:`~mriq_validate.errors.MriqError`) ends the command
with its message and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MissingFileError, MriqError
from .options import parse_device, parse_seed
from .signals import StopSignals, signal_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from .data import ReferenceData


def _shipped_folder() -> Path:
    """The shipped suites' folder, as ``suites`` where the working folder's ``suites`` is that folder (a checkout), so that
    item ids read ``suites/<file>::<id>`` as the README shows them."""
    from .suite import shipped_suites

    here, shipped = Path("suites"), shipped_suites()
    return here if here.is_dir() and here.resolve() == shipped.resolve() else shipped


def _demo(args: argparse.Namespace) -> int:
    import pytest

    suites = Path(args.suites) if args.suites is not None else _shipped_folder()
    if not suites.is_dir():
        raise MissingFileError(f"suites folder {suites} not found; pass --suites DIR (default: the suites shipped in the package)")
    out = Path(args.out)
    start = time.perf_counter()
    code = pytest.main([str(suites), "--mriq-model", args.model, "--mriq-report", str(out), "-p", "no:cacheprovider", "-q",
                         "-W", "ignore::pytest.PytestAssertRewriteWarning", *args.pytest_args])  # this module imported the package first
    print(f"\nmriq-validate demo: model {args.model} on the embedded data, {time.perf_counter() - start:.1f} s; "
          f"results in {out.resolve()}/ (report.html, report.json); pytest exit code {int(code)}")
    return int(code)


def _list(args: argparse.Namespace) -> int:
    from .data import BUILTIN_DATASETS  # the packages register their builtins on import
    from .metrics import METRICS
    from .models import BUILTIN_MODELS
    from .perturb import REGISTRY

    print("builtin models (--mriq-model):")
    for name, b in BUILTIN_MODELS.items():
        print(f"  builtin:{name:<15} {b.behaviour}{'  [fit for release]' if b.fit_for_release else ''}")
    print("builtin data (--mriq-data):")
    for name in BUILTIN_DATASETS:
        print(f"  builtin:{name}")
    print("metrics (metric: in a suite):")
    for name, cls in sorted(METRICS.items()):
        direction = "direction per pyiqa metric" if name == "pyiqa" else f"{'higher' if cls.higher_is_better else 'lower'} is better"
        print(f"  {name:<22} {direction}; {cls.kind}; {cls.summary}")
    from .suite import SHIPPED, load_suite

    print(f"shipped suites (pytest <path> --mriq-model ...; folder {_shipped_folder()}):")
    for name in SHIPPED:
        path = _shipped_folder() / name
        s = load_suite(path)
        print(f"  {path}  {s.name}: {len(s.criteria)} criteria, data {s.data.default}")
    print("perturbations (perturbation: {name: ...}):")
    for name, p in sorted(REGISTRY.items()):
        params = ", ".join(f"{q.name}={q.default} [{q.low}, {q.high}]" for q in p.params)
        print(f"  {name:<22} {p.scope:<6} {params}")
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from .selftest import run_selftest

    return 0 if run_selftest() else 1


def _export_masks(args: argparse.Namespace) -> int:
    from .cache import DiskCache, default_cache_dir
    from .data import load_data
    from .data.contrasts import contrast_name
    from .folder_model import MANIFEST, SPLIT_USES, write_mask_folder
    from .suite import load_suite

    suite = load_suite(Path(args.suite)) if args.suite else None
    spec = args.data or (suite.data.default if suite else "builtin:mni-tumour")
    options = suite.data.options_for(spec) if suite else {}
    if args.contrasts:
        options["contrasts"] = [c.strip() for c in args.contrasts.split(",") if c.strip()]
    data = load_data(spec, DiskCache(args.cache or default_cache_dir()), **options)
    out = Path(args.out)
    splits = {name: (getattr(data, name).ids, getattr(data, name).masks) for name in ("test", "train")}
    volumes = data.spatial_dims == 3
    source = {"data": spec, "data_name": data.name, "data_options": options, "digests": data.digests(),
              **({"suite": str(args.suite)} if args.suite else {})}
    write_mask_folder(out, splits, contrasts=tuple(data.contrasts), image_shape=data.image_shape, labels=dict(data.labels),
                      source=source, name_of=contrast_name, save_volume=_nifti_mask_writer(data) if volumes else None)
    c, *dims = data.image_shape
    size = "×".join(str(n) for n in dims)
    ext = "nii.gz" if volumes else "png"
    images = (f"<stem>.npy (float in [0, 1], {c}×{size}, contrasts in the order {', '.join(data.contrasts)}) or one grey file per "
              f"contrast, {', '.join(f'<stem>_{k}.{ext}' for k in data.contrasts)}" if c > 1 else
              f"<stem>.npy (float in [0, 1], {size}) or <stem>.{ext}")
    mask_ext = "nii.gz" if volumes else "npy"
    print(f"wrote {len(data.test)} test and {len(data.train)} train masks ({size.replace('×', 'x')}, labels {data.labels}, contrasts "
          f"{list(data.contrasts)}) of {spec} to {out}/test/ and {out}/train/ as <stem>_seg.{mask_ext}, and {out}/{MANIFEST} (the "
          f"{'volume' if volumes else 'slice'} id of each stem). For each mask save your model's image beside it as {images}.\n"
          f"  test/: {SPLIT_USES['test']};\n  train/: {SPLIT_USES['train']} (leave it empty if the suite has none).\n"
          f"Then run pytest --mriq-model {out}" + (f" with the same data (--mriq-data {spec})" if args.data else ""))
    return 0


def _nifti_mask_writer(data: ReferenceData) -> Callable[[Path, str, np.ndarray], None]:
    """``save(path, volume id, mask)`` for the volume masks of ``data``: a uint8 NIfTI of the D×H×W mask turned back to
    RAS X×Y×Z with the volume's grid affine (provenance ``affine_dhw``), so it overlays the reference data."""
    from .data.cohort_writer import save_nifti
    from .data.volumes import item_affine, volume_from_display, xyz_affine

    def save(path: Path, item_id: str, mask: np.ndarray) -> None:
        save_nifti(path, volume_from_display(mask), xyz_affine(item_affine(data.provenance, item_id), mask.shape))

    return save


def _downstream_table(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir
    from .downstream_table import TSTR_MODELS, downstream_table

    models = args.models.split(",") if args.models else None
    tstr = args.tstr_models.split(",") if args.tstr_models else list(TSTR_MODELS)
    table = downstream_table(args.data, cache_dir=args.cache or default_cache_dir(), device=args.device, seed=args.seed, suite=args.suite,
                             region=args.region, n_boot=args.n_boot, models=models, tstr_models=tstr,
                             progress=lambda msg: print(f"[mriq] {msg}", file=sys.stderr, flush=True))
    text = table.markdown()
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"mriq-validate downstream-table: written to {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def _study(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir

    if args.models:
        return _study_models(args)
    from .study import StudyConfig, run_study, write_outputs

    cfg = StudyConfig(data=args.data, seed=args.seed, quick=args.quick, cache_dir=str(args.cache or default_cache_dir()), device=args.device,
                      n_boot=args.n_boot)
    res = run_study(cfg, progress=lambda msg: print(f"[mriq] {msg}", file=sys.stderr, flush=True))
    paths = write_outputs(res, Path(args.out))
    print(f"mriq-validate study: {len(res.rows)} (measure, condition) cells in {res.provenance['runtime_s']} s; "
          f"written {', '.join(p.name for p in paths.values())} to {Path(args.out).resolve()}/")
    return 0


def _study_models(args: argparse.Namespace) -> int:
    from .study.models import read_model_runs, study_models, write_outputs

    utilities = None
    if args.utilities:
        ids = [u.strip() for u in args.utilities.split(",") if u.strip()]
        utilities = {u.lower(): u for u in ids}
    result = study_models(read_model_runs([Path(m) for m in args.models]), seed=args.seed, utilities=utilities)
    paths = write_outputs(result, Path(args.out))
    status = {s: sum(m["status"] == s for m in result.models) for s in ("CLEARED", "NOT CLEARED", "INCOMPLETE")}
    print(f"mriq-validate study --models: {len(result.models)} models ({', '.join(f'{n} {s}' for s, n in status.items() if n)}), "
          f"{len(result.measures)} measures; written {', '.join(p.name for p in paths.values())} to {Path(args.out).resolve()}/")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir
    from .calibrate import calibrate_suite

    changes = calibrate_suite(Path(args.suite), Path(args.out), data=args.data, k=args.k, seed=args.seed,
                              cache_dir=args.cache or default_cache_dir(), device=args.device, n_boot=args.n_boot,
                              progress=lambda msg: print(f"[mriq] {msg}", file=sys.stderr, flush=True))
    for c in changes:
        print(f"  {c['criterion']}: {c['bound']} {c['old']} -> {c['new']:.4g} ({c['rule']})")
    print(f"mriq-validate calibrate: {len(changes)} threshold(s) re-derived; written {Path(args.out).resolve()}")
    return 0


def _merge_reports(args: argparse.Namespace) -> int:
    from .shards import merge_shards, write_merged

    folders = [Path(f) for f in args.folders]
    merged = merge_shards(folders, command_line=["mriq-validate", "merge-reports", *map(str, args.folders), "--out", str(args.out)],
                          invocation_dir=str(Path.cwd()))
    path = write_merged(merged, Path(args.out), folders)
    d = merged.report["decision"]
    print(f"mriq-validate merge-reports: {len(folders)} shard report(s), {len(merged.report['results'])} criterion item(s)")
    print(f"release decision: {d['status']}" + (f" (failing gates: {', '.join(d['failed_gating'])})" if d["failed_gating"] else ""))
    if d["status"] != "CLEARED":
        print(f"  {d['summary']}")
    print(f"report: {path}  {path.with_name('report.html')}")
    return 0 if d["status"] == "CLEARED" else 1


def _track(args: argparse.Namespace) -> int:
    from .track import track

    runs = track([Path(c) for c in args.checkpoints], suite=args.suite, model=args.model, out=Path(args.out), env_var=args.checkpoint_env,
                 pytest_args=(["-k", args.k] if args.k else []) + shlex.split(args.pytest_args),
                 progress=lambda msg: print(f"[mriq] {msg}", file=sys.stderr, flush=True), reuse=args.reuse)
    out = Path(args.out).resolve()
    print(f"\nmriq-validate track: {len(runs)} checkpoint(s)")
    for run in runs:
        print(f"  {run.name}: {run.status}")
    print(f"written {out}/readiness.md, {out}/readiness.png and one report folder per checkpoint")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cache_info(root: Path, args: argparse.Namespace) -> int:
    from .cache import MARKER
    from .cache_admin import entry_size, scan

    inv = scan(root)
    if not root.is_dir():
        print(f"mriq cache {root}: does not exist yet (nothing has been cached)")
        return 0
    print(f"mriq cache {root}" + ("" if inv.marked else f"  [no {MARKER}: not written by this mriq-validate; `cache clear` refuses it]"))
    kinds = sorted({p.parent.name for p in inv.entries})
    for kind in kinds:
        entries = [p for p in inv.entries if p.parent.name == kind]
        print(f"  {kind:<12} {len(entries):>5} entries  {_mib(sum(map(entry_size, entries))):>11}")
    print(f"  {'total':<12} {len(inv.entries):>5} entries  {_mib(sum(map(entry_size, inv.entries))):>11}")
    for label, paths, note in (
        ("entries without sidecar", inv.without_sidecar(), "older version or interrupted write: rebuilt on next use"),
        ("temporary files", inv.temps, "left by interrupted builds, never loaded; `cache clear` removes them"),
        ("orphan sidecars", inv.orphans, "their entry is gone; `cache clear` removes them"),
        ("run scratch folders", inv.scratch, "mapped arrays of runs; removed when a run ends, by `cache clear` once their process is gone"),
        ("other files", inv.other, "not written by mriq-validate; never removed"),
    ):
        if paths:
            print(f"  {label}: {len(paths)} ({_mib(sum(map(entry_size, paths)))}; {note})")
            for q in paths:
                print(f"    {q.relative_to(root)}")
    return 0


def _cache_verify(root: Path, args: argparse.Namespace) -> int:
    from .cache_admin import verify

    inv, bad, busy = verify(root, fix=args.fix)
    for path, why in bad:
        state = " (being built by another process; left)" if path in busy else " (removed: rebuilt on next use)" if args.fix else ""
        print(f"  BAD {path.relative_to(root)}: {why}{state}")
    print(f"mriq cache {root}: {len(inv.entries)} entries checked against their recorded SHA-256, {len(bad)} bad"
          + (f", {len(bad) - len(busy)} removed" if args.fix and bad else ""))
    return 0 if not bad or (args.fix and not busy) else 1


def _cache_clear(root: Path, args: argparse.Namespace) -> int:
    from .cache_admin import clear

    out = clear(root, args.kind)
    for entry in out.busy:
        print(f"  skipped {entry.relative_to(root)}: another process holds its lock (building it)")
    for path in out.kept:
        print(f"  kept {path.relative_to(root)}: not written by mriq-validate")
    print(f"mriq cache {root}: removed {len(out.removed)} files" + (f" of kind {args.kind}" if args.kind else ""))
    return 1 if out.busy else 0


CACHE_ACTIONS = {"info": _cache_info, "verify": _cache_verify, "clear": _cache_clear}


def _cache(args: argparse.Namespace) -> int:
    from .cache import default_cache_dir

    root = Path(args.cache) if args.cache else default_cache_dir()
    return CACHE_ACTIONS[args.action](root, args)


def _error_message(command: str, exc: MriqError) -> str:
    """The error as one paragraph: ``mriq-validate COMMAND: message``, blank lines and trailing spaces removed."""
    text = re.sub(r"[ \t]+\n", "\n", str(exc).strip())
    return f"mriq-validate {command}: " + re.sub(r"\n\s*\n", "\n", text)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task, each with its function in ``fn``."""
    parser = argparse.ArgumentParser(prog="mriq-validate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the shipped suites on the embedded data against builtin:real")
    demo.add_argument("--model", default="builtin:real")
    demo.add_argument("--suites", default=None, help="folder of suites (default: the suites shipped in the package)")
    demo.add_argument("--out", default="mriq-results")
    demo.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    demo.set_defaults(fn=_demo)
    sub.add_parser("list", help="list builtin models, data, metrics and perturbations").set_defaults(fn=_list)
    sub.add_parser("selftest", help="known-answer checks of the measures, perturbations, statistics and report, from the "
                   "installed package; exit 1 when one fails").set_defaults(fn=_selftest)
    exp = sub.add_parser("export-masks", help="write the test and train masks (and a manifest) so a model can generate images for "
                         "them offline; the folder is then a --mriq-model")
    exp.add_argument("out", help="a new or empty folder")
    exp.add_argument("--suite", default=None, help="take the data and its options (contrasts, crop, ...) from this suite's data: block")
    exp.add_argument("--data", default=None, help="data to export (default: the suite's data.default, else builtin:mni-tumour)")
    exp.add_argument("--contrasts", default=None, help="comma-separated contrasts, overriding the suite's (e.g. t1,t1c,t2,flair)")
    exp.add_argument("--cache", default=None)
    exp.set_defaults(fn=_export_masks)
    tab = sub.add_parser("downstream-table", help="TRTR / protocol A / TSTR Dice and PIQE of the builtin stand-ins, as a markdown table")
    tab.add_argument("--out", default=None, help="also write the markdown to this file")
    tab.add_argument("--data", default="builtin:mni-tumour")
    tab.add_argument("--suite", default=None, help="suite whose criteria IQA-PIQE, DICE-WT and DICE-TSTR-WT set the metrics and flags "
                     "(default: the shipped suites/brain_tumour.yaml)")
    tab.add_argument("--region", default=None, help="override the criteria's region (default: the suite's)")
    tab.add_argument("--device", type=parse_device, default="auto")
    tab.add_argument("--seed", type=parse_seed, default=0)
    tab.add_argument("--n-boot", type=int, default=1000)
    tab.add_argument("--cache", default=None)
    tab.add_argument("--models", default=None, help="comma-separated builtin stand-ins (default: all)")
    tab.add_argument("--tstr-models", default=None, help="comma-separated stand-ins to train TSTR segmenters on (default: real,noisy,boundary-blur,collapse)")
    tab.set_defaults(fn=_downstream_table)
    st = sub.add_parser("study", help="the Deo et al. 2025 metric study: every measure x every perturbation and stand-in, vs Dice")
    st.add_argument("--data", default="builtin:mni-tumour")
    st.add_argument("--out", default="mriq-study")
    st.add_argument("--quick", action="store_true", help="a few measures, perturbations and stand-ins, small n_boot (about 1-2 min)")
    st.add_argument("--seed", type=parse_seed, default=0)
    st.add_argument("--n-boot", type=int, default=None, help="resamples for the clean-real noise floors (default 200 per-image, 50 set)")
    st.add_argument("--device", type=parse_device, default="cpu")
    st.add_argument("--cache", default=None)
    st.add_argument("--models", nargs="+", default=None, metavar="DIR",
                    help="the second axis instead: gate reports of real generators (report folders, or folders of them such as "
                         "mriq-validate track --out, one per family); rank correlation of every measure with downstream Dice across them")
    st.add_argument("--utilities", default=None, help="with --models: comma-separated utility criteria (default: DICE-TSTR-WT,DICE-WT)")
    st.set_defaults(fn=_study)
    cal = sub.add_parser("calibrate", help="re-derive a suite's relative thresholds as k x the measured noise floor on your data")
    cal.add_argument("--suite", required=True)
    cal.add_argument("--out", required=True, help="the new suite file")
    cal.add_argument("--data", default=None, help="data to calibrate on (default: the suite's data.default)")
    cal.add_argument("--k", type=float, default=3.0)
    cal.add_argument("--seed", type=parse_seed, default=0)
    cal.add_argument("--n-boot", type=int, default=1000)
    cal.add_argument("--device", type=parse_device, default="cpu")
    cal.add_argument("--cache", default=None)
    cal.set_defaults(fn=_calibrate)
    mrg = sub.add_parser("merge-reports", help="merge the report folders of the N shards of one gate run (pytest --mriq-shard K/N) into "
                         "one report and decision; exit 0 CLEARED, 1 otherwise, 2 when the shards cannot be merged")
    mrg.add_argument("folders", nargs="+", metavar="DIR", help="the --mriq-report folder of each shard (each holds report.json)")
    mrg.add_argument("--out", default="mriq-merged", help="folder for the merged report.json and report.html (default: mriq-merged)")
    mrg.set_defaults(fn=_merge_reports)
    trk = sub.add_parser("track", help="readiness over training: run a suite on each checkpoint of a generator and draw measures, "
                         "thresholds and verdicts against training steps")
    trk.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files; the training step is read from the name "
                     "(e.g. generator-step00400.pt)")
    trk.add_argument("--suite", action="append", required=True, help="suite file or folder (repeatable)")
    trk.add_argument("--model", required=True, help="the --mriq-model that loads the checkpoint named by the environment variable")
    trk.add_argument("--out", default="mriq-track", help="folder: OUT/<checkpoint stem>/ reports, OUT/readiness.md and readiness.png")
    trk.add_argument("-k", default=None, help="pytest -k expression selecting criteria (the decisions are then INCOMPLETE)")
    trk.add_argument("--checkpoint-env", default="MRIQ_CHECKPOINT", help="environment variable set to each checkpoint's path")
    trk.add_argument("--reuse", action="store_true", help="do not run a checkpoint again whose OUT/<name>/ holds a finished report "
                     "of a run on the same checkpoint, suites, model file and arguments (call track after each new checkpoint)")
    trk.add_argument("--pytest-args", default="", help='extra pytest arguments, one string (e.g. "--mriq-device cpu -x")')
    trk.set_defaults(fn=_track)
    cache = sub.add_parser("cache", help="inspect, verify or clear the cache (data, trained segmenters, features)")
    actions = cache.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache", default=None, help="the cache folder (default: $MRIQ_CACHE_DIR or ~/.cache/mriq-validate)")
    actions.add_parser("info", parents=[common], help="entries per kind with count and size; temporary and orphan files")
    ver = actions.add_parser("verify", parents=[common], help="check every entry against its recorded SHA-256; exit 1 if any is bad")
    ver.add_argument("--fix", action="store_true", help="remove bad entries (they are rebuilt on next use); exit 0 once all are removed")
    clr = actions.add_parser("clear", parents=[common], help="remove what the cache wrote (refuses a folder that is not an mriq cache)")
    clr.add_argument("--kind", default=None, help="only this kind (a folder of the cache: data, segmenters, features, niqe)")
    cache.set_defaults(fn=_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mriq-validate`` console script. SIGTERM, like Ctrl-C, stops the command: a child gate run
    (``track``) is passed the signal and writes its INCOMPLETE report, and the exit status is 128 + the signal number."""
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    stop = StopSignals()
    stop.install()
    try:
        return int(args.fn(args))
    except MriqError as exc:  # the user can fix it: say what, without a traceback
        print(_error_message(command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        stop.finishing()
        signum = signal_of(exc)
        print(f"\nmriq-validate {command}: stopped by {signal.Signals(signum).name}"
              + (" (the signal was passed on to the gate run under way, if any: its report says INCOMPLETE)" if args.command == "track"
                 else ""), file=sys.stderr)
        return 128 + signum  # the shell's convention for a command ended by a signal
    finally:
        stop.restore()


if __name__ == "__main__":
    sys.exit(main())
