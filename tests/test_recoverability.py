"""Adaptor training changes only adaptors, R is reproducible, and a killed scoring run resumes."""

import jax
import numpy as np
import pytest
from flax import nnx

import practise_jax as pj
from practise_jax import recoverability as rec
from practise_jax.adaptors import Adaptor
from practise_jax.errors import UserError
from practise_jax.store import ResultsStore
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def teacher():
    return tiny_model("cifar_resnet20", dropped=())


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def views(teacher, images):
    return pj.views(teacher, images)


CONFIG = rec.RecoverConfig(steps=4, batch_size=8, lr=0.002)
# Training that moves R well beyond the tolerances below (random tiny features are small: lr 1 is needed).
TRAIN = rec.RecoverConfig(steps=6, batch_size=8, lr=1.0)


def trained_enough(record) -> bool:
    """The adaptors changed R by far more than the comparisons' tolerance (1e-4)."""
    return (record["raw_distance"] - record["recoverability"]) / record["recoverability"] > 1e-2


def recover(teacher, block, images, views, config=CONFIG):
    return rec.recover_lockstep(teacher, [block], images, views, config)[0]


def test_step_decay_schedule_matches_steplr():
    config = rec.RecoverConfig(steps=10, lr=1.0)
    schedule = [float(x) for x in map(lambda t: 1.0 * 0.1 ** (t // 4), range(10))]
    tx = rec.adaptor_optimizer(config)
    params = {"w": jax.numpy.zeros(())}
    state = tx.init(params)
    seen = []
    for _ in range(10):  # with momentum 0.9 and a constant gradient 1 the lr shows in the first update after each drop
        updates, state = tx.update({"w": jax.numpy.ones(())}, state, params)
        seen.append(float(updates["w"]))
    assert seen[0] == pytest.approx(-schedule[0] * 1.0)
    assert abs(seen[4]) < abs(seen[3]) / 5  # x0.1 at 40 % of the steps
    assert abs(seen[8]) < abs(seen[7]) / 5  # and again at 80 %


def test_batches_drop_the_last_partial_batch():
    batches = rec.batch_indices(10, 4, np.random.RandomState(0))
    two_epochs = [next(batches) for _ in range(4)]  # a third batch of an epoch would hold the 2 left over
    assert all(len(b) == 4 for b in two_epochs)
    assert len(set(np.concatenate(two_epochs[:2]))) == 8 and len(set(np.concatenate(two_epochs[2:]))) == 8
    small = rec.batch_indices(3, 4, np.random.RandomState(0))
    assert sorted(next(small)) == [0, 1, 2]


def test_training_moves_only_the_adaptors(teacher, images, views):
    before = jax.tree.map(np.array, nnx.state(teacher))
    [(candidate, trained, result)] = rec.train_lockstep(teacher, [["layer2.1"]], images, views, CONFIG)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, nnx.state(teacher)))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, candidate.frozen),
                 jax.tree.map(np.array, rec.build_candidate(teacher, ["layer2.1"]).frozen))
    assert not all(np.array_equal(a, np.eye(a.shape[0])) for a in jax.tree.leaves(trained)), "the adaptors must move"
    assert result["recoverability"] < result["raw_distance"], "training the adaptors must reduce the distance"
    assert result["adaptor_sites"] == ["layer2.0.conv2:post", "layer2.2.conv1:pre", "layer3.0.conv1:pre"]


def test_recovery_is_deterministic(teacher, images, views):
    assert recover(teacher, "layer1.1", images, views)["recoverability"] == recover(teacher, "layer1.1", images, views)["recoverability"]


