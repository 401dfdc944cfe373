"""The finetune loop: what each loss trains, exact resume, the NaN stop, no teacher for CE."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx

import practise_jax as pj
from practise_jax import finetuning as ft
from practise_jax.data.imageset import ImageSet
from practise_jax.errors import UserError
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def setup():
    teacher = tiny_model("cifar_resnet20", dropped=())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16)
    return teacher, images, labels, pj.views(teacher, images).train


def student_of(teacher):
    return pj.drop(teacher, ["layer2.1"])


def params(model):
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


@pytest.mark.parametrize("loss, kd_weight, head_trained", [("mimic", 0.0, False), ("mimic", 1.0, False), ("ce", 0.0, True)])
def test_what_each_loss_trains(setup, loss, kd_weight, head_trained):
    """The mimic loss leaves the classifier as it is, even with KD added (whose gradient reaches it)."""
    teacher, images, labels, view = setup
    student = student_of(teacher)
    before = params(student)
    config = ft.FinetuneConfig(loss=loss, steps=3, batch_size=8, lr=0.01, kd_weight=kd_weight)
    trained, history = ft.finetune(student, teacher, images, labels, config, view)
    after = params(trained)
    assert not np.array_equal(before["conv1"]["kernel"], after["conv1"]["kernel"])
    head_changed = not np.array_equal(before["linear"]["kernel"], after["linear"]["kernel"])
    assert head_changed == head_trained
    assert any("loss" in h for h in history)


def test_mimic_loss_goes_down_and_is_read_back_in_batches(setup):
    teacher, images, labels, view = setup
    config = ft.FinetuneConfig(steps=30, batch_size=16, lr=0.01, decay_every=1.0, log_every=7)
    _, history = ft.finetune(student_of(teacher), teacher, images, labels, config, view)
    losses = [h for h in history if "loss" in h]
    assert [h["step"] for h in losses] == [10, 20, 30]
    assert losses[-1]["loss"] < losses[0]["loss"]


def counting_steps(monkeypatch) -> list[int]:
    """Record the index of every finetune step the loop runs (the step function is looked up per run)."""
    ran, make_step = [], ft.make_step

    def counting(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def run(*step_args):
            ran.append(int(step_args[-1]))
            return step(*step_args)

        return run

    monkeypatch.setattr(ft, "make_step", counting)
    return ran


def test_a_killed_run_resumes_exactly(setup, tmp_path, monkeypatch):
    teacher, images, labels, view = setup
    config = ft.FinetuneConfig(steps=6, batch_size=8, lr=0.01, save_every=2)
    whole, _ = ft.finetune(student_of(teacher), teacher, images, labels, config, view)
    path = tmp_path / "state.npz"

    evaluations = []

    def kill(model):  # evaluations run at the start and at step 5, after the save at step 4: a kill then loses step 5
        evaluations.append(model)
        if len(evaluations) == 2:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        ft.finetune(student_of(teacher), teacher, images, labels, dataclasses.replace(config, eval_every=5), view,
                    evaluate=kill, state_path=path)
    ran = counting_steps(monkeypatch)
    resumed, _ = ft.finetune(student_of(teacher), teacher, images, labels, config, view, state_path=path)
    assert ran == [5, 6]  # resumed after the saved step 4, not started over
    jax.tree.map(np.testing.assert_allclose, params(resumed), params(whole))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(setup, tmp_path):
    teacher, images, labels, view = setup
    config = ft.FinetuneConfig(steps=50, batch_size=8, lr=1e6)  # the loss is read back every 10 steps only
    path = tmp_path / "state.npz"
    with pytest.raises(UserError, match=r"diverged at finetune step (\d+) .*the last good state \(step (\d+)\)") as error:
        ft.finetune(student_of(teacher), teacher, images, labels, config, view, state_path=path)
    bad = int(str(error.value).split("finetune step ")[1].split(" ")[0])
    template = ft.TrainState(0, *nnx.split(student_of(teacher), nnx.Param, ...)[1:], None, [])
    tx = ft.optimizer(config, ft.trainable_mask(template.params, "linear", "mimic"))
    template.opt_state = tx.init(template.params)
    saved = ft.load_state(path, template)
    assert saved.step == bad - 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(saved.params))


def test_ce_needs_labels_not_a_teacher_and_mimic_needs_a_teacher(setup):
    teacher, images, labels, _ = setup
    student, history = pj.finetune(student_of(teacher), images, labels=labels, loss="ce", steps=2, batch_size=8)
    assert history[-2]["step"] == 2
    with pytest.raises(UserError, match="learns from a teacher"):
        pj.finetune(student_of(teacher), images, steps=2)
    with pytest.raises(UserError, match="needs the images' labels"):
        pj.finetune(student_of(teacher), images, loss="ce", steps=2)


def test_unknown_loss():
    with pytest.raises(UserError, match="mimic, ce, kd"):
        ft.FinetuneConfig(loss="sgd")


def test_recipe_losses_are_the_sums_they_say(setup):
    """mimic_at='stages' sums every stage's MSE (the last stage's output is pre_gap); kd_weight adds that much KD."""
    teacher, images, labels, view = setup
    student = student_of(teacher)
    x = view(jax.random.key(0), images)
    student_logits, student_features = student(x)
    teacher_logits, teacher_features = teacher(x)
    args = (student_logits, student_features, teacher_logits, teacher_features, labels)

    def loss(**recipe):
        return float(ft.make_loss(ft.FinetuneConfig(**recipe))(*args))

    mse = {k: float(np.mean((np.asarray(student_features[k]) - np.asarray(teacher_features[k])) ** 2))
           for k in ("layer1", "layer2", "pre_gap")}
    kd = float(ft.make_loss(ft.FinetuneConfig(loss="kd"))(*args))
    assert loss() == pytest.approx(mse["pre_gap"], rel=1e-5)
    assert loss(mimic_at=("stages",)) == pytest.approx(sum(mse.values()), rel=1e-5)
    assert loss(mimic_at=("layer1", "pre_gap")) == pytest.approx(mse["layer1"] + mse["pre_gap"], rel=1e-5)
    assert loss(kd_weight=0.5) == pytest.approx(mse["pre_gap"] + 0.5 * kd, rel=1e-5)
    assert kd > 0 and mse["layer2"] > 0  # the student lacks layer2.1: both terms see it


def test_batch_norm_reestimate_averages_the_tiny_sets_statistics(setup):
    """The stem BatchNorm sees the stem conv's output: its new statistics are that output's mean and variance per batch, averaged."""
    from practise_jax import batch_norm

    teacher, images, _, view = setup
    student = student_of(teacher)
    stats_before = jax.tree.map(np.asarray, nnx.state(student, nnx.BatchStat))
    tuned = batch_norm.reestimate(student, images, view, batch_size=8, seed=3)
    order = np.random.RandomState(3).permutation(len(images))
    keys = jax.random.split(jax.random.key(3), 2)
    stem = [np.asarray(student.conv1(view(key, images[order[i:i + 8]]))) for key, i in zip(keys, (0, 8))]
    np.testing.assert_allclose(tuned.bn1.mean[...], np.mean([s.mean(axis=(0, 1, 2)) for s in stem], axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tuned.bn1.var[...], np.mean([s.var(axis=(0, 1, 2)) for s in stem], axis=0), rtol=1e-4, atol=1e-5)
    assert tuned.bn1.momentum == student.bn1.momentum  # the copy keeps its own BatchNorm settings
    unchanged = jax.tree.map(np.asarray, nnx.state(student, nnx.BatchStat))  # the given model is left as it was
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats_before), jax.tree.leaves(unchanged)))


def test_recipe_mistakes_are_named(setup):
    teacher, images, labels, view = setup
    with pytest.raises(UserError, match="the kd loss takes neither"):
        ft.FinetuneConfig(loss="kd", kd_weight=1.0)
    with pytest.raises(UserError, match="kd_weight must be 0 or more"):
        ft.FinetuneConfig(kd_weight=-1.0)
    with pytest.raises(UserError, match="cannot mimic layer9: the student and teacher share the features layer1"):
        ft.finetune(student_of(teacher), teacher, images, labels, ft.FinetuneConfig(steps=1, batch_size=8, mimic_at=("layer9",)), view)


def test_zoo_convs_backward_equals_lax_and_stores_the_operands():
    """The zoo's conv (practise_jax.conv_backward) gives lax's values and gradients; on a CPU its backward pass holds the conditional."""
    from jax import lax

    from practise_jax import conv_backward

    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(4, 9, 9, 8)), jax.numpy.float32)
    for stride, groups in ((1, 1), (2, 1), (2, 8)):
        w = jax.numpy.asarray(rng.normal(size=(3, 3, 8 // groups, 8)), jax.numpy.float32)

        def loss(conv, x, w):
            y = conv(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
            return jax.numpy.sum(jax.numpy.sin(jax.nn.relu(y) + x.mean()))

        ours = jax.jit(jax.value_and_grad(functools.partial(loss, conv_backward.conv_general_dilated), (0, 1)))(x, w)
        plain = jax.jit(jax.value_and_grad(functools.partial(loss, lax.conv_general_dilated), (0, 1)))(x, w)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    def compiled(conv):
        return jax.jit(jax.grad(functools.partial(loss, conv), 1)).lower(x, w).compile().as_text()

    assert "conditional(" in compiled(conv_backward.conv_general_dilated) and "conditional(" not in compiled(lax.conv_general_dilated)
    model = tiny_model("cifar_resnet20", dropped=())
    assert all(m.conv_general_dilated is conv_backward.conv_general_dilated
               for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv))


def test_evaluation_compiles_once_for_weights_spread_over_devices_or_not():
    """Finetuning places the weights on every device; evaluating them and a one-device copy shares one program."""
    from practise_jax import devices, evaluation

    model = tiny_model("cifar_resnet20")
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    data = ImageSet(images, np.arange(8) % 10, "random")
    views = pj.views(model, images)
    graphdef, state = nnx.split(model)
    spread = nnx.merge(graphdef, devices.Placement(devices.batch_mesh(jax.devices())).everywhere(jax.tree.map(np.asarray, state)))
    first = evaluation.predict(spread, data, views, batch_size=8)
    second = evaluation.predict(model, data, views, batch_size=8)
    np.testing.assert_array_equal(first, second)
    assert evaluation._classifier(graphdef, views)._cache_size() == 1
