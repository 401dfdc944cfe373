"""A run's report: ``report.md`` with tables, and the plots it shows (matplotlib, PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def plot_scores(summary: dict, path: Path) -> bool:
    """Recoverability against tau for every scored candidate, the chosen ones marked."""
    scores = [s for s in summary["scores"] if "recoverability" in s]
    if not scores:
        return False
    chosen = set(summary["dropped_blocks"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for picked, colour, label in ((False, "tab:blue", "kept"), (True, "tab:red", "dropped")):
        points = [s for s in scores if (s["block"] in chosen) == picked]
        ax.scatter([100 * s["tau"] for s in points], [s["recoverability"] for s in points], c=colour, label=label, s=28)
        for s in points:
            ax.annotate(s["block"], (100 * s["tau"], s["recoverability"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("latency reduction tau of the block alone (%)")
    ax.set_ylabel("recoverability R (feature MSE after adaptors; lower is better)")
    ax.set_title(f"{summary['model']}: candidates (score = R / tau%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_before_after(summary: dict, path: Path) -> None:
    """Accuracy and latency of the teacher and the student side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.4))
    names = ["teacher", "student"]
    top1 = [summary.get("top1_teacher"), summary.get("top1_student")]
    if all(v is not None for v in top1):
        bars = left.bar(names, top1, color=["tab:gray", "tab:green"])
        left.bar_label(bars, fmt="%.2f")
        left.set_ylim(max(0.0, min(top1) - 10), 100)
    left.set_title("top-1 (%)")
    lat = [summary["latency_ms_teacher"], summary["latency_ms_student"]]
    bars = right.bar(names, lat, color=["tab:gray", "tab:green"])
    right.bar_label(bars, fmt="%.2f")
    right.set_ylim(0, 1.15 * max(lat))
    right.set_title(f"latency (ms, batch {summary['latency_batch_size']})")
    fig.suptitle(f"{summary['model']}: {pruned(summary)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pruned(summary: dict) -> str:
    """What the student lacks, in words."""
    if summary.get("filter_keep") is not None:
        return f"{100 * summary['filter_keep']:.1f}% of every block's inner filters kept (L1 norm)"
    return f"dropped {len(summary['dropped_blocks'])} blocks ({', '.join(summary['dropped_blocks'])})"


def write_report(run_dir: Path, summary: dict) -> Path:
    run_dir = Path(run_dir)
    has_scores = plot_scores(summary, run_dir / "scores.png")
    plot_before_after(summary, run_dir / "before_after.png")
    lines = [
        f"# {summary['model']}: PRACTISE compression report", "",
        f"Method **{summary['method']}**, finetune **{summary['finetune']}** from the **{summary['finetune_start']}** student, "
        f"{summary['shots']} images of `{summary['data']}` (seed {summary['seed']}).", "",
        f"Pruned: **{pruned(summary)}**.", "",
        f"Input normalisation: {summary.get('normalization', '–')}.", "",
        "| | teacher | student |", "|---|---:|---:|",
        f"| top-1 (%) | {_fmt(summary['top1_teacher'])} | {_fmt(summary['top1_student'])} |",
        f"| per-class mean (%) | {_fmt(summary['class_mean_teacher'])} | {_fmt(summary['class_mean_student'])} |",
        f"| latency (ms) | {_fmt(summary['latency_ms_teacher'], 3)} | {_fmt(summary['latency_ms_student'], 3)} |", "",
        f"Measured latency reduction {_fmt(100 * summary['latency_reduction'], 1)}% "
        f"(sum of single-block taus: {_fmt(100 * summary['latency_reduction_predicted'], 1) if summary['latency_reduction_predicted'] is not None else '–'}%), "
        f"batch {summary['latency_batch_size']} on {summary['device']}, JAX {summary['jax_version']}. "
        f"Accuracy on {summary['eval_images'] or 0} images of `{summary['eval_data']}`.", "",
        "![accuracy and latency](before_after.png)", "",
    ]
    scored = [s for s in summary["scores"] if "recoverability" in s]
    if scored:
        lines += ["## Candidates", "", "| rank | block | R | tau (%) | R / tau% | dropped |", "|---:|---|---:|---:|---:|:---:|"]
        chosen = set(summary["dropped_blocks"])
        lines += [f"| {s['rank']} | {s['block']} | {s['recoverability']:.5f} | {100 * s['tau']:.2f} | {_fmt(s['score'], 5)} | "
                  f"{'x' if s['block'] in chosen else ''} |" for s in scored]
        lines += ["", "![recoverability against tau](scores.png)" if has_scores else "", ""]
    evals = [h for h in summary["history"] if "top1" in h]
    if evals:
        lines += ["## Finetuning", "", "| step | top-1 (%) | per-class mean (%) |", "|---:|---:|---:|"]
        lines += [f"| {h['step']} | {h['top1']:.2f} | {h['class_mean']:.2f} |" for h in evals]
        lines.append("")
    lines += ["## Time per phase (s)", "", "| phase | seconds |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(sec, 1)} |" for name, sec in summary["phase_seconds"].items()]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def image_grid(images, labels, path: Path, *, per_class: int = 10, max_classes: int = 10, names=None) -> Path:
    """A PNG of up to ``per_class`` images of each of the first ``max_classes`` classes, a row per class."""
    import numpy as np

    labels = np.asarray(labels)
    classes = sorted(set(int(c) for c in labels))[:max_classes]
    per_class = min(per_class, max(int((labels == c).sum()) for c in classes))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.9), squeeze=False)
    for row, c in zip(axes, classes):
        chosen = np.flatnonzero(labels == c)[:per_class]
        for column, ax in enumerate(row):
            ax.axis("off")
            if column < len(chosen):
                ax.imshow(images[chosen[column]], interpolation="nearest")
        row[0].set_title(str(names[c]) if names else f"class {c}", fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