def test_resume_recomputes_nothing(teacher, images, views, tmp_path, monkeypatch):
    settings = rec.scoring_settings(teacher, images, views, CONFIG)
    store = ResultsStore(tmp_path / "r.jsonl", settings)
    first = rec.score_candidates(teacher, ["layer1.1", "layer3.1"], images, views, CONFIG, store)

    def fail(*args, **kwargs):
        raise AssertionError("a finished candidate was recomputed")

    monkeypatch.setattr(rec, "recover_lockstep", fail)
    again = rec.score_candidates(teacher, ["layer1.1", "layer3.1"], images, views, CONFIG,
                                 ResultsStore(tmp_path / "r.jsonl", settings))
    assert [r["recoverability"] for r in again] == [r["recoverability"] for r in first]
    with pytest.raises(AssertionError, match="recomputed"):  # the patch is live: a new candidate would be trained
        rec.score_candidates(teacher, ["layer2.1"], images, views, CONFIG, ResultsStore(tmp_path / "r.jsonl", settings))


def test_store_key_holds_everything_r_depends_on(teacher, images, views):
    """The teacher's weights, the images themselves (so the draw), the views and the settings."""
    base = rec.scoring_settings(teacher, images, views, CONFIG)
    other_draw = images[::-1].copy()
    assert rec.scoring_settings(teacher, other_draw, views, CONFIG)["images"] != base["images"]
    other_teacher = tiny_model("cifar_resnet20", seed=3, dropped=())
    assert rec.scoring_settings(other_teacher, images, views, CONFIG)["teacher"] != base["teacher"]
    other_views = pj.views(teacher, images, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert rec.scoring_settings(teacher, images, other_views, CONFIG)["views"] != base["views"]
    assert rec.scoring_settings(teacher, images, views, rec.RecoverConfig(steps=5, batch_size=8, lr=0.002)) != base


def test_store_refuses_other_settings_and_survives_a_cut_line(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path, {"steps": 4})
    store.put("layer1.1", {"recoverability": 1.0})
    with path.open("a") as file:
        file.write('{"key": "layer1.2", "recov')  # killed mid-write
    reopened = ResultsStore(path, {"steps": 4})
    assert "layer1.1" in reopened and "layer1.2" not in reopened
    reopened.put("layer1.2", {"recoverability": 2.0})
    assert ResultsStore(path, {"steps": 4}).get("layer1.2")["recoverability"] == 2.0
    with pytest.raises(UserError, match="steps"):
        ResultsStore(path, {"steps": 8})


def test_processes_sharing_a_store_keep_one_settings_line_and_every_record(tmp_path):
    """Candidates split over cores write one store: the header is made once, each record is kept."""
    path = tmp_path / "r.jsonl"
    first, second = ResultsStore(path, {"steps": 4}), ResultsStore(path, {"steps": 4})
    first.put("layer1.1", {"recoverability": 1.0})
    second.put("layer1.2", {"recoverability": 2.0})
    assert [line.startswith('{"settings"') for line in path.read_text().splitlines()] == [True, False, False]
    assert {"layer1.1", "layer1.2"} <= set(ResultsStore(path, {"steps": 4}).records)
    late = object.__new__(ResultsStore)  # lost the race: the store appeared after its existence check
    late.path, late.settings = path, {"steps": 4}
    assert late._create() is False and path.read_text().count("settings") == 1
    assert [f.name for f in tmp_path.iterdir()] == ["r.jsonl"]  # no draft left behind
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # killed before its first line
    ResultsStore(empty, {"steps": 4}).put("layer1.1", {"recoverability": 1.0})
    assert ResultsStore(empty, {"steps": 4}).get("layer1.1")["recoverability"] == 1.0


def test_zero_steps_is_refused():
    with pytest.raises(UserError, match="at least 1 step"):
        rec.RecoverConfig(steps=0)


def test_lockstep_training_equals_one_at_a_time(teacher, images, views):
    """Candidates of different stages share one teacher pass per step and still train as they would alone."""
    blocks = ["layer1.1", "layer2.1", "layer3.1"]
    one = [rec.train_lockstep(teacher, [[b]], images, views, TRAIN)[0] for b in blocks]
    together = rec.train_lockstep(teacher, [[b] for b in blocks], images, views, TRAIN)
    for (_, solo_adaptors, a), (_, adaptors, b) in zip(one, together):
        assert trained_enough(a) and a["adaptor_sites"] == b["adaptor_sites"]
        assert b["raw_distance"] == pytest.approx(a["raw_distance"], rel=1e-5)
        assert b["recoverability"] == pytest.approx(a["recoverability"], rel=1e-4)
        assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-4)
        for x, y in zip(jax.tree.leaves(solo_adaptors), jax.tree.leaves(adaptors)):  # the updates themselves
            np.testing.assert_allclose(np.asarray(y) - np.eye(len(y)), np.asarray(x) - np.eye(len(x)), rtol=1e-3, atol=1e-7)


