"""The model zoo (examples/zoo/, docs/zoo.md): seeded training whose checkpoints are verified cache entries, the zoo
model's contract, and (heavy) the reduced zoo trained, gated and studied end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mriq_validate.errors import MissingFileError, ModelError

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "examples" / "zoo"


def _zoo_module(name: str) -> Any:
    sys.path.insert(0, str(ZOO))
    try:
        spec = importlib.util.spec_from_file_location(f"mriq_zoo_{name}", ZOO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ZOO))


def test_the_zoo_model_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _zoo_module("model")
    monkeypatch.delenv("MRIQ_CHECKPOINT", raising=False)
    with pytest.raises(MissingFileError, match=r"\$MRIQ_CHECKPOINT is not set.*make zoo"):
        model.resolve_checkpoint()
    monkeypatch.setenv("MRIQ_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(MissingFileError, match=r"gone\.pt \(\$MRIQ_CHECKPOINT\) not found; make it with: make zoo"):
        model.resolve_checkpoint()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pt cannot be loaded"):
        model.ZooGenerator(tmp_path / "junk.pt")


def test_every_family_is_registered_with_both_presets_and_three_budgets() -> None:
    families = _zoo_module("families")
    assert set(families.FAMILIES) == {"ddpm", "ldm", "rflow", "spade", "vae"}
    for fam in families.FAMILIES.values():
        for preset in ("full", "reduced"):
            budgets = fam.presets[preset]["budgets"]
            assert len(budgets) >= 3 and budgets == sorted(set(budgets)), (fam.name, preset)


def test_checkpoints_are_verified_cache_entries_rebuilt_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training is seeded: a corrupted checkpoint entry is found by its SHA-256, the family is trained again, and the
    new checkpoint's weights are identical to the first's; a verified set is not trained again. Its images follow the model
    contract (shape, range, same seed → same images, another seed → other images)."""
    train = _zoo_module("train")
    model = _zoo_module("model")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logs: list[str] = []
        first = train.train("vae", "reduced", out=tmp_path / "a", log=logs.append)
        assert [p.name for p in first] == ["vae-step00005.pt", "vae-step00010.pt", "vae-step00020.pt"]
        original = torch.load(first[-1], weights_only=True)["state_dicts"]
        logs.clear()
        train.train("vae", "reduced", out=tmp_path / "b", log=logs.append)
        assert any("cached and verified" in line for line in logs)
        from mriq_validate.cache import DiskCache, default_cache_dir

        _, _, prefix = train.plan("vae", "reduced", 0, DiskCache(default_cache_dir()))
        entry = DiskCache(default_cache_dir()).path("zoo", train.entry_name(prefix, 20), ".pt")
        entry.write_bytes(entry.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
        logs.clear()
        again = train.train("vae", "reduced", out=tmp_path / "c", log=logs.append)
        assert not any("cached and verified" in line for line in logs)
        rebuilt = torch.load(again[-1], weights_only=True)["state_dicts"]
        assert all(torch.equal(rebuilt[net][k], original[net][k]) for net in original for k in original[net])
    finally:
        torch.set_num_threads(old)
    gen = model.ZooGenerator(again[-1])
    masks = torch.zeros(3, 1, 128, 128, dtype=torch.long)
    masks[:, :, 50:70, 50:70] = 2
    a, b, c = gen.generate(masks, seed=1), gen.generate(masks, seed=1), gen.generate(masks, seed=2)
    assert a.shape == (3, 4, 128, 128) and a.dtype == torch.float32 and 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.heavy
@pytest.mark.long
def test_reduced_zoo_trained_gated_and_studied_end_to_end(tmp_path: Path) -> None:
    """``run_zoo.py`` on two families (a diffusion and an adversarial one) at tiny budgets: trained, every checkpoint
    gated on DICE-WT and INTENSITY-SCALE, the second-axis study across the six checkpoints written."""
    out = tmp_path / "zoo"
    proc = subprocess.run([sys.executable, str(ZOO / "run_zoo.py"), "--families", "ddpm", "spade", "--preset", "reduced",
                           "--out", str(out), "-k", "DICE-WT and not LESIONWISE and not BY or INTENSITY-SCALE", "--utilities", "DICE-WT"],
                          cwd=ROOT, env=dict(os.environ, MRIQ_TORCH_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = json.loads((out / "study" / "models.json").read_text())
    assert sorted(m["label"] for m in study["models"]) == [f"{f}/{f}-step{s:05d}" for f in ("ddpm", "spade") for s in (5, 10, 20)]
    assert all(m["status"] == "INCOMPLETE" for m in study["models"])  # -k leaves gating criteria unselected
    assert {c["measure"] for c in study["correlations"]} == {"INTENSITY-SCALE"}
    assert all(-1 <= c["spearman"] <= 1 for c in study["correlations"])
    assert (out / "study" / "models.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "reports" / "spade" / "readiness.md").is_file()
