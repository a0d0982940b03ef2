"""The model under test runs in a child process: a hang, sys.exit, os._exit, a segfault, a killed process, running out
of memory or an exception ERRORs the criteria that need the model, with the call and the cause, and the run goes on.

Every model file here is written to a temp folder; each child costs a Python start with a torch import (~2 s), so
non-fatal modes share one child and fatal ones (the child is gone afterwards) get one each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mriq_validate.errors import ModelError
from mriq_validate.models import ModelAdapter, ModelContext, TorchScriptModel, build_user_model, load_model

MODEL = textwrap.dedent(
    """\
    import ctypes, os, signal, subprocess, sys, time
    import torch

    class Model:
        def __init__(self, ctx):
            assert isinstance(ctx.device, torch.device) and isinstance(ctx.image_shape, tuple), "context types"
            self.base = ctx.train_images.mean(0, keepdim=True) * 0.5
            self.offset, self.label = ctx.seed % 1000, max(ctx.labels.values())

        def generate(self, masks, *, seed):
            print(f"generate(seed={seed}) on {masks.shape[0]} masks", flush=True)
            if seed == 1:
                raise ValueError("weights do not match the masks")
            if seed == 2:
                raise MemoryError("simulated")
            if seed == 3:
                return torch.empty(1 << 50)  # the CPU allocator refuses at once: "can't allocate memory"
            if seed == 4:
                return lambda: None  # cannot be pickled back to the parent
            if seed == 5:
                return torch.full(masks.shape, float("nan"))
            g = torch.Generator().manual_seed(seed + self.offset)
            noise = torch.rand(masks.shape, generator=g) * 0.4
            return (self.base + noise + (masks > 0) * 0.1).clamp(0, 1)

        def sample(self, n, *, seed):
            g = torch.Generator().manual_seed(seed)
            images = torch.rand(n, *self.base.shape[1:], generator=g)
            return images, (images > 0.5).long() * self.label

    class Fatal:
        def __init__(self, mode):
            self.mode = mode

        def generate(self, masks, *, seed):
            print(f"about to {self.mode}", flush=True)
            if self.mode == "hang":
                helper = subprocess.Popen(["sleep", "600"])  # a process of the model's own: stopped with it
                print(f"helper pid {helper.pid}", flush=True)
                time.sleep(600)
            if self.mode == "exit":
                sys.exit(3)
            if self.mode == "os_exit":
                os._exit(7)
            if self.mode == "segfault":
                ctypes.string_at(0)
            if self.mode == "killed":
                os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
            return masks.float()

    def build(ctx): return Model(ctx)
    def build_hang(ctx): return Fatal("hang")
    def build_exit(ctx): return Fatal("exit")
    def build_os_exit(ctx): return Fatal("os_exit")
    def build_segfault(ctx): return Fatal("segfault")
    def build_killed(ctx): return Fatal("killed")
    def build_exits_while_loading(ctx):
        print("loading weights", flush=True)
        sys.exit("no GPU found")
    """
)


@pytest.fixture(autouse=True)
def _temp_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's temp folder (kept with its log after a failure) goes under pytest's tmp_path, not /tmp."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("isolation") / "user_model.py"
    path.write_text(MODEL)
    return path


@pytest.fixture(scope="module")
def ctx() -> ModelContext:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 1, 16, 16, dtype=torch.long)
    masks[:, :, 4:9, 5:10] = 1
    return ModelContext(torch.rand(6, 1, 16, 16, generator=g), masks, (1, 16, 16), torch.device("cpu"), 1234, {"lesion": 1})


def _state(pid: int) -> str | None:
    """The process's state letter (Z: a zombie, ended but not reaped), or None once it is gone."""
    try:
        if not Path("/proc").is_dir():  # no procfs: only whether the process exists
            os.kill(pid, 0)
            return "?"
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def test_well_behaved_model_gives_the_same_images_in_the_child(model_file: Path, ctx: ModelContext) -> None:
    spec = f"{model_file}:build"
    model = load_model(spec, ctx, None, timeout=60)  # type: ignore[arg-type]  (data is only used by builtins)
    try:
        child = model.model
        assert model.provenance["isolation"] == "process" and model.provenance["timeout_s"] == 60
        assert child.pid != os.getpid() and _state(child.pid) is not None
        in_process = ModelAdapter(build_user_model("python-file", str(model_file), "build", spec, ctx), spec, ctx)
        for seed in (0, 7):  # the same seeds reach the model: identical images, bit for bit
            assert torch.equal(model.generate(ctx.train_masks, seed=seed), in_process.generate(ctx.train_masks, seed=seed))
        assert not torch.equal(model.generate(ctx.train_masks, seed=0), model.generate(ctx.train_masks, seed=7))
        images, masks = model.sample(3, seed=5)
        ref_images, ref_masks = in_process.sample(3, seed=5)
        assert torch.equal(images, ref_images) and masks is not None and torch.equal(masks, ref_masks) and int(masks.max()) == 1

        # non-fatal: the model raised; the child serves on (each message names the call and the user's file:line)
        raised = {
            1: r"model .*user_model.py:build raised in generate\(\): ValueError: weights do not match the masks \(at .*user_model.py:\d+\)",
            2: r"ran out of memory in generate\(\): MemoryError: simulated \(at .*user_model.py:\d+\)",
            3: r"ran out of memory in generate\(\): RuntimeError: .*can't allocate memory",
            4: r"generate\(\) returned a function that cannot be sent back from the model process \(.*\); expected a torch.Tensor",
            5: r"generate\(\) returned non-finite values \(NaN/inf\)",  # the output checks apply to what comes back
        }
        for seed, message in raised.items():
            with pytest.raises(ModelError, match=message):
                model.generate(ctx.train_masks, seed=seed)
        assert torch.equal(model.generate(ctx.train_masks, seed=0), in_process.generate(ctx.train_masks, seed=0))
    finally:
        model.close()
    assert _state(child.pid) is None and not child.log.parent.exists()


