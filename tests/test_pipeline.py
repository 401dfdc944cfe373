"""The compress pipeline end to end on tiny settings: resume, refusal of foreign runs, the demo path."""

import dataclasses
import json

import pytest

import practise_jax
from practise_jax.errors import UserError
from practise_jax import checkpoint, pipeline
from practise_jax.demo import DemoSteps, run_demo


def tiny_config(tmp_path, **changes):
    import model_zoo
    teacher_dir = tmp_path / "teacher"
    if not teacher_dir.exists():
        checkpoint.save_compressed(teacher_dir, model_zoo.create("cifar_resnet20", widths=(4, 8, 16)))
    settings = dict(model="cifar_resnet20", weights=str(teacher_dir), data="synthetic:64:10:1",
                    eval_data="synthetic:32:10:2", shots=20, drop=2, recover_steps=2, finetune_steps=6,
                    batch_size=8, eval_every=3, latency_batch_size=2, latency_budget=0.1, latency_threads=0)
    settings.update(changes)
    return pipeline.CompressConfig(**settings)


def test_compress_writes_everything_and_resumes_a_killed_finetune(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    out = tmp_path / "run"
    from practise_jax import finetuning as ft

    original_save = ft.save_state

    def save_then_die(path, state):
        original_save(path, state)
        if state.step == 3:
            raise KeyboardInterrupt  # killed during finetuning, right after a saved state

    monkeypatch.setattr(ft, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.compress(config, out, progress=False, log=lambda m: None)
    assert not (out / "phases" / "finetune.json").exists()
    monkeypatch.setattr(ft, "save_state", original_save)

    from practise_jax.pipeline import phases

    def finished(*args, **kwargs):
        raise AssertionError("a finished phase was recomputed")

    for name in ("latency", "recoverability", "selection", "student"):
        monkeypatch.setitem(phases.RUNNERS, name, finished)
    from test_finetune import counting_steps

    ran = counting_steps(monkeypatch)
    summary = pipeline.compress(config, out, progress=False, log=lambda m: None)
    assert ran == [4, 5, 6]  # the finetune resumed after its last saved step
    monkeypatch.undo()
    for key in ("model", "method", "shots", "seed", "dropped_blocks", "scores", "latency_ms_teacher", "latency_ms_student",
                "latency_reduction", "top1_teacher", "top1_student", "device", "phase_seconds"):
        assert summary[key] is not None, key
    assert len(summary["dropped_blocks"]) == 2
    assert json.loads((out / "summary.json").read_text())["dropped_blocks"] == summary["dropped_blocks"]
    assert (out / "report.md").read_text().startswith("# cifar_resnet20")
    assert (out / "scores.png").stat().st_size > 0 and (out / "before_after.png").stat().st_size > 0
    model, spec = practise_jax.load_compressed(out / "student")
    assert spec.dropped == tuple(summary["dropped_blocks"])
    steps = [h["step"] for h in summary["history"] if "top1" in h]
    assert steps == [0, 3, 6]  # the start (right after dropping), then every eval_every steps

    # score once, compress again at another amount without scoring again
    from practise_jax import recoverability

    monkeypatch.setattr(recoverability, "recover_lockstep", finished)
    monkeypatch.setattr(recoverability, "recover_group", finished)
    again = pipeline.compress(dataclasses.replace(config, drop=1, scores_from=str(out)), tmp_path / "again",
                              progress=False, log=lambda m: None)
    monkeypatch.undo()
    assert again["dropped_blocks"] == [s["block"] for s in summary["scores"] if s["rank"] == 1]
    reused = json.loads((tmp_path / "again" / "phases" / "recoverability.json").read_text())["from"]
    assert reused == str(out / "recoverability.jsonl")
    with pytest.raises(UserError, match=r"other settings \(images differ\)"):  # another draw: its R cannot be reused
        pipeline.compress(dataclasses.replace(config, balanced=True, scores_from=str(out)), tmp_path / "other",
                          progress=False, log=lambda m: None)


def test_a_run_of_another_model_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"model": "resnet18"}))
    with pytest.raises(UserError, match="of model resnet18.*--overwrite"):
        pipeline.compress(tiny_config(tmp_path), out, progress=False, log=lambda m: None)


@pytest.mark.parametrize("changes, words", [
    (dict(drop=None), "exactly one of"),
    (dict(drop=7), "cannot drop 7 blocks"),
    (dict(shots=1000), "more images than the data holds"),
    (dict(drop=None, speedup=0.99, method="first-k"), "out of reach"),
])
def test_bad_requests_are_refused_clearly(tmp_path, changes, words):
    with pytest.raises(UserError, match=words):
        pipeline.compress(tiny_config(tmp_path, **changes), tmp_path / "run", progress=False, log=lambda m: None)


def test_demo_on_real_data_runs_the_same_path_with_fewer_steps(tmp_path, shared_data):
    summary = run_demo(tmp_path, DemoSteps(recover=2, finetune=4, latency_budget=0.1, eval_limit=64), data_dir=shared_data,
                       log=lambda m: None)
    assert summary["weights"].endswith("resnet20-12fca82f.th") and summary["top1_teacher"] > 85
    assert (tmp_path / "run" / "report.md").exists()


def test_demo_without_data_trains_its_own_teacher(tmp_path):
    messages = []
    summary = run_demo(tmp_path, DemoSteps(recover=2, finetune=4, teacher=20, latency_budget=0.1), data_dir=None,
                       log=messages.append)
    assert any("no real data found" in m for m in messages)
    assert summary["weights"].endswith("synthetic_teacher") and len(summary["dropped_blocks"]) == 2
