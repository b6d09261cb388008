"""A study's results: the saving at equal loss per arm, as mean ± standard error over seeds, under both FLOPs
counts; final losses; the evaluation table; the unigram level; the validation loss's own standard error;
`results.json`, Markdown tables and the loss-vs-FLOPs plot."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from growlm.eval.results import RESULTS_FILENAME
from growlm.growth.speedup import LossCurve, flops_to_reach
from growlm.pipeline.curves import eval_points, trained_tokens
from growlm.pipeline.report import EVAL_METRICS
from growlm.train.metrics import read_metrics
from growlm.pipeline.stages import DONE_MARKER, is_done
from growlm.study.config import StudyConfig
from growlm.study.runner import StudyLayout, final_val_loss, resolved, run_args
from growlm.train.flops import FLOPS_COUNTS, flops_per_token


def mean_se(values: Sequence[float]) -> dict:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); None for one value)."""
    values = [float(v) for v in values]
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "se": se, "n": len(values), "values": values}


def common_levels(curves: Sequence[LossCurve], num_levels: int) -> list[float]:
    """`num_levels` loss levels, evenly spaced, from just below the highest first loss down to the lowest loss that
    every curve reaches (that level included): the same levels for every seed, fixed before any sp is computed."""
    top = min(curve.loss[0] for curve in curves)
    bottom = max(min(curve.loss) for curve in curves)
    if bottom >= top:
        raise ValueError(f"the curves share no loss range (lowest common loss {bottom:.4f} >= highest common "
                         f"start {top:.4f}); train the runs longer")
    return [top - (top - bottom) * k / num_levels for k in range(1, num_levels + 1)]


