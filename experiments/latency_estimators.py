"""Which tau estimator repeats best? Several estimators on the raw calls of two profiles of the same setting.

A profile's cache folder keeps every timed call (``latency_s`` per distinct
program, the teacher's in its own entry) and each round's paired tau. This
recomputes tau of every distinct candidate from those raw calls with each
estimator, for both runs,
and reports how far the runs disagree (max and median over candidates,
count within 1 percentage point):

* ``paired-median``: median over rounds of ``1 - t_B / mean(t_A before, t_A after)``;
* ``fast-end qXX``: ``1 - quantile(t_B, q) / quantile(t_A, q)`` over all calls of the run
  (``q = 0.2`` is the profiler's ``FAST_QUANTILE``; ``q = 0.5`` is the ratio of medians).

    practise-jax profile --model cifar_resnet56 --batch-size 64 --cache-dir /tmp/lat/f1 --out run1.csv   # and f2, run2
    python experiments/latency_estimators.py /tmp/lat/f1 /tmp/lat/f2 \
        --out experiments/results/latency_estimators_cifar_resnet56_b64.csv

``--rounds N`` uses only the first N rounds of each run (what a smaller time budget would have seen).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from practise_jax.cli import run_reporting_errors
from practise_jax.latency import quantile, write_csv

QUANTILES = (0.1, 0.2, 0.25, 0.5)


def load_run(folder: Path) -> tuple[list[float], dict[str, dict]]:
    """All teacher calls of a run in order, and each distinct candidate's raw entry by its program."""
    teacher, candidates = None, {}
    for path in sorted(folder.glob("*.json")):
        entry = json.loads(path.read_text())
        key, value = entry["key"], entry["value"]
        if key["program"] == key["reference"]:
            teacher = value["latency_s"]
        else:
            candidates[key["program"]] = value
    if teacher is None or not candidates:
        raise SystemExit(f"{folder} holds no profile (a teacher entry and candidates); give a --cache-dir of `practise-jax profile`")
    return teacher, candidates


def estimates(teacher: list[float], candidates: dict[str, dict], rounds: int | None) -> dict[str, dict[str, float]]:
    """tau (fraction) of every candidate under every estimator, from the first ``rounds`` rounds."""
    n = len(candidates)
    teacher = teacher[: rounds * (n + 1)] if rounds else teacher  # a round: one teacher call, then one after each candidate
    fast_teacher = sorted(teacher)
    out: dict[str, dict[str, float]] = {"paired-median": {}}
    for q in QUANTILES:
        out[f"fast-end q{100 * q:.0f}"] = {}
    for block, value in candidates.items():
        calls = sorted(value["latency_s"][:rounds] if rounds else value["latency_s"])
        out["paired-median"][block] = statistics.median(value["taus"][:rounds] if rounds else value["taus"])
        for q in QUANTILES:
            out[f"fast-end q{100 * q:.0f}"][block] = 1.0 - quantile(calls, q) / quantile(fast_teacher, q)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run1", type=Path, help="cache folder of the first profile")
    parser.add_argument("run2", type=Path, help="cache folder of the second profile")
    parser.add_argument("--rounds", type=int, help="use only the first N rounds of each run")
    parser.add_argument("--out", help="CSV of the agreement per estimator")
    args = parser.parse_args(argv)
    (t1, c1), (t2, c2) = load_run(args.run1), load_run(args.run2)
    common = [b for b in c1 if b in c2]
    e1, e2 = estimates(t1, c1, args.rounds), estimates(t2, c2, args.rounds)
    rows = []
    for name in e1:
        diffs = [100 * abs(e2[name][b] - e1[name][b]) for b in common]
        rows.append({"estimator": name, "candidates": len(common),
                     "rounds": args.rounds or min(len(c1[common[0]]["taus"]), len(c2[common[0]]["taus"])),
                     "max_diff_pp": max(diffs), "median_diff_pp": statistics.median(diffs),
                     "within_1pp": sum(d <= 1.0 for d in diffs)})
    print(f"{'estimator':<16} {'rounds':>6} {'max pp':>7} {'median pp':>9} {'within 1 pp':>11}")
    for r in rows:
        print(f"{r['estimator']:<16} {r['rounds']:>6} {r['max_diff_pp']:7.2f} {r['median_diff_pp']:9.2f} "
              f"{r['within_1pp']:>5}/{r['candidates']}")
    if args.out:
        write_csv(rows, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "latency_estimators"))
