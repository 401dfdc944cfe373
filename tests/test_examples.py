"""Every example runs (at tiny size), and the README's Python section is the quickstart example."""

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
README = Path(__file__).resolve().parents[1] / "README.md"


def run_example(name: str, *argv: str, monkeypatch) -> dict:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *argv])
    return runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_the_readme_python_section_is_the_quickstart_example():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert block == (EXAMPLES / "quickstart.py").read_text()


def test_plain_api_examples_are_short():
    for name in ("quickstart.py", "baselines.py"):
        assert len((EXAMPLES / name).read_text().splitlines()) <= 30, name


@pytest.mark.parametrize("name", ["quickstart.py", "baselines.py"])
def test_plain_api_example_runs(name, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("PRACTISE_DATA", str(shared_data))
    run_example(name, "--quick", monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert "top-1" in printed


def test_custom_resnet_reproduces_the_converted_checkpoint_and_compresses(tmp_path, shared_data, monkeypatch):
    """A model the zoo does not have: the stand-in checkpoint of its own layout gives the real top-1 (91.64%)."""
    module = runpy.run_path(str(EXAMPLES / "custom_resnet.py"))
    result = module["main"](["--data-dir", str(shared_data), "--shots", "32", "--adaptor-steps", "2",
                             "--finetune-steps", "2", "--latency-repeats", "1", "--drop", "2", "--out", str(tmp_path)])
    assert result["real"] and result["teacher_top1"] == pytest.approx(91.64, abs=0.005)
    assert result["dropped"] and 0 < result["student_top1"] <= 100 and np.isfinite(result["tau"])
    assert (tmp_path / "student" / "architecture.json").is_file()


def test_custom_resnet_without_data_runs_on_random_weights(tmp_path):
    module = runpy.run_path(str(EXAMPLES / "custom_resnet.py"))
    result = module["main"](["--data-dir", str(tmp_path / "none"), "--shots", "16", "--adaptor-steps", "1",
                             "--finetune-steps", "1", "--latency-repeats", "1", "--drop", "2", "--out", str(tmp_path)])
    assert not result["real"] and result["dropped"]


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_example_is_short_and_gives_a_keras_model(tmp_path, monkeypatch, capsys):
    require("keras", "pip install 'practise-jax[keras]'")
    assert len((EXAMPLES / "keras_mobilenet_v2.py").read_text().splitlines()) <= 20
    assert (EXAMPLES / "keras_mobilenet_v2.py").read_text() in README.read_text()
    monkeypatch.chdir(tmp_path)
    run_example("keras_mobilenet_v2.py", "--quick", monkeypatch=monkeypatch)
    assert "block_" in capsys.readouterr().out
    assert (tmp_path / "mobilenet_v2_compressed.keras").is_file()

