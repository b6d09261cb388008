"""One typed pretraining config: dataclass sections, YAML file, CLI overrides (defaults < YAML < CLI).

YAML files nest fields under their section (`model:`, `data:`, `optim:`, `schedule:`, `checkpoint:`, `log:`,
`train:`). On the command line every field is `--<field-name>` with dashes (`--max-steps 100`, `--shape tiny-2L`,
`--lr 3e-4`); a name that two sections share keeps the plain flag for `train` and takes the section as prefix
elsewhere (`--seed` is the training seed, `--data-seed` the data-order seed). Unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from growlm.data.config import DataConfig
from growlm.train.schedule import SCHEDULES


@dataclass
class ModelArgs:
    shape: str = "tiny-2L"  # a name from growlm.modeling.SHAPES (ignored with --init-from)
    init: str = "tinyllama"  # tinyllama (training.md §4) | hf
    vocab_size: int = 32000
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (GPU with flash-attn only)


@dataclass
class OptimArgs:
    lr: float = 1e-3  # peak LR (training.md §5 table)
    weight_decay: float = 0.1
    weight_decay_all: bool = False  # True = the paper's SP mode: decay norms and embeddings too
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # adamw | adamw_8bit (bitsandbytes, GPU)


@dataclass
class ScheduleArgs:
    warmup_steps: int = 3000
    horizon: str = "planned"  # planned (the schedule completes at the last step) | paper (300,000 steps)
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | wsd (warmup-stable-decay)
    decay_fraction: float = 0.2  # wsd: the last fraction of the horizon decays linearly (0 = stay at the peak)


@dataclass
class CheckpointArgs:
    save_every: int = 1000  # optimizer steps between checkpoints (one is always written at the end)
    keep_last: int = 3
    resume: str | None = None  # auto | PATH to a step-N folder
    init_from: str | None = None  # HF folder or Hub id: weights only, fresh optimizer and warmup
    init_revision: str | None = None
    # Continue the data stream where a finished run stopped (its final/ folder or a data_state.json): with a grown
    # model, the target starts on the first sample the base did not consume (training.md §6.4 `continue`).
    data_from: str | None = None


@dataclass
class LogArgs:
    eval_every: int = 0  # optimizer steps between validation-loss evals (0: only at the start and end)
    tensorboard: bool = True
    peak_tflops: float | None = None  # per-device peak for MFU; default from the GPU (H100: 989) or $GROWLM_PEAK_TFLOPS
    log_every: int = field(default=10, metadata={
        "help": "optimizer steps between progress lines in the main process's log (0: only the last step)"})


@dataclass
class TrainArgs:
    output_dir: str = "runs/pretrain"
    max_steps: int | None = None
    max_tokens: int | None = None
    global_batch_tokens: int = 2_097_152  # tokens per optimizer step over all ranks and accumulation steps
    micro_batch_size: int = 8  # sequences per rank per forward
    seed: int = 3407
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | no
    compile: bool = False  # torch.compile (GPU)
    liger: bool = False  # Liger kernels (GPU, needs liger-kernel)
    activation_checkpointing: bool = False
    freeze: str = "none"  # none | grown (train only the layers growth.json marks new) | layer list "8-23"
    lora_rank: int = 0  # > 0: train LoRA adapters (peft), merged into plain weights at export
    lora_alpha: float = 16.0
    max_nonfinite_skips: int = 0  # consecutive non-finite steps to skip before aborting (0: abort at the first)
    push_to_hub: str | None = None  # repo id for final/ (checkpoints go to step-N branches)


@dataclass
class PretrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimArgs = field(default_factory=OptimArgs)
    schedule: ScheduleArgs = field(default_factory=ScheduleArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    log: LogArgs = field(default_factory=LogArgs)
    train: TrainArgs = field(default_factory=TrainArgs)

    def __post_init__(self) -> None:
        problems = validation_problems(self)
        if problems:
            raise ValueError("invalid pretraining config:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = [f.name for f in dataclasses.fields(PretrainConfig)]
CHOICES = {
    ("model", "init"): ("tinyllama", "hf"),
    ("model", "attn_implementation"): ("sdpa", "eager", "flash_attention_2"),
    ("optim", "optimizer"): ("adamw", "adamw_8bit"),
    ("schedule", "horizon"): ("planned", "paper"),
    ("schedule", "schedule"): SCHEDULES,
    ("train", "mixed_precision"): ("auto", "bf16", "no"),
}


def validation_problems(cfg: PretrainConfig) -> list[str]:
    """Every problem with a config, each naming the field and the fix (empty when valid)."""
    problems = []
    for (section, name), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            problems.append(f"{section}.{name}={value!r}: choose one of {list(allowed)}")
    t, ck = cfg.train, cfg.checkpoint
    if t.max_steps is None and t.max_tokens is None:
        problems.append("set train.max_steps (--max-steps) or train.max_tokens (--max-tokens)")
    for name in ("max_steps", "max_tokens", "global_batch_tokens", "micro_batch_size"):
        value = getattr(t, name)
        if value is not None and value <= 0:
            problems.append(f"train.{name}={value} must be positive")
    if ck.init_from and ck.resume not in (None, "auto"):
        problems.append("checkpoint.init_from and an explicit checkpoint.resume path exclude each other: init-from "
                        "loads weights for a new run, resume continues a run; pass one (or --resume auto)")
    if ck.save_every <= 0 or ck.keep_last <= 0:
        problems.append("checkpoint.save_every and checkpoint.keep_last must be positive")
    if t.global_batch_tokens % cfg.data.seq_len:
        problems.append(f"train.global_batch_tokens={t.global_batch_tokens} is not a multiple of data.seq_len="
                        f"{cfg.data.seq_len}")
    if not 0 <= cfg.schedule.min_lr_ratio <= 1 or cfg.schedule.warmup_steps < 0:
        problems.append("schedule.min_lr_ratio must lie in [0, 1] and schedule.warmup_steps be >= 0")
    if not 0 <= cfg.schedule.decay_fraction <= 1:
        problems.append(f"schedule.decay_fraction={cfg.schedule.decay_fraction} must lie in [0, 1] (0 = no decay)")
    if t.lora_rank and t.freeze != "none":
        problems.append("train.lora_rank and train.freeze exclude each other: LoRA already freezes the base weights")
    return problems


def planned_steps(train: TrainArgs) -> int:
    """Optimizer steps the run plans: max_steps, or max_tokens over the global batch (the smaller if both)."""
    candidates = [train.max_steps] if train.max_steps else []
    if train.max_tokens:
        candidates.append(math.ceil(train.max_tokens / train.global_batch_tokens))
    return min(candidates)


# ---- parsing ---------------------------------------------------------------------------------------------------


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(PretrainConfig)
    return {name: hints[name] for name in SECTIONS}


def cli_flags() -> dict[str, tuple[str, str]]:
    """`--flag` -> (section, field) under the naming rule of the module docstring."""
    owners: dict[str, list[str]] = {}
    for section, cls in _section_types().items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(section)
    flags = {}
    for name, sections in owners.items():
        for section in sections:
            plain = len(sections) == 1 or section == "train"
            flag = name if plain else f"{section}_{name}"
            flags["--" + flag.replace("_", "-")] = (section, name)
    return flags


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML or CLI value to a field's declared type (so `1e-4` becomes a float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item.strip() if isinstance(item, str) else item, typing.get_args(annotation)[0], where)
                for item in items if item != ""]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    return str(value)


def _apply(raw: dict[str, dict[str, Any]], source: str) -> PretrainConfig:
    sections = _section_types()
    built = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        values = raw.get(section) or {}
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown} in section '{section}'; valid keys: {sorted(hints)}")
        built[section] = cls(**{k: _coerce(v, hints[k], f"{source}: {section}.{k}") for k, v in values.items()})
    return PretrainConfig(**built)


def load_yaml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a pretraining YAML; unknown sections are an error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; pass an existing YAML to --config")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of sections {SECTIONS}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; valid sections: {SECTIONS}")
    for section, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ValueError(f"{path}: section '{section}' must be a mapping of keys to values")
    return raw


def parse_args(argv: list[str]) -> PretrainConfig:
    """`[--config FILE] [--flag value ...]` -> a validated PretrainConfig (defaults < YAML < CLI)."""
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    args = list(argv)
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ValueError("--config needs a YAML file path")
        for section, values in load_yaml(args[i + 1]).items():
            raw[section].update(values or {})
        del args[i:i + 2]
    flags = cli_flags()
    while args:
        flag = args.pop(0)
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif args and not args[0].startswith("--"):
            value = args.pop(0)
        else:
            raise ValueError(f"{flag} needs a value (e.g. {flag} VALUE)")
        if flag not in flags:
            raise ValueError(f"unknown option {flag}; run with --help to list the options")
        section, name = flags[flag]
        raw[section][name] = value
    return _apply(raw, "command line")


def help_text() -> str:
    """One line per flag with its default, grouped by section."""
    lines = ["usage: pretrain.py [--config FILE] [--flag VALUE ...]   (defaults < YAML < command line)"]
    flags = cli_flags()
    defaults = PretrainConfig.__dataclass_fields__
    for flag, (section, name) in flags.items():
        default = getattr(defaults[section].default_factory(), name)
        lines.append(f"  {flag:<28} {section}.{name} (default: {default!r})")
    return "\n".join(lines)


def accumulation_steps(*, global_batch_tokens: int, seq_len: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step; the global batch must split evenly over ranks and micro-batches."""
    sequences = global_batch_tokens // seq_len
    per_step = micro_batch_size * world_size
    if global_batch_tokens % seq_len or sequences % per_step:
        raise ValueError(
            f"global batch of {global_batch_tokens} tokens = {global_batch_tokens / seq_len:g} sequences of "
            f"{seq_len} does not split into micro-batches of {micro_batch_size} on {world_size} processes; "
            f"make global_batch_tokens a multiple of seq_len * micro_batch_size * world_size = {seq_len * per_step}")
    return sequences // per_step
