"""Smoke versions of the long experiment scripts: same code paths, tiny steps, seconds each."""

import csv
import json
import sys
from pathlib import Path

import jax
import pytest
from conftest import require

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import cifar_checkpoint_accuracy  # noqa: E402
import cost_study  # noqa: E402
import data_free  # noqa: E402
import latency_additivity  # noqa: E402
import latency_estimators  # noqa: E402
import latency_gpu  # noqa: E402
import latency_repeatability  # noqa: E402
import main_table  # noqa: E402
import profile_finetune_step  # noqa: E402
import recoverability_vs_accuracy  # noqa: E402
from practise_jax.cli import main as cli_main  # noqa: E402


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def fixed_tau(tmp_path, model="cifar_resnet20"):
    """A tau CSV of 10% a block: rows that need single-block tau get it without timing a tiny model, whose taus
    are noise (they can sum below zero on a loaded machine)."""
    import model_zoo
    from practise_jax import protocol

    path = tmp_path / "tau.csv"
    path.write_text("block,tau\n" + "".join(f"{b},0.1\n" for b in protocol.candidates(model_zoo.create(model))))
    return str(path)


def test_main_table_runs_every_row_and_resumes(tmp_path, monkeypatch):
    args = ["--model", "cifar_resnet20", "--weights", "random", "--train-data", "synthetic:64:10:1",
            "--test-data", "synthetic:40:10:2", "--prefix", "20", "--shots", "20", "--seeds", "1", "--tau", fixed_tau(tmp_path),
            "--speedup", "0.05", "--rows", "bp,random,practise,practise-folded", "--recover-steps", "2",
            "--finetune-steps", "2", "--latency-budget", "0.01", "--latency-batch-size", "16",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "table.csv")]
    assert main_table.main(args) == 0
    rows = read_csv(tmp_path / "table.csv")
    assert [r["row"] for r in rows] == ["bp", "random", "practise", "practise-folded"]
    assert rows[0]["finetune"] == "ce" and rows[3]["finetune_start"] == "folded"
    assert rows[2]["dropped"] == rows[3]["dropped"]  # the folded row reuses the practise selection
    work = tmp_path / "work"
    reused = json.loads((work / "practise-folded_20shots_seed1" / "phases" / "recoverability.json").read_text())["from"]
    assert reused == str(work / "practise_20shots_seed1" / "recoverability.jsonl")
    summary = read_csv(tmp_path / "table_summary.csv")
    assert summary[0]["row"] == "teacher" and len(summary) == 5 and "class_mean_std" in summary[0]
    # a rerun reads every finished run back: nothing is computed or evaluated again
    from practise_jax.pipeline import phases

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was computed again")

    for name in phases.RUNNERS:
        monkeypatch.setitem(phases.RUNNERS, name, fail)
    monkeypatch.setattr(main_table, "evaluate", fail)
    assert main_table.main(args) == 0
    assert read_csv(tmp_path / "table.csv") == rows


def test_main_table_keeps_earlier_runs_it_does_not_repeat(tmp_path):
    """Seeds run by separate commands add up in one table; a repeated run replaces its old line."""
    def run(seed, accuracy):
        return {"row": "bp", "shots": 20, "seed": seed, "class_mean": accuracy, "class_mean_teacher": 90.0,
                "top1_prefix": accuracy, "top1_prefix_teacher": 89.0, "latency_reduction": 0.2, "n_dropped": 2}

    out = tmp_path / "table.csv"
    main_table.write_csv([run(1, 80.0), run(2, 70.0)], out)
    kept = main_table.earlier_runs(out, planned={("bp", 20, 2)})
    assert kept == [run(1, 80.0)]
    summary = main_table.aggregate(kept + [run(2, 84.0)])
    assert summary[1]["seeds"] == 2 and summary[1]["class_mean"] == 82.0
    assert summary[1]["class_mean_std"] == pytest.approx(2.8284271)


