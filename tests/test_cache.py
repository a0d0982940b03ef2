"""The on-disk cache is verified, never trusted: atomic writes with a recorded SHA-256, checked before every load;
bad entries are rebuilt and the event recorded; unwritable folders and held locks end in a CacheError that names
the path; ``mriq-validate cache info|verify|clear``."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mriq_validate import cache as cache_mod
from mriq_validate import cache_admin
from mriq_validate.cache import MARKER, DiskCache, check_entry, lock_of, sidecar_of
from mriq_validate.cli import main
from mriq_validate.errors import CacheError

KIND, KEY, SUFFIX = "features", "0123456789abcdef", ".npy"
VALUE = np.linspace(-3.0, 7.0, 2000)  # 16 kB of float64: the payload is most of the file


def save_npy(value: np.ndarray, path: Path) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
        np.save(fh, value)


class Counter:
    """A ``create`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return VALUE.copy()


def get(cache: DiskCache, create: Counter) -> np.ndarray:
    return cache.get_or_create(KIND, KEY, SUFFIX, create, save_npy, np.load)


def built(tmp_path: Path) -> tuple[DiskCache, Path, Counter]:
    cache, create = DiskCache(tmp_path / "cache"), Counter()
    get(cache, create)
    return cache, cache.path(KIND, KEY, SUFFIX), create


# --- writing ---------------------------------------------------------------------------------------------------


def test_round_trip_records_sha256_and_reuses(tmp_path: Path) -> None:
    cache, entry, create = built(tmp_path)
    meta = json.loads(sidecar_of(entry).read_text())
    data = entry.read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["size"] == len(data)
    assert (meta["kind"], meta["key"], meta["file"]) == (KIND, KEY, entry.name) and meta["package_version"]
    assert json.loads((tmp_path / "cache" / MARKER).read_text())["tool"] == "mriq-validate"
    again = get(cache, create)
    assert np.array_equal(again, VALUE) and create.calls == 1 and cache.events == []
    assert check_entry(entry) is None
    assert not list(entry.parent.glob("*.tmp"))


def test_stray_temp_files_are_ignored(tmp_path: Path) -> None:
    cache, entry, create = built(tmp_path)
    stray = entry.with_name(entry.name + ".abcd_123.tmp")  # what a build killed before its rename leaves
    stray.write_bytes(b"half a file")
    assert np.array_equal(get(cache, create), VALUE) and create.calls == 1 and cache.events == []
    fresh = DiskCache(tmp_path / "other")
    (tmp_path / "other" / KIND).mkdir(parents=True)
    shutil.copy(stray, tmp_path / "other" / KIND / stray.name)
    assert np.array_equal(get(fresh, Counter()), VALUE) and fresh.events == []


# --- corrupt entries are rebuilt, and the event recorded ----------------------------------------------------------


def flip_byte(entry: Path) -> None:
    b = bytearray(entry.read_bytes())
    b[len(b) // 2] ^= 0x01
    entry.write_bytes(bytes(b))


def zero_half(entry: Path) -> None:
    b = bytearray(entry.read_bytes())
    b[len(b) // 2 :] = bytes(len(b) - len(b) // 2)
    entry.write_bytes(bytes(b))


def truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:100])


def drop_sidecar(entry: Path) -> None:
    sidecar_of(entry).unlink()


def wrong_hash(entry: Path) -> None:
    meta = json.loads(sidecar_of(entry).read_text())
    meta["sha256"] = hashlib.sha256(b"something else").hexdigest()
    sidecar_of(entry).write_text(json.dumps(meta))


def garbled_sidecar(entry: Path) -> None:
    sidecar_of(entry).write_text('{"sha256": ')


def directory_in_place(entry: Path) -> None:
    entry.unlink()
    (entry / "inner").mkdir(parents=True)


CORRUPTIONS = {
    "flipped byte": (flip_byte, r"^sha256 mismatch: recorded [0-9a-f]{16}\.\.\., found [0-9a-f]{16}\.\.\.$"),
    "half zeroed": (zero_half, r"^sha256 mismatch"),
    "truncated": (truncate, r"^size mismatch: recorded \d+ bytes, found 100"),
    "deleted sidecar": (drop_sidecar, r"^no sidecar .*\.meta\.json \(an entry written by an older version"),
    "wrong hash in sidecar": (wrong_hash, rf"^sha256 mismatch: recorded {hashlib.sha256(b'something else').hexdigest()[:16]}\.\.\., found"),
    "garbled sidecar": (garbled_sidecar, r"^sidecar .*unreadable \(JSONDecodeError"),
    "directory at entry path": (directory_in_place, r"^a directory is where the entry file should be$"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_entry_is_rebuilt_and_recorded(tmp_path: Path, name: str) -> None:
    corrupt, reason = CORRUPTIONS[name]
    cache, entry, create = built(tmp_path)
    corrupt(entry)
    value = get(cache, create)
    assert np.array_equal(value, VALUE) and create.calls == 2
    assert len(cache.events) == 1
    event = cache.events[0]
    assert (event["kind"], event["key"], event["path"], event["action"]) == (KIND, KEY, str(entry), "rebuilt")
    assert re.search(reason, event["reason"]), event["reason"]
    assert json.loads(json.dumps(cache.events)) == cache.events  # JSON-ready for the report
    assert check_entry(entry) is None and np.array_equal(np.load(entry), VALUE)  # written again, verified
    assert np.array_equal(get(cache, create), VALUE) and create.calls == 2 and len(cache.events) == 1


@pytest.mark.parametrize("name", ["flipped byte", "half zeroed"])
def test_the_corruptions_that_load_accepts_are_the_harm(tmp_path: Path, name: str) -> None:
    """Without the hash check these files load without an error and give other numbers: silent use of bad content."""
    _, entry, _ = built(tmp_path)
    CORRUPTIONS[name][0](entry)
    assert not np.array_equal(np.load(entry), VALUE)


def test_loader_that_raises_on_verified_bytes_rebuilds(tmp_path: Path) -> None:
    cache, entry, create = built(tmp_path)
    calls = []

    def picky_load(path: Path) -> np.ndarray:
        calls.append(path)
        if len(calls) <= 2:  # the unlocked attempt and the locked re-check
            raise ValueError("format from another numpy")
        return np.load(path)

    value = cache.get_or_create(KIND, KEY, SUFFIX, create, save_npy, picky_load)
    assert np.array_equal(value, VALUE) and create.calls == 2
    assert [e["reason"] for e in cache.events] == ["load failed: ValueError: format from another numpy"]


def test_rebuild_that_cannot_remove_the_bad_entry_names_the_clear_command(tmp_path: Path, monkeypatch) -> None:
    cache, entry, create = built(tmp_path)
    directory_in_place(entry)

    def refuse(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with pytest.raises(CacheError) as info:
        get(cache, create)
    msg = str(info.value)
    assert str(entry) in msg and "a directory is where the entry file should be" in msg
    assert f"mriq-validate cache clear --kind {KIND} --cache {cache.root}" in msg
    assert cache.events[0]["action"] == "rebuilt"


# --- unwritable folders -----------------------------------------------------------------------------------------


def test_root_that_is_a_file_is_a_cache_error(tmp_path: Path) -> None:
    root = tmp_path / "not-a-folder"
    root.write_text("user data")
    create = Counter()
    with pytest.raises(CacheError, match=rf"cache folder {root} cannot be written .*--mriq-cache DIR.*MRIQ_CACHE_DIR"):
        get(DiskCache(root), create)
    assert root.read_text() == "user data"


@pytest.mark.parametrize("target", ["replace", "mkstemp"])
def test_read_only_folder_is_a_cache_error_naming_the_entry(tmp_path: Path, monkeypatch, target: str) -> None:
    cache = DiskCache(tmp_path / "cache")
    cache.root.mkdir()
    (cache.root / KIND).mkdir()
    (cache.root / MARKER).write_text("{}")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os if target == "replace" else cache_mod.tempfile, target, read_only)
    with pytest.raises(CacheError, match=r"cannot write cache entry .*features/0123456789abcdef\.npy .*Read-only file system.*--mriq-cache DIR"):
        get(cache, Counter())


def test_full_disk_is_a_cache_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache")

    def save_full(value: np.ndarray, path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match=r"cannot write cache entry .* No space left on device\); the disk is full"):
        cache.get_or_create(KIND, KEY, SUFFIX, Counter(), save_full, np.load)
    assert sorted(p.name for p in (cache.root / KIND).iterdir()) == [f"{KEY}{SUFFIX}.lock"]


def test_verified_entry_loads_from_a_read_only_cache(tmp_path: Path, monkeypatch) -> None:
    cache, entry, create = built(tmp_path)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    class ReadOnlyLock:  # creating the lock file is the first write a rebuild needs
        def __init__(self, *a, **k) -> None:
            pass

        acquire = staticmethod(read_only)

    import filelock

    monkeypatch.setattr(filelock, "FileLock", ReadOnlyLock)
    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", read_only)
    again = DiskCache(cache.root)
    assert np.array_equal(get(again, create), VALUE) and create.calls == 1 and again.events == []
    flip_byte(entry)  # now it must be rebuilt, which a read-only folder cannot do: say so, naming the lock file
    with pytest.raises(CacheError, match=rf"cannot create the lock file {lock_of(entry)} .*Read-only"):
        get(again, create)


# --- locking ----------------------------------------------------------------------------------------------------


def test_lock_timeout_names_the_lock_file(tmp_path: Path) -> None:
    from filelock import FileLock

    cache = DiskCache(tmp_path / "cache", lock_timeout=0.3)
    entry = cache.path(KIND, KEY, SUFFIX)
    entry.parent.mkdir(parents=True)
    create = Counter()
    with FileLock(str(lock_of(entry))):  # another builder holds it
        start = time.perf_counter()
        with pytest.raises(CacheError, match=rf"waited 0.3 s for the lock {lock_of(entry)} of cache entry {entry}"):
            get(cache, create)
        assert time.perf_counter() - start >= 0.3
    assert create.calls == 0
    assert np.array_equal(get(cache, create), VALUE) and create.calls == 1  # released: builds


def _hold_lock_and_die(lock_path: str, ready) -> None:
    from filelock import FileLock

    FileLock(lock_path).acquire()
    ready.set()
    os._exit(0)  # a crash: no release, the lock file stays


def test_lock_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "cache", lock_timeout=10)
    entry = cache.path(KIND, KEY, SUFFIX)
    entry.parent.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock_and_die, args=(str(lock_of(entry)), ready))
    proc.start()
    proc.join(60)
    assert ready.is_set() and proc.exitcode == 0 and lock_of(entry).exists()
    start = time.perf_counter()
    assert np.array_equal(get(cache, Counter()), VALUE)
    assert time.perf_counter() - start < 5


def _build_in_process(root: str, counter: str, barrier, out: str) -> None:
    def create() -> np.ndarray:
        with open(counter, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that the other process arrives while this one builds
        return VALUE.copy()

    barrier.wait()
    value = DiskCache(root, lock_timeout=60).get_or_create(KIND, KEY, SUFFIX, create, save_npy, np.load)
    np.save(out, value)


def test_two_processes_build_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "calls.txt"
    procs = [ctx.Process(target=_build_in_process, args=(str(tmp_path / "cache"), str(counter), barrier, str(tmp_path / f"out{i}.npy")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(counter.read_text().splitlines()) == 1
    for i in range(2):
        assert np.array_equal(np.load(tmp_path / f"out{i}.npy"), VALUE)


# --- mriq-validate cache info|verify|clear ------------------------------------------------------------------------


def populated(tmp_path: Path) -> DiskCache:
    cache = DiskCache(tmp_path / "cache")
    for i in range(3):
        cache.get_or_create("features", f"f{i}", ".npy", lambda i=i: VALUE * i, save_npy, np.load)
    cache.get_or_create("niqe", "n0", ".npy", lambda: VALUE[:10], save_npy, np.load)
    return cache


def test_cli_info_lists_kinds_and_leftovers(tmp_path: Path, capsys) -> None:
    cache = populated(tmp_path)
    (cache.root / "features" / "f0.npy.abcdefgh.tmp").write_bytes(b"x" * 10)
    (cache.root / "niqe" / "gone.npy.meta.json").write_text("{}")
    assert main(["cache", "info", "--cache", str(cache.root)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:4]}
    assert lines["features"][1] == "3" and lines["niqe"][1] == "1"
    size = sum((cache.root / "features" / f"f{i}.npy").stat().st_size for i in range(3))
    assert f"{size / 2**20:.1f} MiB" in " ".join(lines["features"])
    assert "temporary files: 1" in out and "features/f0.npy.abcdefgh.tmp" in out
    assert "orphan sidecars: 1" in out and "niqe/gone.npy.meta.json" in out


def test_cli_verify_reports_bad_entries_and_fixes(tmp_path: Path, capsys) -> None:
    cache = populated(tmp_path)
    assert main(["cache", "verify", "--cache", str(cache.root)]) == 0
    assert "4 entries checked against their recorded SHA-256, 0 bad" in capsys.readouterr().out
    zero_half(cache.root / "features" / "f1.npy")
    drop_sidecar(cache.root / "niqe" / "n0.npy")
    assert main(["cache", "verify", "--cache", str(cache.root)]) == 1
    out = capsys.readouterr().out
    assert "BAD features/f1.npy: sha256 mismatch" in out and "BAD niqe/n0.npy: no sidecar" in out and "2 bad" in out
    assert (cache.root / "features" / "f1.npy").exists()  # verify alone changes nothing
    assert main(["cache", "verify", "--fix", "--cache", str(cache.root)]) == 0
    assert "2 removed" in capsys.readouterr().out
    assert not (cache.root / "features" / "f1.npy").exists() and not (cache.root / "niqe" / "n0.npy").exists()
    assert main(["cache", "verify", "--cache", str(cache.root)]) == 0
    assert "2 entries checked" in capsys.readouterr().out


def test_cli_clear_removes_only_what_the_cache_wrote(tmp_path: Path, capsys) -> None:
    cache = populated(tmp_path)
    (cache.root / "features" / "f0.npy.abcdefgh.tmp").write_bytes(b"x")
    (cache.root / "notes.txt").write_text("mine")
    (cache.root / "features" / "mine.csv").write_text("mine")  # no sidecar or lock: not the cache's
    assert main(["cache", "clear", "--kind", "niqe", "--cache", str(cache.root)]) == 0
    assert not (cache.root / "niqe").exists() and (cache.root / "features" / "f2.npy").exists()
    assert main(["cache", "clear", "--cache", str(cache.root)]) == 0
    out = capsys.readouterr().out
    assert "kept features/mine.csv" in out
    left = sorted(str(p.relative_to(cache.root)) for p in cache.root.rglob("*"))
    assert left == ["features", "features/mine.csv", MARKER, "notes.txt"]
    assert main(["cache", "clear", "--kind", "segmenters", "--cache", str(cache.root)]) == 2
    assert "has no kind 'segmenters'; kinds: features" in capsys.readouterr().err


def test_cli_clear_refuses_a_folder_that_is_not_a_cache(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "scan.npy").write_bytes(b"precious")
    (folder / "data" / "scan.npy.lock").write_bytes(b"")  # looks like a cache file, but no marker at the root
    assert main(["cache", "clear", "--cache", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder} does not look like an mriq-validate cache (no {MARKER} at its root), so nothing was removed" in err
    assert (folder / "data" / "scan.npy").read_bytes() == b"precious"


def test_cli_clear_skips_an_entry_being_built(tmp_path: Path, capsys) -> None:
    from filelock import FileLock

    cache = populated(tmp_path)
    entry = cache.root / "features" / "f1.npy"
    with FileLock(str(lock_of(entry))):
        assert main(["cache", "clear", "--cache", str(cache.root)]) == 1
    assert "skipped features/f1.npy: another process holds its lock" in capsys.readouterr().out
    assert entry.exists() and sidecar_of(entry).exists() and not (cache.root / "features" / "f0.npy").exists()


def test_cli_errors_exit_2_with_one_message(tmp_path: Path, capsys) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    assert main(["cache", "info", "--cache", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mriq-validate cache info: ") and f"cache folder {root} is a file, not a folder" in err
    assert main(["cache", "info", "--cache", str(tmp_path / "none")]) == 0
    assert "does not exist yet" in capsys.readouterr().out


# --- the original harm, end to end through a real caller ------------------------------------------------------------


def test_half_zeroed_feature_file_is_rebuilt_not_used(tmp_path: Path) -> None:
    """A feature file with its second half zeroed loads without error (it did, silently, before); now it is rebuilt."""
    from types import SimpleNamespace

    import torch

    from mriq_validate.metrics.features import Extractor, features

    calls = []

    def extract(images: torch.Tensor, masks: torch.Tensor | None) -> np.ndarray:
        calls.append(1)
        return images.flatten(1).double().numpy() * 3.0 + 1.0

    images = torch.from_numpy(np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32))
    ctx = SimpleNamespace(cache=DiskCache(tmp_path / "cache"))
    extractor = Extractor("test", extract, "test/1", {})
    original = features(ctx, extractor, images, None)
    (entry,) = (tmp_path / "cache" / "features").glob("*.npy")
    zero_half(entry)
    assert not np.array_equal(np.load(entry), original)  # what the old cache returned, without a word
    again = features(SimpleNamespace(cache=ctx.cache), extractor, images, None)
    assert np.array_equal(again, original) and len(calls) == 2
    (event,) = ctx.cache.events
    assert event["path"] == str(entry) and event["action"] == "rebuilt" and event["reason"].startswith("sha256 mismatch")


def test_run_scratch_folders_are_listed_and_only_a_dead_runs_is_cleared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess
    import sys

    c = DiskCache(tmp_path / "c")
    c.get_or_create("kind", "k", ".json", lambda: {"a": 1}, lambda v, p: p.write_text(json.dumps(v)), lambda p: json.loads(p.read_text()))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = (tmp_path / "c" / cache_mod.SCRATCH_KIND / f"{pid}-abcd" for pid in (dead.pid, os.getpid()))
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "1.bin").write_bytes(b"x" * 1000)
    inv = cache_admin.scan(tmp_path / "c")
    assert sorted(inv.scratch) == sorted([stale, live]) and not inv.other
    assert cache_admin.entry_size(stale) == 1000
    main(["cache", "info", "--cache", str(tmp_path / "c")])
    assert "run scratch folders: 2" in capsys.readouterr().out
    out = cache_admin.clear(tmp_path / "c")
    assert stale in out.removed and live in out.busy and not stale.exists() and (live / "1.bin").is_file()
    assert not (tmp_path / "c" / "kind").exists()


# --- a real gate run: the corrupt entry is rebuilt and the report lists it --------------------------------------------

#: a per-image measure on a small NIfTI cohort of its own: seconds, with a cache of its own (never the shared one)
COHORT_SUITE = """\
mriq_suite:
  name: cache-in-a-run
  context_of_use: cache tests
  data:
    slicing: volume
    spacing_mm: 6.0
    shape: [32, 40, 32]
    test_fraction: 0.4
  criteria:
    - id: BRIGHTNESS
      requirement: the 90th percentile of brain intensity holds
      rationale: any cheap measure; the test is about the cache under it
      metric: brain_intensity
      params: {percentile: 90}
      n_boot: 20
      threshold: {min: -0.05, max: 0.05, relative: difference}
"""


def test_a_corrupt_entry_is_rebuilt_in_a_gate_run_and_listed_in_its_report(pytester: pytest.Pytester) -> None:
    """A gate run on a cache with one case of its NIfTI cohort corrupted (a flipped byte) rebuilds that entry, lists it
    under ``deviations.cache_rebuilt`` in report.json and in report.html, and measures what the run on the sound entry
    measured."""
    from mriq_validate.data.cohort_writer import write_cohort

    cohort, cache = pytester.path / "cohort", pytester.path / "cache"
    write_cohort(cohort, "brats2021", 8, seed=3, voxel_mm=6.0, shape=(32, 40, 32))
    pytester.makefile(".yaml", suite=COHORT_SUITE)

    def run(folder: str) -> dict:
        result = pytester.runpytest("-p", "no:cacheprovider", f"--mriq-cache={cache}", "--mriq-model=builtin:real",
                                    f"--mriq-data={cohort}", f"--mriq-report={folder}", "--mriq-device=cpu")
        result.assert_outcomes(passed=1)
        return json.loads((pytester.path / folder / "report.json").read_text())

    first = run("first")
    assert first["deviations"]["cache_rebuilt"] == []  # built, not rebuilt: nothing was wrong
    entry = sorted((cache / "nifti-case").glob("*.npz"))[0]  # one case as the first run read it
    flip_byte(entry)
    second = run("second")
    rebuilt = second["deviations"]["cache_rebuilt"]
    assert [(e["kind"], e["path"], e["action"]) for e in rebuilt] == [("nifti-case", str(entry), "rebuilt")], rebuilt
    assert rebuilt[0]["reason"].startswith("sha256 mismatch"), rebuilt
    assert check_entry(entry) is None  # written again, verified
    page = (pytester.path / "second" / "report.html").read_text()
    assert "Cache entries rebuilt" in page and str(entry) in page
    (sound,), (after,) = first["results"], second["results"]
    assert after["compared"] == sound["compared"]  # the rebuilt entry measures what the sound one did
