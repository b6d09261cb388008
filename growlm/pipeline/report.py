"""The comparison: saving at equal loss at several loss levels, the eval table, and their text rendering."""

from __future__ import annotations

from dataclasses import asdict

from growlm.growth.speedup import SpeedupPoint, default_levels, smoothed, speedup_at_levels
from growlm.pipeline.curves import RunCurve

EVAL_METRICS = ("acc", "acc_norm", "word_perplexity", "bits_per_byte")


def savings_at_equal_loss(scratch: RunCurve, grown: RunCurve, *, num_levels: int,
                          smoothing: float = 0.0) -> list[SpeedupPoint]:
    """sp(l) = FLOPs_scratch(l) / FLOPs_grown(l) - 1 at `num_levels` loss levels both runs reach.

    The levels are evenly spaced strictly inside the common loss range: the lowest common loss itself is met
    only by one run's last evaluation, where rounding can put it out of reach.
    """
    scratch_curve, grown_curve = scratch.curve, grown.curve
    if smoothing:
        scratch_curve = smoothed(scratch_curve, weight=smoothing)
        grown_curve = smoothed(grown_curve, weight=smoothing)
    levels = default_levels(scratch_curve, grown_curve, num_levels=num_levels + 1)[:num_levels]
    return speedup_at_levels(scratch_curve, grown_curve, levels)


def savings_records(points: list[SpeedupPoint]) -> list[dict]:
    """JSON rows: the level, both FLOPs, sp and the fraction of scratch FLOPs saved (1 - grown/scratch)."""
    return [{**asdict(p), "flops_saved": 1.0 - p.grown_flops / p.scratch_flops} for p in points]


def format_savings(rows: list[dict]) -> str:
    """A text table of the saving at equal loss."""
    lines = [f"{'val loss':>9} {'scratch FLOPs':>14} {'grown FLOPs':>12} {'speedup sp':>11} {'FLOPs saved':>12}"]
    for row in rows:
        lines.append(f"{row['level']:>9.4f} {row['scratch_flops']:>14.3e} {row['grown_flops']:>12.3e} "
                     f"{row['speedup']:>+11.1%} {row['flops_saved']:>12.1%}")
    return "\n".join(lines)


def _cell(entry: dict, metric: str) -> str:
    if metric not in entry:
        return "-"
    se = entry.get(f"{metric}_se")
    return f"{entry[metric]:.4f} ± {se:.4f}" if se is not None else f"{entry[metric]:.4f}"


def format_eval_table(results: dict[str, dict]) -> str:
    """Task/metric rows, one column per model, from `eval_results.json` records keyed by model label."""
    labels = list(results)
    tasks = sorted({task for record in results.values() for task in record.get("tasks", {})})
    rows = [("task", "metric", *labels)]
    for task in tasks:
        entries = [results[label].get("tasks", {}).get(task, {}) for label in labels]
        for metric in EVAL_METRICS:
            if any(metric in entry for entry in entries):
                rows.append((task, metric, *(_cell(entry, metric) for entry in entries)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