CONTRAST_MODEL = textwrap.dedent(
    """\
    import torch

    class Echo:
        def __init__(self, ctx):
            self.ctx = ctx

        def generate(self, masks, *, seed):  # one channel per contrast, each the contrast's index / 10
            c = len(self.ctx.contrasts)
            assert self.ctx.image_shape[0] == c == self.ctx.train_images.shape[1]
            return torch.arange(c, dtype=torch.float32).view(1, c, 1, 1).expand(masks.shape[0], c, *masks.shape[2:]) / 10

        def sample(self, n, *, seed):
            raise ValueError("contrasts seen by the factory: " + ",".join(self.ctx.contrasts))

    def build(ctx): return Echo(ctx)
    """
)


def test_the_child_gets_the_contrasts(tmp_path: Path) -> None:
    """The factory in the model process sees the context's contrasts (names and order) and the C-channel slice shape."""
    path = tmp_path / "contrast_model.py"
    path.write_text(CONTRAST_MODEL)
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    ctx = ModelContext(torch.rand(2, 3, 8, 8), masks, (3, 8, 8), torch.device("cpu"), 0, {"lesion": 1}, ("flair", "t1", "t2"))
    model = load_model(f"{path}:build", ctx, None, timeout=60)  # type: ignore[arg-type]
    try:
        out = model.generate(masks, seed=0)
        assert out.shape == (2, 3, 8, 8) and [float(out[0, k].mean()) for k in range(3)] == pytest.approx([0.0, 0.1, 0.2])
        with pytest.raises(ModelError, match="contrasts seen by the factory: flair,t1,t2"):
            model.sample(1, seed=0)
    finally:
        model.close()


@pytest.mark.parametrize(
    "factory, cause",
    [
        ("build_hang", r"generate\(\) did not return within 3 s \(--mriq-timeout\); the model process was stopped"),
        ("build_exit", r"called sys.exit\(3\) during generate\(\)"),
        ("build_os_exit", r"the model process exited with code 7 without returning \(os._exit\(7\) or a crash in native code\) during generate\(\)"),
        ("build_segfault", r"the model process crashed with a segmentation fault \(signal 11\) during generate\(\)(.|\n)*user_model.py\", line \d+ in generate"),
        ("build_killed", r"the model process was killed \(signal 9; e.g. by the out-of-memory killer\) during generate\(\)"),
    ],
)
def test_a_model_that_dies_or_hangs_errors_with_the_call_and_the_cause(model_file: Path, ctx: ModelContext, factory: str, cause: str) -> None:
    model = load_model(f"{model_file}:{factory}", ctx, None, timeout=3)  # type: ignore[arg-type]
    child = model.model
    with pytest.raises(ModelError) as first:
        model.generate(ctx.train_masks, seed=0)
    message = str(first.value)
    assert message.startswith(f"model {model_file}:{factory}: ")
    assert re.search(cause, message), message
    mode = factory.removeprefix("build_")
    assert f"about to {mode}" in message  # the tail of what the model printed, from the log kept for the message
    assert _state(child.pid) is None  # killed or ended, and reaped
    helpers = [int(pid) for pid in re.findall(r"helper pid (\d+)", message)]
    assert bool(helpers) == (mode == "hang")
    assert all(_state(pid) in (None, "Z") for pid in helpers)  # what the model started went with it (init reaps it)
    with pytest.raises(ModelError, match="the model process is no longer running; sample\\(\\) was not attempted"):
        child.call("sample", 2, seed=0)  # remembered: no second wait, no respawn
    model.close()


