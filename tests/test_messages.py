"""Messages that name their real cause: a suite file whose top level is not a mapping, an alias bomb's line and key,
a diffusers pipeline folder without model_index.json, and a volume returned with its spatial axes in X×Y×Z order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mriq_validate.errors import ModelError, SuiteError
from mriq_validate.models import ModelContext, check_images, load_model
from mriq_validate.suite import load_suite


@pytest.mark.parametrize("text, what", [("hello\n", "a string ('hello')"), ("- criteria: []\n", "a list"),
                                        ("criteria:\n  - id: A\n", "a mapping without `mriq_suite:`")])
def test_a_suite_whose_top_level_is_not_the_suite_mapping_says_so(tmp_path: Path, text: str, what: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the top level is {what}") and "`mriq_suite:`" in msg and "`criteria:`" in msg, msg


def test_a_named_yaml_file_that_is_not_a_suite_is_an_error_not_a_missing_file(pytester: pytest.Pytester,
                                                                                run_plugin: Callable[..., pytest.RunResult]) -> None:
    """``pytest hello.yaml`` (the file holds a string) names the file and what a suite looks like, instead of pytest's
    "not found" for a file that exists; a YAML file that is not a suite and was not named is still left alone."""
    (pytester.path / "hello.yaml").write_text("hello\n")
    (pytester.path / "ci.yaml").write_text("jobs: {test: {runs-on: ubuntu}}\n")
    result = run_plugin("hello.yaml", "--mriq-model=builtin:real")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*hello.yaml: the top level is a string ('hello'); a suite is a mapping with a top-level "
                                 "`mriq_suite:` key*`criteria:`*"])
    assert "not found" not in result.stdout.str() + result.stderr.str()
    result = run_plugin("--collect-only", "-q", "--mriq-model=builtin:real")
    assert "ci.yaml" not in result.stdout.str() and "hello.yaml" not in result.stdout.str()


def test_an_alias_bomb_names_the_line_and_key_where_it_expands(tmp_path: Path) -> None:
    """Each level holds 9 aliases of the one before: a0 stands for 2 nodes, a4 for 13942, a5 for 125479, the first over
    the limit of 100000 (line 8, ``mriq_suite.laughs.a5``)."""
    lines = ['a0: &a0 ["x"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("mriq_suite:\n  laughs:\n" + "".join(f"    {line}\n" for line in lines) + "  name: bomb\n")
    with pytest.raises(SuiteError) as err:
        load_suite(bomb)
    assert str(err.value).startswith(f"{bomb}:8: mriq_suite.laughs.a5: its YAML aliases expand to more than 100000 nodes"), str(err.value)
    deep = tmp_path / "deep.yaml"  # the bomb inside a list, used (not defined) under a criterion's params
    deep.write_text("b: &b [" + ", ".join(["x"] * 400) + "]\nmriq_suite:\n  criteria:\n    - id: A\n      params:\n"
                    "        big: [" + ", ".join(["*b"] * 300) + "]\n")
    with pytest.raises(SuiteError, match=r"deep.yaml:6: mriq_suite.criteria\[0\].params.big: its YAML aliases expand"):
        load_suite(deep)


@pytest.fixture
def ctx() -> ModelContext:
    return ModelContext(torch.zeros(0, 4, 16, 16), torch.zeros(0, 1, 16, 16, dtype=torch.int64), (4, 16, 16), torch.device("cpu"), 0)


@pytest.mark.parametrize("layout", ["components", "weights-only", "with-a-model-card-image"])
def test_a_diffusers_folder_without_model_index_is_named_not_read_as_images(tmp_path: Path, ctx: ModelContext, layout: str) -> None:
    folder = tmp_path / "pipe"
    if layout == "weights-only":
        folder.mkdir()
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    else:
        for name, file in (("unet", "config.json"), ("unet", "diffusion_pytorch_model.safetensors"), ("scheduler", "scheduler_config.json")):
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / file).write_text("{}")
        if layout == "with-a-model-card-image":
            from PIL import Image

            Image.new("L", (16, 16)).save(folder / "sample.png")
    with pytest.raises(ModelError) as err:
        load_model(str(folder), ctx, None)  # type: ignore[arg-type]
    msg = str(err.value)
    assert f"{folder} looks like a diffusers pipeline" in msg and "but has no model_index.json" in msg, msg
    assert "save_pretrained" in msg and "holds no images" not in msg, msg


def test_a_volume_in_x_y_z_order_of_another_shape_names_the_axis_order() -> None:
    """Where D ≠ W, an X×Y×Z answer has the wrong shape: the message names the axis order and the permutation."""
    with pytest.raises(ModelError) as err:
        check_images(torch.rand(2, 2, 24, 24, 16), 2, (2, 16, 24, 24), "model m generate()")
    msg = str(err.value)
    assert "returned shape (2, 2, 24, 24, 16)" in msg and "X×Y×Z (NIfTI, RAS) order" in msg, msg
    assert "x.permute(0, 1, 4, 3, 2).flip(3)" in msg, msg
