"""Run a study: LR sweeps, then per seed the scratch baseline and base -> grow -> grown for every arm, each final
model evaluated (`scripts/evaluate.py`) on the seeds `eval.seeds` names.

Every run is a pipeline stage (`growlm.pipeline`: the same `pretrain.py` / `growth/stack.py` command lines and
`.done` markers), so an interrupted study resumes where it stopped and finished runs are skipped. Within one
seed all arms share the training seed and the data-order seed, so grown and scratch see the same blocks in the
same order (the grown run continues the base's stream with `--data-from`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from growlm.eval.results import RESULTS_FILENAME
from growlm.modeling import SHAPES
from growlm.pipeline.commands import evaluate_command, pretrain_args, pretrain_command, stack_command
from growlm.pipeline.config import TrainStageConfig
from growlm.pipeline.curves import eval_points
from growlm.train.metrics import read_metrics
from growlm.pipeline.run import command_stage
from growlm.pipeline.stages import is_done, run_chains
from growlm.study.config import ArmConfig, StudyConfig
from growlm.growth.types import LearnOptions
from growlm.train.config import PretrainConfig
from growlm.train.flops import flops_per_token

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudyLayout:
    """Where each run of a study writes."""

    root: Path

    def scratch(self, lr: float, tokens: int, seed: int) -> Path:
        return self.root / "scratch" / f"lr{lr:g}-t{tokens}-s{seed}"

    def base(self, name: str, lr: float, seed: int) -> Path:
        return self.root / "base" / f"{name}-lr{lr:g}-s{seed}"

    def grow(self, arm: str, base_lr: float, seed: int) -> Path:
        return self.root / "grow" / f"{arm}-b{base_lr:g}-s{seed}"

    def grown(self, arm: str, lr: float, base_lr: float, seed: int) -> Path:
        """Named by every LR it depends on, so a different sweep outcome never reuses a stale run."""
        return self.root / "grown" / f"{arm}-lr{lr:g}-b{base_lr:g}-s{seed}"

    def eval(self, run: Path) -> Path:
        """The evaluation of a run's final model (`eval_results.json`)."""
        return self.root / "eval" / f"{run.parent.name}-{run.name}"

    def log(self, run: Path) -> Path:
        return self.root / "logs" / f"{run.parent.name}-{run.name}.log"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def table(self) -> Path:
        return self.root / "results.md"

    @property
    def plot(self) -> Path:
        return self.root / "loss_vs_flops.png"


def run_args(cfg: StudyConfig, *layers: dict) -> dict:
    """pretrain.py flags: `common`, then each layer in turn (later layers win)."""
    args: dict = {}
    for layer in (cfg.common, *layers):
        args.update(layer)
    return args


def resolved(args: dict) -> PretrainConfig:
    """The pretraining config these flags give (to read seq_len, vocab and batch exactly as pretrain.py will)."""
    return pretrain_args(TrainStageConfig(max_steps=1, args=args))


def final_val_loss(run_dir: Path) -> float:
    """The last validation loss a finished run logged."""
    return eval_points(read_metrics(run_dir / "metrics.jsonl"))[-1][1]


def per_token_flops(cfg: StudyConfig, shape: str, count: str) -> int:
    from growlm.modeling import llama_config

    pre = resolved(run_args(cfg))
    return flops_per_token(llama_config(shape, vocab_size=pre.model.vocab_size), pre.data.seq_len, count)


def learn_steps(arm: ArmConfig) -> int:
    """G_learn's operator-training steps (each one global batch of the target, on top of the run's budget)."""
    if "learn" not in (arm.operator, arm.width_operator):
        return 0
    return int(arm.growth.get("learn-steps", LearnOptions.steps))


