import pytest

import model_zoo
from model_zoo import blocks
from model_zoo.errors import UserError


def test_renumber_shifts_kept_blocks_within_their_stage():
    arch = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1"]
    assert blocks.renumber(arch, ["layer1.1"]) == {
        "layer1.0": "layer1.0", "layer1.1": "layer1.2", "layer2.0": "layer2.0", "layer2.1": "layer2.1",
    }


def test_mobilenet_renumbers_over_features():
    info = model_zoo.get_info("mobilenet_v2")
    mapping = blocks.renumber(info.blocks, ["features.3", "features.9"])
    assert mapping["features.3"] == "features.4"
    assert mapping["features.8"] == "features.10"
    assert len(mapping) == 17


@pytest.mark.parametrize("name, count", [
    ("resnet18", 4), ("resnet34", 12), ("resnet50", 12), ("mobilenet_v2", 10),
    ("cifar_resnet20", 6), ("cifar_resnet56", 24), ("cifar_resnet110", 51),
])
def test_candidate_counts_follow_the_reference_rule(name, count):
    info = model_zoo.get_info(name)
    assert len(info.droppable) == count
    assert not any(address.endswith(".0") for address in info.droppable)


def test_mobilenet_candidates_are_the_specs_list():
    assert model_zoo.get_info("mobilenet_v2").droppable == tuple(
        f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16))


def test_pruned_model_reports_renumbered_layout():
    model = model_zoo.create("cifar_resnet20", dropped=["layer2.1"], widths=(4, 4, 8))
    assert model.dropped == ("layer2.1",)
    assert model.blocks == ("layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer3.2")
    assert model.origin[4] == "layer2.2"
    assert model.droppable == ("layer1.1", "layer1.2", "layer2.1", "layer3.1", "layer3.2")


@pytest.mark.parametrize("address, words", [
    ("layer1.0", "cannot be dropped"), ("layer9.1", "has no block"), ("layer2.0", "cannot be dropped"),
])
def test_bad_drop_sets_name_the_droppable_blocks(address, words):
    with pytest.raises(UserError, match=words) as error:
        model_zoo.create("cifar_resnet20", dropped=[address], widths=(4, 4, 8))
    assert "layer3.2" in str(error.value)  # the message lists what can be dropped


def test_duplicate_drop_is_refused():
    with pytest.raises(UserError, match="twice"):
        model_zoo.create("cifar_resnet20", dropped=["layer1.1", "layer1.1"], widths=(4, 4, 8))


def test_parse_block_list():
    assert blocks.parse_block_list(" layer1.1, layer2.3 ,") == ("layer1.1", "layer2.3")
    assert blocks.parse_block_list(None) == ()


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(UserError, match="Did you mean 'resnet34'"):
        model_zoo.get_info("resnet43")
