"""The ``--mriq-model`` value is parsed in one place (``model_spec.parse_model_spec``) into a kind, a target and a
factory name, and a model file is hashed by one function; the gate, the shard record and ``track`` use them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mriq_validate.errors import ModelError
from mriq_validate.model_spec import KINDS, parse_model_spec


@pytest.mark.parametrize("text, kind, target, name", [
    ("builtin:real", "builtin", "real", ""),
    ("nets/model.pt", "torchscript", "nets/model.pt", ""),
    ("gen.py:build", "python-file", "gen.py", "build"),
    ("dir/gen.py:make", "python-file", "dir/gen.py", "make"),
    ("C:/models/gen.py:build", "python-file", "C:/models/gen.py", "build"),  # the factory name is after the last colon
    ("my_pkg.models:build", "module", "my_pkg.models", "build"),
])
def test_each_kind_is_recognised_with_its_target_and_name(text: str, kind: str, target: str, name: str) -> None:
    spec = parse_model_spec(text)
    assert (spec.text, spec.kind, spec.target, spec.name) == (text, kind, target, name)


def test_a_folder_is_a_folder_model_and_an_unknown_value_names_the_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    assert parse_model_spec("images").kind == "folder"
    with pytest.raises(ModelError, match=r"--mriq-model 'nowhere': not understood \(or the folder does not exist\); expected builtin:NAME"):
        parse_model_spec("nowhere")
    assert list(KINDS) == ["builtin", "torchscript", "folder", "python-file", "module"]  # the order decides


def test_one_hash_of_the_model_file_serves_the_spec_the_shard_record_and_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mriq_validate.shards import model_file_sha256
    from mriq_validate.track import run_record

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gen.py").write_text("def build(ctx): ...\n")
    (tmp_path / "s.yaml").write_text("criteria: []\n")
    (tmp_path / "ck.pt").write_bytes(b"weights")
    want = hashlib.sha256((tmp_path / "gen.py").read_bytes()).hexdigest()
    assert parse_model_spec("gen.py:build").sha256() == want
    assert model_file_sha256("gen.py:build", tmp_path) == want
    assert run_record(tmp_path / "ck.pt", suite=["s.yaml"], model="gen.py:build")["model_file_sha256"] == want
    assert parse_model_spec("builtin:real").sha256() is None and parse_model_spec("missing.py:build").sha256() is None
    assert model_file_sha256("nowhere", tmp_path) is None  # the gate run reports an unparseable spec itself
