"""Do two profiles in a row agree? tau per candidate from two `practise-jax profile` CSVs, side by side.

    python experiments/latency_repeatability.py RUN1.csv RUN2.csv [--out experiments/results/X.csv]

Rows are matched by (model, drop). Prints tau of both runs in percent, the
difference in percentage points, and a summary: largest and median absolute
difference, and how many candidates agree within 1 percentage point. Both
files must come from the same setting (device, dtype, batch, image size, clock).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys

from practise_jax.cli import run_reporting_errors
from practise_jax.latency import write_csv

SETTING = ("device", "dtype", "batch_size", "image_size", "clock", "cpu_threads", "jax_version")


def read(path: str) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as handle:
        return {(row["model"], row["drop"]): row for row in csv.DictReader(handle) if row["kind"] != "teacher"}


def compare(first: dict, second: dict) -> list[dict]:
    rows = []
    for key in first:
        if key not in second:
            continue
        a, b = first[key], second[key]
        for field in SETTING:
            if a.get(field) != b.get(field):
                raise SystemExit(f"{key}: the runs differ in {field} ({a.get(field)} vs {b.get(field)}); compare like with like.")
        tau_a, tau_b = 100 * float(a["tau"]), 100 * float(b["tau"])
        rows.append({
            "model": key[0], "drop": key[1], "tau_pct_run1": round(tau_a, 3), "tau_pct_run2": round(tau_b, 3),
            "difference_pp": round(tau_b - tau_a, 3), "flops_tau_pct": round(100 * float(a["flops_tau"]), 3),
            "rounds": a["calls"], "clock": a.get("clock", ""), "cpu_threads": a.get("cpu_threads", ""), "device": a["device"], "dtype": a["dtype"],
            "batch_size": a["batch_size"], "image_size": a["image_size"],
        })
    return rows


def summary(rows: list[dict]) -> str:
    diffs = [abs(r["difference_pp"]) for r in rows]
    within = sum(d <= 1.0 for d in diffs)
    return (f"{len(rows)} candidates: |difference| max {max(diffs):.2f} pp, median {statistics.median(diffs):.2f} pp, "
            f"mean {statistics.fmean(diffs):.2f} pp; within 1 pp: {within}/{len(rows)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--out", help="write the side-by-side rows as CSV")
    args = parser.parse_args(argv)
    rows = compare(read(args.first), read(args.second))
    if not rows:
        print("no candidate appears in both files", file=sys.stderr)
        return 1
    print(f"{'drop':<28} {'run 1 %':>8} {'run 2 %':>8} {'diff pp':>8} {'FLOP cut %':>10}")
    for r in rows:
        print(f"{r['drop']:<28} {r['tau_pct_run1']:8.2f} {r['tau_pct_run2']:8.2f} {r['difference_pp']:8.2f} {r['flops_tau_pct']:10.2f}")
    print(summary(rows))
    if args.out:
        write_csv(rows, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "latency_repeatability"))