def test_main_table_commands_side_by_side_add_up_in_one_file(tmp_path):
    """Two commands (rows practise and first-k, one per core) record into one --out as they finish runs."""
    def run(row, seed):
        return {"row": row, "shots": 20, "seed": seed, "class_mean": 80.0 + seed, "class_mean_teacher": 90.0,
                "top1_prefix": 80.0, "top1_prefix_teacher": 89.0, "latency_reduction": 0.5, "n_dropped": 7}

    out = tmp_path / "table.csv"
    main_table.write_csv([run("random", 1)], out)  # an earlier command's line
    first, second = [run("practise", 1)], [run("first-k", 1)]
    main_table.record(out, first)
    main_table.record(out, second)
    main_table.record(out, first + [run("practise", 2)])
    main_table.record(out, second + [run("first-k", 2)])
    lines = sorted((r["row"], int(r["seed"])) for r in read_csv(out))
    assert lines == [("first-k", 1), ("first-k", 2), ("practise", 1), ("practise", 2), ("random", 1)]
    summary = {r["row"]: r for r in read_csv(tmp_path / "table_summary.csv")}
    assert summary["practise"]["seeds"] == "2" and float(summary["practise"]["class_mean"]) == 81.5
    assert (tmp_path / "table_summary.png").is_file()


def test_spearman_gives_tied_values_their_mean_rank():
    assert cost_study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert cost_study.spearman([1, 2, 2, 4], [4, 3, 2, 1]) == pytest.approx(-0.9487, abs=1e-4)  # scipy's spearmanr
    low, high = recoverability_vs_accuracy.bootstrap_interval(range(20), [x + (x % 3) for x in range(20)])
    assert 0.8 < low <= high <= 1.0
    better, worse = list(range(20)), [x % 5 for x in range(20)]  # the second predictor ranks the outcome poorly
    low, high = recoverability_vs_accuracy.bootstrap_interval(better, range(20), versus=worse)
    assert 0 < low <= high  # paired: the first ranks the outcome better on almost every resample


