"""Smoke versions of the long experiment scripts: same code paths, tiny steps, seconds each."""

import csv
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import cost_study  # noqa: E402
import main_table  # noqa: E402
import recoverability_vs_accuracy  # noqa: E402


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_main_table_runs_every_row_and_resumes(tmp_path):
    args = ["--model", "cifar_resnet20", "--weights", "random", "--train-data", "synthetic:64:10:1",
            "--test-data", "synthetic:40:10:2", "--prefix", "20", "--shots", "20", "--seeds", "1",
            "--speedup", "0.05", "--rows", "bp,random,practise,practise-folded", "--recover-steps", "2",
            "--finetune-steps", "2", "--latency-budget", "0.01", "--latency-batch-size", "16",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "table.csv")]
    assert main_table.main(args) == 0
    rows = read_csv(tmp_path / "table.csv")
    assert [r["row"] for r in rows] == ["bp", "random", "practise", "practise-folded"]
    assert rows[0]["finetune"] == "ce" and rows[3]["finetune_start"] == "folded"
    assert rows[2]["dropped"] == rows[3]["dropped"]  # the folded row reuses the practise selection
    summary = read_csv(tmp_path / "table_summary.csv")
    assert summary[0]["row"] == "teacher" and len(summary) == 5 and "class_mean_std" in summary[0]
    # a rerun reads every finished run back
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


def test_cost_study_compares_step_counts(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("PRACTISE_DATA", str(shared_data))
    out = tmp_path / "cost.csv"
    assert cost_study.main(["--model", "cifar_resnet20", "--shots", "16", "--steps", "1,2", "--batch-size", "8",
                            "--latency-budget", "0.01", "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [int(r["steps"]) for r in rows] == [1, 2]
    assert float(rows[1]["spearman_R_vs_max"]) == pytest.approx(1.0)
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
    assert (tmp_path / "r.png").stat().st_size > 0

    def fail(*a, **k):
        raise AssertionError("a finished block was finetuned again")

    monkeypatch.setattr(recoverability_vs_accuracy, "block_outcomes", fail)
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