def test_block_inputs_of_one_pass_start_the_forward_where_they_were_taken(teacher, images, views):
    x = views.eval(images[:4])
    inputs = teacher.block_inputs(x, ["layer3.1", "layer1.1", "layer2.0"])
    assert sorted(inputs) == ["layer1.1", "layer2.0", "layer3.1"]
    full = np.asarray(teacher(x)[0])
    for address, h in inputs.items():
        np.testing.assert_allclose(np.asarray(teacher(h, start=address)[0]), full, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="no residual block"):
        teacher.block_inputs(x, ["layer9.1"])


def test_vmapped_scoring_equals_one_at_a_time(images):
    """A group shares the union of its sites; each candidate's other sites must act as the identity.

    In a stage of 9 blocks, dropping layer2.1 adapts layer2.2.conv1 (pre) and dropping layer2.3 adapts
    layer2.2.conv2 (post): each candidate carries the other's site in a block it keeps.
    """
    teacher = tiny_model("cifar_resnet56", dropped=())
    views = pj.views(teacher, images)
    blocks = ["layer2.1", "layer2.3"]
    one = [recover(teacher, b, images, views, TRAIN) for b in blocks]
    together = rec.recover_group(teacher, blocks, images, views, TRAIN)
    for a, b in zip(one, together):
        assert trained_enough(a) and a["block"] == b["block"] and a["adaptor_sites"] == b["adaptor_sites"]
        assert b["raw_distance"] == pytest.approx(a["raw_distance"], rel=1e-5)
        assert b["recoverability"] == pytest.approx(a["recoverability"], rel=1e-4)
        assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], rel=1e-4)


def test_folded_recovered_student_keeps_its_recovered_features(teacher, images, views):
    student, figures = rec.recovered_student(teacher, ["layer1.1", "layer1.2"], images, views, TRAIN)
    assert trained_enough(figures)
    assert not jax.tree.leaves(nnx.state(student, Adaptor))
    assert pj.protocol.dropped(student) == ("layer1.1", "layer1.2")
    x = views.eval(images)
    target = teacher(x)[1]["pre_gap"]
    distance = float(np.mean(np.square(np.asarray(student(x)[1]["pre_gap"] - target))))
    assert distance == pytest.approx(figures["recoverability"], rel=1e-4)  # not the raw distance: the adaptors are in


def test_the_metric_traces_its_students_once_for_all_batches_of_a_size(monkeypatch):
    """Three metric batches of one size share one compiled function (not a program per batch)."""
    teacher = tiny_model("cifar_resnet20", dropped=())
    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    views = pj.views(teacher, images)
    candidates = [rec.build_candidate(teacher, [block]) for block in ("layer1.1", "layer1.2")]
    targets = rec.teacher_targets(teacher, images, views, 8)
    traced, original = [], rec._student_features
    monkeypatch.setattr(rec, "_student_features", lambda *args: traced.append(1) or original(*args))
    metric = rec.make_metric(teacher, candidates, images, views, targets, 8)
    assert metric([c.adaptors for c in candidates]) == metric([c.adaptors for c in candidates])
    assert len(traced) == len(candidates)