def test_cost_study_compares_step_counts(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("PRACTISE_DATA", str(shared_data))
    out = tmp_path / "cost.csv"
    assert cost_study.main(["--model", "cifar_resnet20", "--shots", "16", "--steps", "1,2", "--batch-size", "8",
                            "--latency-budget", "0.01", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [int(r["steps"]) for r in rows] == [1, 2]
    assert float(rows[1]["spearman_R_vs_max"]) == pytest.approx(1.0)  # the reference against itself
    stores = [{r["key"]: r for r in map(json.loads, (tmp_path / "work" / cost_study.store_name("cifar_resnet20", 16, 2021, n))
                                        .read_text().splitlines()[1:])} for n in (1, 2)]
    blocks = sorted(stores[1])
    expected = cost_study.spearman([stores[0][b]["recoverability"] for b in blocks],
                                   [stores[1][b]["recoverability"] for b in blocks])
    assert float(rows[0]["spearman_R_vs_max"]) == pytest.approx(expected, abs=1e-4)
    # the reference step count can come from a finished store instead of being recomputed
    reused = tmp_path / "work" / cost_study.store_name("cifar_resnet20", 16, 2021, 2)
    assert cost_study.main(["--model", "cifar_resnet20", "--shots", "16", "--steps", "2", "--batch-size", "8",
                            "--latency-budget", "0.01", "--reuse", f"2={reused}", "--work", str(tmp_path / "other"), "--out", str(out)]) == 0
    assert read_csv(out)[0]["reused_from"] == str(reused)


def test_recoverability_vs_accuracy_correlates_and_resumes(tmp_path, shared_data, monkeypatch):
    out = tmp_path / "r.csv"
    args = ["--model", "cifar_resnet20", "--data-dir", str(shared_data),
            "--train-data", f"npz:{shared_data / 'cifar10' / 'cifar10_train_exact.npz'}", "--test-data", "synthetic:40:10:2",
            "--prefix", "20", "--shots", "16", "--blocks", "layer1.1,layer2.2,layer3.1", "--recover-steps", "2",
            "--finetune-steps", "2", "--latency-budget", "0.01", "--work", str(tmp_path / "work"), "--out", str(out)]
    assert recoverability_vs_accuracy.main(args) == 0
    rows = read_csv(out)
    assert [r["block"] for r in rows] == ["layer1.1", "layer2.2", "layer3.1"]
    for r in rows:
        assert float(r["recoverability"]) < float(r["raw_distance"])  # trained adaptors recover some of the gap
        assert 0 <= float(r["class_mean_finetuned"]) <= 100
    summary = read_csv(tmp_path / "r_summary.csv")
    assert len(summary) == len(recoverability_vs_accuracy.PREDICTORS) * len(recoverability_vs_accuracy.OUTCOMES)
    assert all(-1 <= float(s["spearman"]) <= 1 for s in summary)
    r_vs_finetuned = next(s for s in summary if s["predictor"] == "recoverability" and s["outcome"] == "class_mean_finetuned")
    expected = cost_study.spearman([float(r["recoverability"]) for r in rows], [float(r["class_mean_finetuned"]) for r in rows])
    assert float(r_vs_finetuned["spearman"]) == pytest.approx(expected, abs=1e-3)
    assert all(-1 <= float(s["bootstrap_95_low"]) <= float(s["bootstrap_95_high"]) <= 1 for s in summary)
    paired = [s for s in summary if s["predictor"] != "raw_distance"]
    assert all(-2 <= float(s["minus_distance_95_low"]) <= float(s["minus_distance_95_high"]) <= 2 for s in paired)
    assert (tmp_path / "r.png").stat().st_size > 0

    def fail(*a, **k):
        raise AssertionError("a finished block was finetuned again")

    monkeypatch.setattr(recoverability_vs_accuracy, "block_outcomes", fail)
    from practise_jax import recoverability

    monkeypatch.setattr(recoverability, "recover_lockstep", fail)
    assert recoverability_vs_accuracy.main(args) == 0
    assert read_csv(out) == rows


def test_experiment_scripts_report_a_user_error_in_one_line(tmp_path, capsys):
    """The scripts end as the command does: exit 2 and one line naming the cause, no traceback."""
    args = ["--weights", "random", "--train-data", f"folder:{tmp_path / 'missing'}", "--rows", "bp",
            "--shots", "5", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "table.csv")]
    status = main_table.run_reporting_errors(lambda: main_table.main(args), "main_table")
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().startswith("main_table: error: image folder") and "Traceback" not in err


@pytest.mark.parametrize("script, option", [(main_table, "--seeds"), (main_table, "--shots"), (cost_study, "--steps"),
                                            (cifar_checkpoint_accuracy, "--depths")])
def test_a_mistyped_number_list_is_a_usage_error(script, option, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main([option, "50,five"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "'50,five' is not a comma-separated list of integers" in err and "Traceback" not in err


def test_bench_recover_step_times_both_sides(tmp_path, shared_data, monkeypatch):
    require("torch", "the benchmark needs the torch extra")
    import bench_recover_step

    monkeypatch.setenv("PRACTISE_DATA", str(shared_data))
    out = tmp_path / "bench.csv"
    assert bench_recover_step.main(["--model", "cifar_resnet20", "--blocks", "layer2.1", "--lockstep", "--batch-size", "2",
                                    "--steps", "1", "--rounds", "1", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [r["kind"] for r in rows] == ["single", "lockstep"]
    assert all(float(r["jax_s_per_step"]) > 0 and float(r["torch_s_per_step"]) > 0 for r in rows)


def test_two_profiles_feed_repeatability_and_estimators(tmp_path, capsys):
    runs = []
    for k in (1, 2):
        csv_path, cache = tmp_path / f"run{k}.csv", tmp_path / f"cache{k}"
        assert cli_main(["profile", "--model", "cifar_resnet20", "--batch-size", "1", "--image-size", "8", "--repeats", "2",
                         "--time-budget", "0.01", "--cpu-threads", "0", "--cache-dir", str(cache), "--out", str(csv_path),
                         "--quiet"]) == 0
        runs.append((csv_path, cache))
    side_by_side = tmp_path / "rep.csv"
    assert latency_repeatability.main([str(runs[0][0]), str(runs[1][0]), "--out", str(side_by_side)]) == 0
    assert len(read_csv(side_by_side)) == 6  # cifar_resnet20's droppable blocks
    agreement = tmp_path / "est.csv"
    assert latency_estimators.main([str(runs[0][1]), str(runs[1][1]), "--out", str(agreement)]) == 0
    assert {r["estimator"] for r in read_csv(agreement)} >= {"paired-median", "fast-end q20"}
    assert "within 1 pp" in capsys.readouterr().out


def test_latency_additivity_measures_sets_and_their_blocks(tmp_path):
    out = tmp_path / "add.csv"
    assert latency_additivity.main(["--model", "cifar_resnet20", "--batch-size", "1", "--image-size", "8", "--repeats", "1",
                                    "--time-budget", "0.01", "--cpu-threads", "0", "--sets", "layer1.1,layer2.2",
                                    "--out", str(out)]) == 0
    (row,) = read_csv(out)
    assert row["drop"] == "layer1.1+layer2.2"
    assert float(row["flops_tau_predicted"]) == pytest.approx(float(row["flops_tau"]), abs=0.01)  # FLOP cuts add up


def test_latency_gpu_needs_an_accelerator_or_allow_cpu(tmp_path):
    if jax.default_backend() == "cpu":
        with pytest.raises(SystemExit, match="--allow-cpu"):
            latency_gpu.main(["--configs", "cifar_resnet20:1", "--out-dir", str(tmp_path)])
    assert latency_gpu.main(["--allow-cpu", "--configs", "cifar_resnet20:1:8", "--dtypes", "float32", "--repeats", "1",
                             "--time-budget", "0.01", "--no-additivity", "--out-dir", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("latency_*_cifar_resnet20_b1_8px_float32.csv")
    assert read_csv(written)[0]["kind"] == "teacher"


def test_cifar_checkpoint_accuracy_on_a_few_images(tmp_path, shared_data):
    out = tmp_path / "acc.csv"
    assert cifar_checkpoint_accuracy.main(["--data-dir", str(shared_data), "--depths", "20", "--limit", "64",
                                           "--out", str(out)]) == 0
    (row,) = read_csv(out)
    assert row["model"] == "cifar_resnet20" and row["all_images"] == "64" and row["prefix_images"] == "64"
    assert float(row["top1_prefix"]) > 70  # the real checkpoint, not random weights


def test_data_free_table_from_a_synthesised_set(tmp_path, capsys):
    """Synthesise, run PRACTISE on the set through main_table, tabulate: the experiment's three steps, tiny."""
    runs = tmp_path / "runs"
    assert cli_main(["synthesize", "--model", "cifar_resnet20", "--images", "12", "--steps", "2", "--batch-size", "12",
                     "--seed", "1", "--out", str(runs / "syn12.npz")]) == 0
    assert main_table.main(["--model", "cifar_resnet20", "--weights", "random", "--train-data", f"npz:{runs / 'syn12.npz'}",
                            "--test-data", "synthetic:20:10:2", "--prefix", "10", "--shots", "12", "--seeds", "1",
                            "--tau", fixed_tau(tmp_path),
                            "--speedup", "0.05", "--rows", "practise", "--recover-steps", "2", "--finetune-steps", "2",
                            "--latency-budget", "0.01", "--latency-batch-size", "8", "--work", str(runs / "syn12"),
                            "--out", str(tmp_path / "table.csv")]) == 0
    run = runs / "syn12" / "practise_12shots_seed1"
    real = tmp_path / "real.csv"  # stands in for R on real images: the run's own R, so the Spearman must be 1
    records = [json.loads(line) for line in (run / "recoverability.jsonl").read_text().splitlines() if line.strip()]
    real.write_text("block,recoverability\n" + "".join(f"{r['block']},{r['recoverability']}\n" for r in records if "block" in r))
    capsys.readouterr()
    assert data_free.main(["--runs", str(runs), "--images", "12", "--seed", "1", "--real-scores", str(real),
                           "--out", str(tmp_path / "data_free.csv")]) == 0
    (line,) = read_csv(tmp_path / "data_free.csv")
    assert line["images"] == "12" and float(line["spearman_r_vs_real500"]) == 1.0 and line["dropped"]
    assert (tmp_path / "data_free_grid.png").stat().st_size > 1000 and "| 12 synthesised |" in capsys.readouterr().out


def test_profile_attributes_each_conv_of_a_training_step_to_its_kind():
    """Forward, input-gradient and weight-gradient convolutions and cross-device all-reduces are told apart in HLO."""
    import jax.numpy as jnp

    from practise_jax import conv_backward

    def loss(w, x):
        y = conv_backward.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jax.nn.relu(y) ** 2)

    x, w = jnp.ones((8, 16, 16, 4)), jnp.ones((3, 3, 4, 4))
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(w, x).compile().as_text()
    kinds = set(profile_finetune_step.instruction_kinds(hlo).values())
    assert {"conv forward", "conv input gradient", "conv weight gradient"} <= kinds
    all_reduce = "ENTRY %main {\n  %all-reduce.3 = f32[16]{0} all-reduce(%fusion.1), channel_id=4, to_apply=%add\n}"
    assert profile_finetune_step.instruction_kinds(all_reduce) == {"all-reduce.3": "cross-device collectives"}