def test_a_model_that_exits_while_loading(model_file: Path, ctx: ModelContext) -> None:
    with pytest.raises(ModelError, match=r"called sys.exit\('no GPU found'\) during loading \(import and build_exits_while_loading\(ctx\)\)"
                                         r"(.|\n)*loading weights"):
        load_model(f"{model_file}:build_exits_while_loading", ctx, None, timeout=60)  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_child_dies_with_its_parent(model_file: Path, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""\
        import os, signal, torch
        from mriq_validate.models import ModelContext, load_model
        ctx = ModelContext(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long), (1, 8, 8), torch.device("cpu"), 0, {{}})
        model = load_model({str(model_file)!r} + ":build_hang", ctx, None, timeout=60)
        print(model.model.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up runs in the parent
        """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == -9, out.stderr
    pid = int(out.stdout.split()[0])
    for _ in range(100):  # PR_SET_PDEATHSIG: the kernel kills the child at once; its new parent (init) reaps it
        if _state(pid) in (None, "Z"):
            break
        time.sleep(0.1)
    assert _state(pid) in (None, "Z")


def test_torchscript_generate_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    class Noisy(torch.nn.Module):
        def forward(self, masks: torch.Tensor) -> torch.Tensor:
            return torch.rand_like(masks)

    path = tmp_path / "noisy.pt"
    torch.jit.script(Noisy()).save(str(path))
    model = TorchScriptModel(path, torch.device("cpu"))
    masks = torch.zeros(2, 1, 8, 8)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    out = model.generate(masks, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # old code: torch.manual_seed(5) reseeded the global generator
    torch.manual_seed(5)  # the seed still reaches the module: the same draws as under the old global seeding
    assert torch.equal(out, torch.rand_like(masks)) and torch.equal(model.generate(masks, seed=5), out)


# ---------------------------------------------------------------- end to end through the plugin

SUITE = textwrap.dedent(
    """\
    mriq_suite:
      name: isolation
      context_of_use: plugin isolation tests
      criteria:
        - id: IQA-PIQE
          requirement: PIQE on generated images is not worse than on real images by more than 3 SE
          rationale: test threshold
          metric: piqe
          threshold: {max: 3, relative: difference, unit: se}
        - id: SENS-PIQE-RICIAN
          kind: sensitivity
          requirement: PIQE worsens by at least 3 SE under Rician noise
          rationale: test threshold
          gate: false
          metric: piqe
          perturbation: {name: rician, sigma: 0.1}
          threshold: {min: 3, unit: se}
    """
)


@pytest.mark.parametrize(
    "factory, cause",
    [
        ("build_hang", "generate() did not return within 4 s (--mriq-timeout); the model process was stopped"),
        ("build_segfault", "the model process crashed with a segmentation fault (signal 11) during generate()"),
    ],
)
def test_the_run_goes_on_and_reports_incomplete(pytester: pytest.Pytester, factory: str, cause: str, cache_dir: Path) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    pytester.makepyfile(user_model=MODEL)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--mriq-cache={cache_dir}", f"--mriq-model=user_model.py:{factory}",
                                "--mriq-timeout=4", "--mriq-report=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1, passed=1)  # the sensitivity self-check on real data still ran
    result.stdout.fnmatch_lines(["*timeout=4s*", f"IQA-PIQE ERROR (could not be evaluated; this is never a pass): model user_model.py:{factory}: {cause}",
                                 f"*about to {factory.removeprefix('build_')}"])
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["decision"]["status"] == "INCOMPLETE"
    verdicts = {r["criterion_id"]: r["verdict"] for r in report["results"]}
    assert verdicts["IQA-PIQE"] == "ERROR" and verdicts["SENS-PIQE-RICIAN"] in ("PASS", "FAIL")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf"])
def test_timeout_option_is_validated(pytester: pytest.Pytester, value: str) -> None:
    pytester.makefile(".yaml", suite=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--mriq-timeout={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--mriq-timeout*{value!r}: expected a positive number of seconds*"])
    pytester.makeini(f"[pytest]\nmriq_timeout = {value}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*ini option mriq_timeout = {value!r}: {value!r}: expected a positive number of seconds*"])
