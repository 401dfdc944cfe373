"""The finetune loop: what each method trains, exact resume, NaN stop."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import model_zoo
from model_zoo.errors import UserError
from practise_jax import finetune as ft
from practise_jax.transforms import views_for

VIEW = views_for(model_zoo.get_info("cifar_resnet20"), 32).train


@pytest.fixture(scope="module")
def setup():
    teacher = model_zoo.create("cifar_resnet20", rngs=nnx.Rngs(0), widths=(4, 8, 16))
    teacher.eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16)
    return teacher, images, labels


def student_of(teacher):
    return model_zoo.prune(teacher, ["layer2.1"])


def params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


@pytest.mark.parametrize("method, head_trained", [("mimic", False), ("ce", True)])
def test_what_each_method_trains(setup, method, head_trained):
    teacher, images, labels = setup
    student = student_of(teacher)
    before = params(student)
    config = ft.FinetuneConfig(method=method, steps=3, batch_size=8, lr=0.01)
    trained, history = ft.finetune(student, teacher, images, labels, config, VIEW, progress=False)
    after = params(trained)
    assert not np.array_equal(before["conv1"]["kernel"], after["conv1"]["kernel"])
    head_changed = not np.array_equal(before["linear"]["kernel"], after["linear"]["kernel"])
    assert head_changed == head_trained
    assert any("loss" in h for h in history)


def test_mimic_loss_goes_down(setup):
    teacher, images, labels = setup
    config = ft.FinetuneConfig(steps=30, batch_size=16, lr=0.01, decay_every=1.0)
    _, history = ft.finetune(student_of(teacher), teacher, images, labels, config, VIEW, progress=False)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0]


def test_a_killed_run_resumes_exactly(setup, tmp_path):
    teacher, images, labels = setup
    config = ft.FinetuneConfig(steps=6, batch_size=8, lr=0.01, save_every=2)
    whole, _ = ft.finetune(student_of(teacher), teacher, images, labels, config, VIEW, progress=False)

    path = tmp_path / "state.npz"

    def kill(model):  # the evaluation at step 5 comes after the save at step 4: a kill there loses step 5
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ft.finetune(student_of(teacher), teacher, images, labels, dataclasses.replace(config, eval_every=5), VIEW,
                    evaluate=kill, state_path=path, progress=False)
    resumed, _ = ft.finetune(student_of(teacher), teacher, images, labels, config, VIEW, state_path=path, progress=False)
    jax.tree.map(np.testing.assert_allclose, params(resumed), params(whole))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_state(setup, tmp_path):
    teacher, images, labels = setup
    config = ft.FinetuneConfig(steps=50, batch_size=8, lr=1e6, save_every=1)
    path = tmp_path / "state.npz"
    with pytest.raises(UserError, match=r"at finetune step \d+") as error:
        ft.finetune(student_of(teacher), teacher, images, labels, config, VIEW, state_path=path, progress=False)
    assert path.exists() and "last good state" in str(error.value)


def test_unknown_method():
    with pytest.raises(UserError, match="mimic, ce, kd"):
        ft.FinetuneConfig(method="sgd")
