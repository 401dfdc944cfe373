"""Block influence and the greedy mimic-loss order: baselines from depth pruning of large models."""

import json

import numpy as np
import pytest

import model_zoo

from practise_jax import depth_criteria, pipeline, protocol
from practise_jax.errors import UserError
from practise_jax.transforms import views_for
from test_pipeline import tiny_config
from tiny_models import tiny_model

IMAGES = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), np.uint8)


def tau_csv(tmp_path) -> str:
    """10% a block for tiny_config's teacher: a tiny model's measured taus are noise (even negative under load)."""
    path = tmp_path / "tau.csv"
    path.write_text("block,tau\n" + "".join(f"{b},0.1\n" for b in protocol.candidates(model_zoo.create("cifar_resnet20", widths=(4, 8, 16)))))
    return str(path)


def model_with_a_silent_block(address="layer2.2"):
    """A tiny CIFAR ResNet whose block ``address`` adds nothing (last BN zeroed): its output is its input."""
    model = tiny_model("cifar_resnet20")
    block = next(b.module for b in protocol.blocks(model) if b.address == address)
    block.bn2.scale[...] = 0.0
    block.bn2.bias[...] = 0.0
    return model


def test_a_block_that_changes_nothing_has_no_influence():
    model = model_with_a_silent_block()
    influence = depth_criteria.block_influence(model, IMAGES, views_for(model.input_spec, 32), batch_size=10)
    assert set(influence) == set(protocol.candidates(model))
    assert influence["layer2.2"] == pytest.approx(0.0, abs=1e-6)
    assert min(v for b, v in influence.items() if b != "layer2.2") > 1e-3


def test_greedy_drops_the_harmless_block_first_and_re_evaluates():
    model = model_with_a_silent_block()
    tau = {b: 0.05 for b in protocol.candidates(model)}
    order = depth_criteria.greedy_order(model, IMAGES, views_for(model.input_spec, 32), tau, count=2, batch_size=10)
    assert order[0] == ("layer2.2", pytest.approx(0.0, abs=1e-9))
    assert order[1][1] > 0 and np.isnan(order[2][1]) and [b for b, _ in order] != []
    assert sorted(b for b, _ in order) == sorted(tau)  # every candidate listed once


@pytest.mark.parametrize("method", ["influence", "greedy"])
def test_compress_with_a_depth_criterion(tmp_path, method):
    config = tiny_config(tmp_path, method=method, tau_from=tau_csv(tmp_path))
    summary = pipeline.compress(config, tmp_path / method, progress=False, log=lambda m: None)
    selected = json.loads((tmp_path / method / "phases" / "selection.json").read_text())
    assert len(summary["dropped_blocks"]) == 2 and summary["method"] == method
    assert set(summary["dropped_blocks"]) <= set(selected["criterion"])


def test_progressive_practise_drops_in_rounds_and_re_scores(tmp_path):
    config = tiny_config(tmp_path, method="progressive", drop=None, speedup=0.3, rounds=2, round_finetune_steps=2,
                         tau_from=tau_csv(tmp_path))  # 10% a block, so the rounds' shares are known: 2 blocks, then 1
    summary = pipeline.compress(config, tmp_path / "progressive", progress=False, log=lambda m: None)
    selected = json.loads((tmp_path / "progressive" / "phases" / "selection.json").read_text())
    rounds = selected["rounds"]
    assert [len(r["dropped"]) for r in rounds] == [2, 1] and len(summary["dropped_blocks"]) == 3
    assert not set(rounds[0]["dropped"]) & set(rounds[1]["ranking"])  # round 2 re-scored only what round 1 left
    assert len(rounds[1]["ranking"]) == len(rounds[0]["ranking"]) - 2
    with pytest.raises(UserError, match="--speedup"):
        tiny_config(tmp_path, method="progressive").check()

