"""An LR grid study (a study config with an `lr_grid:` section): final validation loss against the learning rate
for every shape x parametrization, and whether the best LR moves with the shape (completep.md §5: under CompleteP
it should not, under SP it drifts).

One pretraining run per (parametrization, shape, lr, seed); every run of a seed shares the training seed and the
data order. Runs are pipeline stages with `.done` markers, so an interrupted grid resumes where it stopped, and
the report covers the finished runs.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from growlm.atomic import write_bytes, write_json, write_text
from growlm.config_io import build, read_mapping
from growlm.modeling import SHAPES
from growlm.pipeline.commands import pretrain_command
from growlm.pipeline.config import LaunchConfig, TrainStageConfig
from growlm.pipeline.run import command_stage
from growlm.pipeline.stages import Stage, is_done, run_chains
from growlm.study.report import mean_se, stage_seconds
from growlm.study.runner import Log, final_val_loss

RESERVED = ("shape", "lr", "seed", "data-seed", "max-tokens", "max-steps", "output-dir")


@dataclass
class LRGridConfig:
    """shapes x parametrizations x lrs x seeds, each trained from scratch for `max_tokens`."""

    shapes: list[str]
    lrs: list[float]
    max_tokens: int
    parametrizations: dict[str, dict[str, Any]]  # name -> pretrain.py flags, e.g. {parametrization: completep}
    seeds: list[int] = field(default_factory=lambda: [1])
    args: dict[str, Any] = field(default_factory=dict)  # pretrain.py flags of every grid run (schedule, warmup)

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPES]
        if not self.shapes or unknown or len(set(self.shapes)) != len(self.shapes):
            raise ValueError(f"lr_grid.shapes must be distinct shapes of {sorted(SHAPES)}, got {self.shapes}")
        if len(set(self.lrs)) < 2 or min(self.lrs) <= 0:
            raise ValueError(f"lr_grid.lrs needs >= 2 distinct positive learning rates, got {self.lrs}")
        self.lrs = sorted(self.lrs)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"lr_grid.seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.parametrizations or self.max_tokens <= 0:
            raise ValueError("lr_grid needs a non-empty parametrizations mapping and a positive max_tokens")
        for where, flags in [("args", self.args), *self.parametrizations.items()]:
            clash = sorted(set(flags) & set(RESERVED))
            if clash:
                raise ValueError(f"lr_grid.{where} sets {clash}; the grid sets {list(RESERVED)} itself")


@dataclass
class LRGridStudyConfig:
    name: str
    output_dir: str
    lr_grid: LRGridConfig
    common: dict[str, Any] = field(default_factory=dict)  # pretrain.py flags of every run (data, batch, eval)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def is_lr_grid(path: str | Path) -> bool:
    """Whether a study YAML is an LR grid (has an `lr_grid:` section)."""
    return "lr_grid" in read_mapping(path, "study config", "pass one of configs/study/*.yaml")


def load_lr_grid(path: str | Path, *, output_dir: str | None = None) -> LRGridStudyConfig:
    data = read_mapping(path, "study config", "pass one of configs/study/*.yaml")
    if output_dir is not None:
        data["output_dir"] = output_dir
    return build(LRGridStudyConfig, data, str(path))


def run_dir(root: Path, parametrization: str, shape: str, lr: float, tokens: int, seed: int) -> Path:
    return root / "runs" / f"{parametrization}-{shape}-lr{lr:g}-t{tokens}-s{seed}"


def grid_stages(cfg: LRGridStudyConfig, seeds: list[int]) -> list[Stage]:
    """Every run of the grid, in the order they start: per seed, the largest shape first, one parametrization's
    curve after the other (an interrupted grid leaves whole curves)."""
    grid, root = cfg.lr_grid, Path(cfg.output_dir).resolve()
    shapes = sorted(grid.shapes, key=lambda s: -SHAPES[s].num_hidden_layers * SHAPES[s].hidden_size)
    stages = []
    for seed in seeds:
        for shape in shapes:
            for name, flags in grid.parametrizations.items():
                for lr in grid.lrs:
                    directory = run_dir(root, name, shape, lr, grid.max_tokens, seed)
                    args = {**cfg.common, **grid.args, **flags, "shape": shape, "lr": lr, "data-seed": seed}
                    command = pretrain_command(TrainStageConfig(max_tokens=grid.max_tokens, args=args),
                                               output_dir=directory, seed=seed, launch=cfg.launch)
                    stages.append(command_stage(f"{name} {shape} lr={lr:g} seed={seed}", directory, command,
                                                root / "logs" / f"{directory.name}.log", env=cfg.launch.env))
    return stages


def run_grid(cfg: LRGridStudyConfig, *, jobs: int | None = None, seeds: list[int] | None = None,
             log: Log = print) -> None:
    """Every unfinished run of the grid, `jobs` at a time."""
    run_chains([[stage] for stage in grid_stages(cfg, seeds or cfg.lr_grid.seeds)], jobs=jobs or cfg.launch.jobs,
               log=log)


def best_lr(points: list[dict]) -> dict:
    """The grid's argmin of the mean final loss, whether it sits on the edge of the grid, and (inside the grid) the
    vertex of the parabola through the argmin and its two neighbours in log2(lr)."""
    losses = [p["final_val_loss"]["mean"] for p in points]
    index = min(range(len(points)), key=losses.__getitem__)
    entry = {"lr": points[index]["lr"], "index": index, "at_edge": index in (0, len(points) - 1), "vertex_lr": None}
    if not entry["at_edge"]:
        x0, x1, x2 = (math.log2(points[index + k]["lr"]) for k in (-1, 0, 1))
        y0, y1, y2 = losses[index - 1:index + 2]
        denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
        b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / denominator
        entry["vertex_lr"] = 2 ** (-b / (2 * a)) if a > 0 else None  # a = 0: three equal losses
    return entry


def compute_grid_results(cfg: LRGridStudyConfig) -> dict:
    """Per parametrization and shape: mean ± SE final loss at every finished LR and the best LR; per
    parametrization: how many grid steps the best LR moves across the shapes (curves with an unfinished LR are
    reported but not compared)."""
    grid, root = cfg.lr_grid, Path(cfg.output_dir).resolve()
    results: dict = {"name": cfg.name, "lrs": grid.lrs, "shapes": grid.shapes, "seeds": grid.seeds,
                     "max_tokens": grid.max_tokens, "parametrizations": grid.parametrizations, "curves": {},
                     "optimum": {}}
    for name in grid.parametrizations:
        curves = results["curves"][name] = {}
        for shape in grid.shapes:
            points = []
            for lr in grid.lrs:
                done = [run_dir(root, name, shape, lr, grid.max_tokens, s) for s in grid.seeds]
                done = [d for d in done if is_done(d)]
                if done:
                    points.append({"lr": lr, "final_val_loss": mean_se([final_val_loss(d) for d in done])})
            if points:
                curves[shape] = {"points": points, "complete": len(points) == len(grid.lrs), "best": best_lr(points)}
        complete = {shape: curve["best"] for shape, curve in curves.items() if curve["complete"]}
        if len(complete) >= 2:
            indices = [best["index"] for best in complete.values()]
            vertices = [best["vertex_lr"] for best in complete.values()]
            results["optimum"][name] = {
                "best_lr": {shape: best["lr"] for shape, best in complete.items()},
                "grid_steps_moved": max(indices) - min(indices),
                "vertex_ratio": max(vertices) / min(vertices) if None not in vertices else None,
                "any_at_edge": any(best["at_edge"] for best in complete.values())}
    results["wall_time_s"] = round(stage_seconds(root), 1)
    return results


def format_grid_table(results: dict) -> str:
    """Markdown: final loss per LR (rows) and curve (columns), the best of each curve in bold; one line per
    parametrization on whether the best LR moved."""
    columns = [(name, shape) for name, curves in results["curves"].items() for shape in curves]
    seeds = results["seeds"]
    over = f"mean ± SE over the finished seeds of {seeds}; a value without ± is one seed" if len(seeds) > 1 else \
        "1 seed"
    lines = [f"## {results['name']}", "",
             f"Final validation loss after {results['max_tokens']:,} tokens ({over}); best LR of each curve in bold.",
             "", "| lr | " + " | ".join(f"{n} {s}" for n, s in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for lr in results["lrs"]:
        cells = []
        for name, shape in columns:
            curve = results["curves"][name][shape]
            point = next((p for p in curve["points"] if p["lr"] == lr), None)
            if point is None:
                cells.append("not run")
                continue
            loss = point["final_val_loss"]
            text = f"{loss['mean']:.4f}" + (f" ± {loss['se']:.4f}" if loss["se"] is not None else "")
            cells.append(f"**{text}**" if curve["best"]["lr"] == lr else text)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, curves in results["curves"].items():
        for shape, curve in curves.items():
            best = curve["best"]
            vertex = (f"{best['vertex_lr']:.3g}" if best["vertex_lr"] else
                      "none (argmin on the grid's edge)" if best["at_edge"] else "none (flat minimum)")
            lines.append(f"- {name} {shape}: best lr {best['lr']:g}; parabola vertex (log2 lr) {vertex}"
                         + ("" if curve["complete"] else "; curve incomplete"))
    for name, optimum in results["optimum"].items():
        moved = optimum["grid_steps_moved"]
        ratio = f", parabola vertices differ ×{optimum['vertex_ratio']:.2f}" if optimum["vertex_ratio"] else ""
        edge = "; an argmin is on the grid's edge, the true optimum may lie outside" if optimum["any_at_edge"] else ""
        lines.append(f"- **{name}**: the best LR moved {moved} grid step(s) across "
                     f"{', '.join(optimum['best_lr'])}{ratio}{edge}")
    lines += ["", f"Sum of the runs' wall times: {results['wall_time_s'] / 60:.1f} min (runs may overlap)."]
    return "\n".join(lines) + "\n"


def plot_grid(results: dict, out: Path) -> Path:
    """Final loss against LR (log x), one panel per parametrization, one line per shape, the argmin starred."""
    from growlm.pipeline.plot import plt

    names = list(results["curves"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), dpi=120, sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for shape, curve in results["curves"][name].items():
            lrs = [p["lr"] for p in curve["points"]]
            means = [p["final_val_loss"]["mean"] for p in curve["points"]]
            errors = [p["final_val_loss"]["se"] or 0.0 for p in curve["points"]]
            line = ax.errorbar(lrs, means, yerr=errors, marker="o", markersize=4, capsize=2, label=shape)
            best = curve["best"]
            ax.plot([best["lr"]], [means[best["index"]]], marker="*", markersize=14, color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"final validation loss ({results['max_tokens']:,} tokens)")
    fig.suptitle(f"{results['name']}: final loss vs LR (star: best of each curve)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(out, buffer.getvalue())
    return out


def write_grid_report(cfg: LRGridStudyConfig) -> dict:
    """`results.json`, `results.md` and `lr_grid.png` in the output folder, from the finished runs."""
    root = Path(cfg.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    results = compute_grid_results(cfg)
    write_json(root / "results.json", results, sort_keys=True)
    write_text(root / "results.md", format_grid_table(results))
    if any(results["curves"].values()):
        plot_grid(results, root / "lr_grid.png")
    return results
