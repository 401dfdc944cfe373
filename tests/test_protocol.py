"""The model protocol and static dropping: addresses, droppability, errors, and what a dropped block becomes."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import model_zoo
import practise_jax as pj
from practise_jax import protocol, surgery
from practise_jax.errors import UserError
from tiny_models import images, logits, tiny_model


@pytest.mark.parametrize("name, count", [
    ("resnet18", 4), ("resnet34", 12), ("resnet50", 12), ("mobilenet_v2", 10),
    ("cifar_resnet20", 6), ("cifar_resnet56", 24), ("cifar_resnet110", 51),
])
def test_candidate_counts_follow_the_reference_rule(name, count):
    model = nnx.eval_shape(lambda: model_zoo.create(name))
    assert len(protocol.candidates(model)) == count == len(model_zoo.get_info(name).droppable)
    assert not any(address.endswith(".0") for address in protocol.candidates(model))


def test_mobilenet_candidates_are_the_specs_list():
    assert model_zoo.get_info("mobilenet_v2").droppable == tuple(
        f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16))


def test_dropped_blocks_keep_the_teachers_addresses_and_compose():
    teacher = tiny_model("cifar_resnet20", dropped=())
    student = pj.drop(teacher, ["layer2.1"])
    assert protocol.dropped(student) == ("layer2.1",)
    assert isinstance(student.layer2[1], protocol.DroppedBlock) and not isinstance(teacher.layer2[1], protocol.DroppedBlock)
    assert protocol.candidates(student) == ("layer1.1", "layer1.2", "layer2.2", "layer3.1", "layer3.2")
    assert student.layer2[2].conv1.kernel.get_value() is teacher.layer2[2].conv1.kernel.get_value()  # arrays shared
    again = pj.drop(student, ["layer1.2"])
    once = pj.drop(teacher, ["layer1.2", "layer2.1"])
    assert protocol.dropped(again) == protocol.dropped(once) == ("layer1.2", "layer2.1")
    x = images("cifar_resnet20")
    np.testing.assert_array_equal(logits(again, x), logits(once, x))
    assert not nnx.state(student.layer2[1])  # a dropped block holds no weights


@pytest.mark.parametrize("address, words", [
    ("layer1.0", "cannot be dropped"), ("layer9.1", "has no block"), ("layer2.0", "cannot be dropped"),
])
def test_bad_drop_sets_name_the_droppable_blocks(address, words):
    teacher = tiny_model("cifar_resnet20", dropped=())
    with pytest.raises(UserError, match=words) as error:
        pj.drop(teacher, [address])
    assert "layer3.2" in str(error.value)  # the message lists what can be dropped


def test_duplicate_and_repeated_drops_are_refused():
    teacher = tiny_model("cifar_resnet20", dropped=())
    with pytest.raises(UserError, match="twice"):
        pj.drop(teacher, ["layer1.1", "layer1.1"])
    with pytest.raises(UserError, match="already dropped"):
        pj.drop(pj.drop(teacher, ["layer1.1"]), ["layer1.1"])


def test_parse_block_list_and_addresses():
    assert protocol.parse_block_list(" layer1.1, layer2.3 ,") == ("layer1.1", "layer2.3")
    assert protocol.parse_block_list(None) == ()
    assert protocol.split_address("features.10") == ("features", 10)
    with pytest.raises(UserError, match="not a block address"):
        protocol.split_address("layer")


def test_unknown_model_suggests_a_close_name():
    with pytest.raises(UserError, match="Did you mean 'resnet34'"):
        model_zoo.get_info("resnet43")


class NoStream(nnx.Module):
    def __call__(self, x):
        return x


class Broken(nnx.Module):
    droppable = ("b.1",)

    def __init__(self, stream_on_b1: bool, identity: bool = True):
        self.b0, self.b1 = NoStream(), NoStream()
        self.b0.stream = protocol.Stream(("c",), ("c",), identity=False)
        if stream_on_b1:
            self.b1.stream = protocol.Stream(("c",), ("c",), identity=identity)

    def residual_blocks(self):
        return [("b.0", self.b0), ("b.1", self.b1)]


def test_a_model_outside_the_protocol_gets_one_clear_message():
    with pytest.raises(UserError, match="does not follow the practise-jax model protocol"):
        protocol.check(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match="block 'b.1' of Broken .* has no practise_jax.Stream"):
        protocol.check(Broken(stream_on_b1=False))
    with pytest.raises(UserError, match="whose shortcut is not the identity"):
        protocol.check(Broken(stream_on_b1=True, identity=False))
    protocol.check(Broken(stream_on_b1=True))


def test_surgery_paths():
    teacher = tiny_model("mobilenet_v2", dropped=())
    conv = surgery.get(teacher, "features.3.conv.2")
    assert isinstance(conv, nnx.Conv) and surgery.path_of(teacher, conv) == "features.3.conv.2"
    assert surgery.block_paths(teacher)["features.9"] == "features.9"
    with pytest.raises(UserError, match="no submodule 'features.3.conv.9'"):
        surgery.get(teacher, "features.3.conv.9")


def test_masks_order_follows_droppable():
    teacher = tiny_model("cifar_resnet20", dropped=())
    np.testing.assert_array_equal(protocol.mask_of(teacher, ["layer2.1"]), jnp.asarray([1, 1, 0, 1, 1, 1.0]))