def model_config(run_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(run_dir / "final", trust_remote_code=False)


def run_curve(run_dir: Path, per_token: float, *, offset: float = 0.0) -> LossCurve:
    points = eval_points(read_metrics(run_dir / "metrics.jsonl"))
    return LossCurve.from_points([offset + per_token * t for t, _ in points], [loss for _, loss in points])


def band(curves: Sequence[LossCurve], **extra) -> dict:
    """Seeds' curves at their common evaluation points: FLOPs and the losses of every seed at each point."""
    length = min(len(c.flops) for c in curves)
    return {"flops": list(curves[0].flops[:length]),
            "losses": [[c.loss[i] for c in curves] for i in range(length)], **extra}


def eval_summary(eval_dirs: Sequence[Path]) -> dict | None:
    """Mean ± SE over seeds of each task metric, from the finished evaluations among `eval_dirs` (None if none)."""
    records = [json.loads((d / RESULTS_FILENAME).read_text()) for d in eval_dirs if is_done(d)]
    if not records:
        return None
    tasks = {}
    for task in sorted(records[0]["tasks"]):
        entries = [record["tasks"].get(task, {}) for record in records]
        tasks[task] = {"n": entries[0]["n"]} | {metric: mean_se([e[metric] for e in entries])
                                                  for metric in EVAL_METRICS if all(metric in e for e in entries)}
    return {"seeds": len(records), "task_set": records[0]["task_set"], "limit": records[0]["limit"], "tasks": tasks}


def stage_seconds(root: Path) -> float:
    """Wall time of every finished stage of the study (from the `.done` records)."""
    return sum(json.loads(p.read_text()).get("seconds", 0.0) for p in root.glob(f"*/*/{DONE_MARKER}"))


def compute_results(cfg: StudyConfig, chosen: dict) -> dict:
    """Everything `results.json` holds, from the finished runs (seeds with an unfinished arm are left out of it)."""
    layout = StudyLayout(Path(cfg.output_dir).resolve())
    seq_len = resolved(run_args(cfg)).data.seq_len
    target_lr = chosen["target"]["lr"]
    base_lr = {name: entry["lr"] for name, entry in chosen["bases"].items()}

    def per_token(run_dir: Path) -> dict[str, int]:
        config = model_config(run_dir)
        return {count: flops_per_token(config, seq_len, count) for count in FLOPS_COUNTS}

    scratch_runs = {s: layout.scratch(target_lr, cfg.scratch.max_tokens, s) for s in cfg.seeds}
    scratch_dirs = {s: d for s, d in scratch_runs.items() if is_done(d)}
    results = {"name": cfg.name, "seeds": cfg.seeds, "lr": chosen, "budget_count": cfg.report.budget_count,
               "flops_counts": {"paper": "6 * N_non-embedding per token (growth.md §9)",
                                "full": "every matmul: projections, attention scores, MLP, LM head; x3 for fwd+bwd"},
               "scratch": {}, "arms": {}, "curves": {}, "eval": {}}
    if scratch_dirs:
        first = next(iter(scratch_dirs.values()))
        results["scratch"] = {"shape": cfg.target.shape, "tokens": cfg.scratch.max_tokens,
                              "flops_per_token": per_token(first),
                              "final_val_loss": mean_se([final_val_loss(d) for d in scratch_dirs.values()])}
        results["curves"][f"scratch {cfg.target.shape}"] = band(
            [run_curve(d, results["scratch"]["flops_per_token"]["full"]) for d in scratch_dirs.values()], panels=None)
        if evaluated := eval_summary([layout.eval(d) for d in scratch_dirs.values()]):
            results["eval"]["scratch"] = evaluated
    for name, arm in cfg.arms.items():
        if arm.base not in base_lr:  # an arm this invocation did not run (--arms)
            continue
        base = cfg.bases[arm.base]
        lr_b = base_lr[arm.base]
        seeds = [s for s in scratch_dirs if is_done(layout.grown(name, target_lr, lr_b, s))]
        if not seeds:
            continue
        bases = {s: layout.base(arm.base, lr_b, s) for s in seeds}
        grown = {s: layout.grown(name, target_lr, lr_b, s) for s in seeds}
        base_pt, target_pt = per_token(bases[seeds[0]]), per_token(grown[seeds[0]])
        d = trained_tokens(read_metrics(bases[seeds[0]] / "metrics.jsonl"))
        after = trained_tokens(read_metrics(grown[seeds[0]] / "metrics.jsonl"))
        curves = {count: {s: (run_curve(scratch_dirs[s], results["scratch"]["flops_per_token"][count]),
                              run_curve(grown[s], target_pt[count], offset=base_pt[count] * d)) for s in seeds}
                  for count in FLOPS_COUNTS}
        levels = common_levels([c for pair in curves["full"].values() for c in pair], cfg.report.loss_levels)
        sp = {count: [mean_se([flops_to_reach(curves[count][s][0], level) / flops_to_reach(curves[count][s][1], level)
                               - 1.0 for s in seeds]) | {"level": level} for level in levels]
              for count in FLOPS_COUNTS}
        results["arms"][name] = {
            "base": arm.base, "base_shape": base.shape, "g": arm.g, "operator": arm.operator,
            "width_operator": arm.width_operator, "group": arm.group, "growth": arm.growth, "args": arm.args,
            "d_tokens": d, "tokens_after_growth": after, "base_lr": lr_b,
            "runs": [str(grown[s]) for s in seeds], "scratch_runs": [str(scratch_dirs[s]) for s in seeds],
            "flops_per_token": {"base": base_pt, "target": target_pt},
            "total_flops": {count: base_pt[count] * d + target_pt[count] * after for count in FLOPS_COUNTS},
            "levels": levels, "sp": sp,
            "final_val_loss": mean_se([final_val_loss(grown[s]) for s in seeds]),
            "base_final_val_loss": mean_se([final_val_loss(bases[s]) for s in seeds]),
        }
        if evaluated := eval_summary([layout.eval(grown[s]) for s in seeds]):
            results["eval"][name] = evaluated
        base_label = f"base {arm.base} ({base.shape})"
        if base_label not in results["curves"]:
            results["curves"][base_label] = band([run_curve(bases[s], base_pt["full"]) for s in seeds],
                                                 style="dashed", panels=[])
        results["curves"][base_label]["panels"] = sorted({*results["curves"][base_label]["panels"], arm.group})
        results["curves"][name] = band([curves["full"][s][1] for s in seeds], growth_flops=base_pt["full"] * d,
                                       panels=[arm.group], base=base_label)
    if scratch_dirs:
        scratch_pt = results["scratch"]["flops_per_token"]
        results["scratch"]["total_flops"] = {count: scratch_pt[count] * cfg.scratch.max_tokens
                                             for count in FLOPS_COUNTS}
    results["wall_time_s"] = round(stage_seconds(layout.root), 1)
    return results


def _pm(entry: dict, fmt: str = "{:+.1%}") -> str:
    if entry["se"] is None:
        return fmt.format(entry["mean"]) + " (1 seed)"
    return f"{fmt.format(entry['mean'])} ± {fmt.format(entry['se']).lstrip('+')}"


def growth_label(arm: dict) -> str:
    """How an arm grows, e.g. `small-2L → ×4 stack`, `small-8L-w64 → width split`, `… (noise 0.2)`."""
    steps = [f"×{arm['g']} {arm['operator']}"] if arm["g"] > 1 else []
    steps += [f"width {arm['width_operator']}"] if arm["width_operator"] else []
    extra = ", ".join(f"{key} {value}" for key, value in arm["growth"].items())
    return f"{arm['base_shape']} → {' + '.join(steps)}" + (f" ({extra})" if extra else "")


def format_operator_table(results: dict) -> list[str]:
    """One row per arm, grouped (depth, width, ablations, ...): sp at equal final loss under both counts."""
    scratch = results.get("scratch") or {}
    lines = ["| group | arm | growth | d (tokens) | tokens after growth | final val loss | "
             "sp at equal final loss, full | sp, paper 6·N_ne | n |", "|---|---|---|---|---|---|---|---|---|"]
    if scratch:
        lines.append(f"| scratch | scratch | {scratch['shape']} from scratch | – | {scratch['tokens']:,} | "
                     f"{_pm(scratch['final_val_loss'], '{:.4f}')} | – | – | {scratch['final_val_loss']['n']} |")
    groups = list(dict.fromkeys(arm["group"] for arm in results["arms"].values()))
    for group in groups:
        for name, arm in results["arms"].items():
            if arm["group"] == group:
                lines.append(f"| {group} | {name} | {growth_label(arm)} | {arm['d_tokens']:,} | "
                             f"{arm['tokens_after_growth']:,} | {_pm(arm['final_val_loss'], '{:.4f}')} | "
                             f"{_pm(arm['sp']['full'][-1])} | {_pm(arm['sp']['paper'][-1])} | "
                             f"{arm['final_val_loss']['n']} |")
    return lines


def format_eval_table(results: dict) -> list[str]:
    """One row per evaluated model (scratch, then each arm): each task metric as mean ± SE over seeds."""
    rows = results["eval"]
    if not rows:
        return []
    columns = list(dict.fromkeys((task, metric) for entry in rows.values() for task, metrics in entry["tasks"].items()
                                 for metric in metrics if metric != "n"))
    lines = ["| model | " + " | ".join(f"{task} {metric}" for task, metric in columns) + " | n |",
             "|---" * (len(columns) + 2) + "|"]
    for name, entry in rows.items():
        cells = [_pm(entry["tasks"][task][metric], "{:.4g}") if metric in entry["tasks"].get(task, {}) else "–"
                 for task, metric in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['seeds']} |")
    first = next(iter(rows.values()))
    sizes = ", ".join(f"{task} {info['n']}" for task, info in first["tasks"].items())
    return lines + ["", f"Items per task ({first['task_set']} set): {sizes}. Every model answers the same items, so "
                    "± is the spread over seeds only; the items' own sampling error is shared by all rows."]


def format_table(results: dict) -> str:
    """Markdown: the operator table (sp at equal final loss), the evaluation table, sp per loss level, LR sweeps."""
    scratch = results.get("scratch") or {}
    lines = [f"## {results['name']}", ""]
    if scratch:
        fl = scratch["final_val_loss"]
        lines += [f"Scratch ({scratch['shape']}, {scratch['tokens']:,} tokens, lr {results['lr']['target']['lr']:g}): "
                  f"final validation loss {_pm(fl, '{:.4f}')}, n = {fl['n']} seeds.", ""]
    for key, label in (("unigram_entropy", "unigram entropy of the tokenizer (train split, nats)"),
                       ("val_loss_se", "standard error of one validation loss (over blocks, scratch, first seed)")):
        if key in results:
            lines.append(f"- {label}: {results[key]['value']:.4f}")
    for name, arm in results["arms"].items():
        if "val_loss_diff_se" in arm:
            diff = arm["val_loss_diff_se"]
            lines.append(f"- {name}: final loss below the unigram level by {arm['gap_below_unigram']:.3f}; grown − "
                         f"scratch on the same blocks (first seed) {diff['mean']:+.4f} ± {diff['value']:.4f}")
    lines += ["", "### Operators: FLOPs saving at equal final loss vs scratch", "",
              "sp = scratch's FLOPs to reach the lowest loss every seed of both runs reaches (the higher of the two "
              "final losses) / the arm's, base included, − 1 (> 0: growth saves compute); mean ± SE over seeds.", "",
              *format_operator_table(results)]
    if results["eval"]:
        lines += ["", "### Evaluation (scripts/evaluate.py, final models)", "", *format_eval_table(results)]
    for name, arm in results["arms"].items():
        lines += ["", f"sp by loss level, {name}:", "", "| val loss | sp (full) | sp (paper) |", "|---|---|---|"]
        for full, paper in zip(arm["sp"]["full"], arm["sp"]["paper"]):
            lines.append(f"| {full['level']:.4f} | {_pm(full)} | {_pm(paper)} |")
    sweeps = [("target (scratch arm)", results["lr"]["target"])] + list(results["lr"]["bases"].items())
    lines += ["", f"LR sweeps (first seed, final validation loss; the target's on scratch runs of "
              f"{results['lr']['target'].get('sweep_tokens', 0):,} tokens):", ""]
    for label, entry in sweeps:
        points = ", ".join(f"{p['lr']:g} → {p['final_val_loss']:.4f}" for p in entry["sweep"]) or "fixed"
        lines.append(f"- {label}: {points}; chosen {entry['lr']:g}")
    lines += ["", f"Sum of the runs' wall times: {results['wall_time_s'] / 60:.1f} min (runs may overlap)."]
    return "\n".join(lines) + "\n"