def grown_tokens(cfg: StudyConfig, arm: ArmConfig) -> int:
    """Tokens after growth that give the grown arm scratch's total FLOPs (base included) under `budget_count`,
    rounded down to whole global batches; G_learn's operator batches are paid out of the same budget."""
    count, base = cfg.report.budget_count, cfg.bases[arm.base]
    scratch_flops = per_token_flops(cfg, cfg.target.shape, count) * cfg.scratch.max_tokens
    base_flops = per_token_flops(cfg, base.shape, count) * base.max_tokens
    batch = resolved(run_args(cfg)).train.global_batch_tokens
    tokens = math.floor((scratch_flops - base_flops) / per_token_flops(cfg, cfg.target.shape, count) / batch) * batch
    tokens -= learn_steps(arm) * batch
    if tokens <= 0:
        raise ValueError(f"base {arm.base!r} alone costs more than the scratch budget under the {count} count; "
                         "lower its max_tokens or raise scratch.max_tokens")
    return tokens


class StudyRunner:
    """Builds every stage of a study and runs the unfinished ones, `jobs` at a time."""

    def __init__(self, cfg: StudyConfig, *, jobs: int | None = None, arms: list[str] | None = None,
                 seeds: list[int] | None = None, log: Log = print) -> None:
        """`arms`, `seeds`: run only these (the LR sweeps always use the config's first seed)."""
        self.cfg, self.jobs, self.log = cfg, jobs or cfg.launch.jobs, log
        self.seeds = seeds or cfg.seeds
        self.arms = {name: cfg.arms[name] for name in (arms or cfg.arms)}
        self.bases = {name: cfg.bases[name] for name in sorted({arm.base for arm in self.arms.values()})}
        self.layout = StudyLayout(Path(cfg.output_dir).resolve())
        self.env = cfg.launch.env

    def _train(self, name: str, directory: Path, max_tokens: int, args: dict, seed: int, *,
               init_from: Path | None = None, data_from: Path | None = None):
        stage_cfg = TrainStageConfig(max_tokens=max_tokens, args={**args, "data-seed": seed})
        command = pretrain_command(stage_cfg, output_dir=directory, seed=seed, launch=self.cfg.launch,
                                   init_from=init_from, data_from=data_from)
        return command_stage(name, directory, command, self.layout.log(directory), env=self.env)

    def eval_stages(self, run: Path, label: str, seed: int) -> list:
        """The evaluation of `run`'s final model, if `eval.seeds` covers `seed`."""
        seeds = {"all": self.cfg.seeds, "first": self.cfg.seeds[:1], "none": []}[self.cfg.eval.seeds]
        if seed not in seeds:
            return []
        directory = self.layout.eval(run)
        command = evaluate_command(self.cfg.eval, model=run / "final", output=directory / RESULTS_FILENAME)
        return [command_stage(f"eval {label} seed={seed}", directory, command, self.layout.log(directory),
                              create_dir=True, env=self.env)]

    def scratch_stage(self, lr: float, seed: int, tokens: int | None = None):
        cfg = self.cfg
        tokens = tokens or cfg.scratch.max_tokens
        directory = self.layout.scratch(lr, tokens, seed)
        args = run_args(cfg, cfg.target.args, {"shape": cfg.target.shape, "lr": lr})
        return self._train(f"scratch lr={lr:g} tokens={tokens} seed={seed}", directory, tokens, args, seed)

    def scratch_chain(self, lr: float, seed: int) -> list:
        """Scratch at the study's budget, then its evaluation."""
        train = self.scratch_stage(lr, seed)
        return [train, *self.eval_stages(train.directory, "scratch", seed)]

    @property
    def sweep_tokens(self) -> int:
        return self.cfg.target.sweep_tokens or self.cfg.scratch.max_tokens

    def base_stage(self, name: str, lr: float, seed: int):
        base = self.cfg.bases[name]
        args = run_args(self.cfg, base.args, {"shape": base.shape, "lr": lr})
        return self._train(f"base {name} lr={lr:g} seed={seed}", self.layout.base(name, lr, seed), base.max_tokens,
                           args, seed)

    def arm_stages(self, name: str, arm: ArmConfig, target_lr: float, base_lr: float, seed: int) -> list:
        cfg, layout = self.cfg, self.layout
        base_dir = layout.base(arm.base, base_lr, seed)
        grow_dir, grown_dir = layout.grow(name, base_lr, seed), layout.grown(name, target_lr, base_lr, seed)
        stack = stack_command(arm.growth_stage(SHAPES[cfg.target.shape]), src=base_dir / "final", out=grow_dir,
                              seed=seed)
        args = run_args(cfg, cfg.target.args, {"lr": target_lr}, arm.args)
        args.pop("shape", None)  # the grown model's shape comes from --init-from
        return [
            command_stage(f"grow {name} seed={seed}", grow_dir, stack, layout.log(grow_dir), env=self.env),
            self._train(f"grown {name} seed={seed}", grown_dir, grown_tokens(cfg, arm), args, seed,
                        init_from=grow_dir, data_from=base_dir / "final"),
            *self.eval_stages(grown_dir, f"grown {name}", seed),
        ]

    def _run_chains(self, chains: list[list]) -> None:
        run_chains(chains, jobs=self.jobs, log=self.log)

    def sweep(self) -> dict:
        """Run the LR sweeps (first seed) and return the chosen LRs with every sweep point."""
        cfg, seed = self.cfg, self.cfg.seeds[0]
        chains = [[self.scratch_stage(lr, seed, self.sweep_tokens)] for lr in cfg.target.lr_sweep]
        chains += [[self.base_stage(name, lr, seed)] for name, base in self.bases.items() for lr in base.lr_sweep]
        self._run_chains(chains)
        return self.chosen_lrs()

    def chosen_lrs(self, *, partial: bool = False) -> dict:
        """The LRs the study uses: each sweep's best final validation loss (first seed), or the fixed `args.lr`.
        `partial` (a report of what ran): a base whose sweep is unfinished is left out, and so are its arms."""
        cfg, seed = self.cfg, self.cfg.seeds[0]

        def pick(what: str, values: list[float], folder: Callable[[float], Path], fixed) -> dict | None:
            if not values:
                return {"lr": float(fixed), "sweep": []}
            missing = [lr for lr in values if not is_done(folder(lr))]
            if missing and partial and what != "target":
                self.log(f"[report] {what}: its LR sweep has unfinished runs (lr {missing}); its arms are left out")
                return None
            if missing:
                raise ValueError(f"the LR sweep of {what} has unfinished runs (lr {missing}); run the study without "
                                 "--report-only")
            points = [{"lr": lr, "final_val_loss": final_val_loss(folder(lr))} for lr in values]
            return {"lr": min(points, key=lambda p: p["final_val_loss"])["lr"], "sweep": points}

        target = pick("target", cfg.target.lr_sweep, lambda lr: self.layout.scratch(lr, self.sweep_tokens, seed),
                      cfg.target.args.get("lr"))
        bases = {name: pick(f"base {name}", base.lr_sweep, lambda lr, n=name: self.layout.base(n, lr, seed),
                            base.args.get("lr")) for name, base in self.bases.items()}
        return {"target": {**target, "sweep_tokens": self.sweep_tokens},
                "bases": {name: entry for name, entry in bases.items() if entry is not None}}

    def run(self) -> dict:
        """Every run of the study (skipping finished ones); returns the chosen LRs."""
        chosen = self.sweep()
        target_lr = chosen["target"]["lr"]
        base_lr = {name: entry["lr"] for name, entry in chosen["bases"].items()}
        chains = [self.scratch_chain(target_lr, seed) for seed in self.seeds]
        for seed in self.seeds:  # one chain per (seed, base): the base, then each arm grown from it
            for base_name in self.bases:
                chain = [self.base_stage(base_name, base_lr[base_name], seed)]
                for name, arm in self.arms.items():
                    if arm.base == base_name:
                        chain += self.arm_stages(name, arm, target_lr, base_lr[base_name], seed)
                chains.append(chain)
        self._run_chains(chains)
        return chosen
