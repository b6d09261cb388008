"""One typed pretraining config: dataclass sections, YAML file, command line (defaults < YAML < command line).

YAML files nest fields under their section (`model:`, `data:`, `optim:`, `schedule:`, `checkpoint:`, `log:`,
`train:`). On the command line every field is `--<field-name>` with dashes or underscores (`--max-steps 100`,
`--shape=tiny-2L`, `--lr 3e-4`, `--compile` alone for true); a name that two sections share keeps the plain flag for
`train` and takes the section as prefix elsewhere (`--seed` is the training seed, `--data-seed` the data-order seed).
`transformers.HfArgumentParser` builds the flags from the fields' help; `growlm.config_io` types every value.
Unknown keys and flags are an error.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser

from growlm.atomic import check_apart
from growlm.completep.config import ScalingArgs, scaling_problems
from growlm.config_io import arg, build, check_keys, field_values, read_mapping
from growlm.data.config import DataConfig
from growlm.growth.layer_map import parse_id_ranges
from growlm.modeling import SHAPES
from growlm.train.schedule import SCHEDULES


class UsageError(ValueError):
    """Bad input found once the run has started (files, checkpoints, the process count): `scripts/pretrain.py`
    prints it as one `error:` line and exits with status 2, like a bad option."""


@dataclass
class ModelArgs:
    shape: str = arg("tiny-2L", "a name from growlm.modeling.SHAPES (ignored with --init-from)")
    init: Literal["tinyllama", "hf"] = arg("tinyllama", "weight init: tinyllama (training.md §4) or hf")
    vocab_size: int = arg(32000, "vocabulary size of a new model")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = arg(
        "sdpa", "attention kernel (flash_attention_2: GPU with flash-attn only)")


@dataclass
class OptimArgs:
    lr: float = arg(1e-3, "peak LR (training.md §5 table)")
    weight_decay: float = arg(0.1, "AdamW weight decay")
    weight_decay_all: bool = arg(False, "the paper's SP mode: decay norms and embeddings too")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.95, "AdamW beta2")
    eps: float = arg(1e-8, "AdamW epsilon")
    grad_clip: float = arg(1.0, "gradient-norm clipping threshold")
    optimizer: Literal["adamw", "adamw_8bit"] = arg("adamw", "adamw, or adamw_8bit (bitsandbytes, GPU)")


@dataclass
class ScheduleArgs:
    warmup_steps: int = arg(3000, "optimizer steps of linear LR warmup")
    horizon: Literal["planned", "paper"] = arg(
        "planned", "planned: the schedule completes at the last step; paper: at 300,000 steps")
    min_lr_ratio: float = arg(0.1, "final LR as a fraction of the peak")
    schedule: Literal[SCHEDULES] = arg("cosine", "cosine, or wsd (warmup-stable-decay)")
    decay_fraction: float = arg(0.2, "wsd: the last fraction of the horizon decays linearly (0 = stay at the peak)")


@dataclass
class CheckpointArgs:
    save_every: int = arg(1000, "optimizer steps between checkpoints (one is always written at the end)")
    keep_last: int = arg(3, "checkpoints to keep")
    resume: str | None = arg(None, "auto (the latest checkpoint, if any) or PATH to a step-N folder")
    init_from: str | None = arg(None, "HF folder or Hub id: weights only, fresh optimizer and warmup")
    overwrite: bool = arg(False, "start a fresh run in an output folder that holds another run (final/ or "
                                 "checkpoints): the old run is moved to OUTPUT_DIR/.replaced-<time>/ and deleted "
                                 "once the new run's first checkpoint is complete")
    init_revision: str | None = arg(None, "revision of the --init-from Hub repo")
    data_from: str | None = arg(None, "continue the data stream where a finished run stopped (its final/ folder or a "
                                      "data_state.json): a grown model starts on the first sample the base did not "
                                      "consume (training.md §6.4)")


@dataclass
class LogArgs:
    eval_every: int = arg(0, "optimizer steps between validation-loss evals (0: only at the start and end)")
    tensorboard: bool = arg(True, "write TensorBoard logs")
    peak_tflops: float | None = arg(None, "per-device peak for MFU; default from the GPU (H100: 989) or "
                                          "$GROWLM_PEAK_TFLOPS")
    log_every: int = arg(10, "optimizer steps between progress lines in the main process's log (0: only the last "
                                "step)")


@dataclass
class TrainArgs:
    output_dir: str = arg("runs/pretrain", "run folder: checkpoints, logs, final/")
    max_steps: int | None = arg(None, "optimizer steps to run (with --max-tokens: the smaller wins)")
    max_tokens: int | None = arg(None, "tokens to train on (1e9 is fine), rounded up to whole global batches")
    global_batch_tokens: int = arg(2_097_152, "tokens per optimizer step over all ranks and accumulation steps")
    micro_batch_size: int = arg(8, "sequences per rank per forward")
    seed: int = arg(3407, "training seed (model init, dropout)")
    mixed_precision: Literal["auto", "bf16", "no"] = arg("auto", "auto: bf16 on GPU, fp32 on CPU")
    compile: bool = arg(False, "torch.compile (GPU)")
    liger: bool = arg(False, "Liger kernels (GPU, needs liger-kernel)")
    activation_checkpointing: bool = arg(False, "recompute activations in the backward pass to save memory")
    freeze: str = arg("none", "none, grown (train only the layers growth.json marks new) or a layer list like 8-23")
    ramp_steps: int | None = arg(None, "masked growth (G_random): optimizer steps per ramp phase, overriding the "
                                       "--init-from folder's growth.json")
    lora_rank: int = arg(0, "> 0: train LoRA adapters (peft), merged into plain weights at export")
    lora_alpha: float = arg(16.0, "LoRA scaling alpha")
    max_nonfinite_skips: int = arg(0, "consecutive non-finite steps to skip before aborting (0: abort at the first)")
    push_to_hub: str | None = arg(None, "repo id for final/ (checkpoints go to step-N branches)")


@dataclass
class PretrainConfig:
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimArgs = field(default_factory=OptimArgs)
    schedule: ScheduleArgs = field(default_factory=ScheduleArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    log: LogArgs = field(default_factory=LogArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    scaling: ScalingArgs = field(default_factory=ScalingArgs)

    def __post_init__(self) -> None:
        problems = validation_problems(self)
        if problems:
            raise ValueError("invalid pretraining config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = typing.get_type_hints(PretrainConfig)


def validation_problems(cfg: PretrainConfig) -> list[str]:
    """Every problem with a config, each naming the field and the fix (empty when valid)."""
    problems = []
    for section, cls in SECTIONS.items():
        for name, hint in typing.get_type_hints(cls).items():
            value = getattr(getattr(cfg, section), name)
            if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
                problems.append(f"{section}.{name}={value!r}: choose one of {list(typing.get_args(hint))}")
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
    if (t.global_batch_tokens > 0 and cfg.data.seq_len > 0 and t.micro_batch_size > 0
            and not t.global_batch_tokens % cfg.data.seq_len
            and (t.global_batch_tokens // cfg.data.seq_len) % t.micro_batch_size):
        problems.append(f"train.global_batch_tokens={t.global_batch_tokens} = "
                        f"{t.global_batch_tokens // cfg.data.seq_len} sequences of {cfg.data.seq_len} does not split "
                        f"into micro-batches of train.micro_batch_size={t.micro_batch_size}")
    o = cfg.optim
    for name, value, ok, rule in [
        ("lr", o.lr, o.lr > 0, "a positive number"),
        ("weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
        ("beta1", o.beta1, 0 <= o.beta1 < 1, "in [0, 1)"),
        ("beta2", o.beta2, 0 <= o.beta2 < 1, "in [0, 1)"),
        ("eps", o.eps, o.eps > 0, "a positive number"),
        ("grad_clip", o.grad_clip, o.grad_clip > 0, "a positive number"),
    ]:
        if not (math.isfinite(value) and ok):
            problems.append(f"optim.{name}={value} must be {rule}")
    if cfg.model.vocab_size <= 0:
        problems.append(f"model.vocab_size={cfg.model.vocab_size} must be positive")
    if not ck.init_from and cfg.model.shape not in SHAPES:
        problems.append(f"model.shape={cfg.model.shape!r} is unknown; choose one of {sorted(SHAPES)} "
                        f"(or --init-from a model folder)")
    for name in ("eval_every", "log_every"):
        if getattr(cfg.log, name) < 0:
            problems.append(f"log.{name}={getattr(cfg.log, name)} must be >= 0 (0 turns it off)")
    if cfg.log.peak_tflops is not None and not (math.isfinite(cfg.log.peak_tflops) and cfg.log.peak_tflops > 0):
        problems.append(f"log.peak_tflops={cfg.log.peak_tflops} must be a positive number (or none)")
    if t.lora_rank < 0 or not (math.isfinite(t.lora_alpha) and t.lora_alpha > 0):
        problems.append(f"train.lora_rank={t.lora_rank} must be >= 0 and train.lora_alpha={t.lora_alpha} positive")
    if t.ramp_steps is not None and (t.ramp_steps <= 0 or not ck.init_from):
        problems.append(f"train.ramp_steps={t.ramp_steps} must be positive and needs --init-from a masked-growth "
                        "folder (growlm-stack --operator random or --width-operator random)")
    if t.max_nonfinite_skips < 0:
        problems.append(f"train.max_nonfinite_skips={t.max_nonfinite_skips} must be >= 0")
    if t.freeze == "grown" and not ck.init_from:
        problems.append("train.freeze=grown needs --init-from a grown model folder that holds growth.json")
    elif t.freeze not in ("none", "grown"):
        try:
            layers = parse_id_ranges(t.freeze, "train.freeze", alternatives="'none' / 'grown'")
        except ValueError as err:
            problems.append(str(err))
        else:
            num_layers = None if ck.init_from else getattr(SHAPES.get(cfg.model.shape), "num_hidden_layers", None)
            if num_layers is not None and max(layers) >= num_layers:
                problems.append(f"train.freeze={t.freeze!r} selects layers {layers}; model.shape="
                                f"{cfg.model.shape!r} has layers 0-{num_layers - 1}")
    if ck.overwrite and ck.resume is not None:
        problems.append("checkpoint.overwrite starts a fresh run and checkpoint.resume continues one; pass one")
    problems += scaling_problems(cfg.scaling, weight_decay_all=cfg.optim.weight_decay_all, lora_rank=t.lora_rank)
    return problems


def _looks_local(name: str) -> bool:
    """Whether a folder-or-Hub-id value names a local path (it exists, or it is written as a path)."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def environment_problems(cfg: PretrainConfig) -> list[str]:
    """Problems with the files a config names (run before any work; `validation_problems` does not look at the
    disk, so a pipeline can plan stages whose inputs do not exist yet)."""
    from growlm.data.sources import _is_glob, shard_files  # imported here: `datasets` is heavy
    from growlm.source import TOKENIZER_FILES

    problems = []
    t, ck, data = cfg.train, cfg.checkpoint, cfg.data
    out = Path(t.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        problems.append(f"train.output_dir={t.output_dir} is a file, not a folder; pass a folder for the run")
    if ck.init_from and _looks_local(ck.init_from):
        init = Path(ck.init_from).expanduser()
        if not init.is_dir():
            problems.append(f"checkpoint.init_from={ck.init_from}: no such model folder")
        else:
            try:
                check_apart(out, init, out_flag="train.output_dir", source_flag="checkpoint.init_from")
            except ValueError as err:
                problems.append(str(err))
    if data.format == "shards":
        from growlm.data.shards import MANIFEST

        problems += [f"data.source={data.source}: no token shards for split {split} ({MANIFEST} missing); write them "
                     f"with scripts/tokenize_data.py --split {split} --out {data.source}"
                     for split in (data.train_split, data.validation_split)
                     if not (Path(data.source).expanduser() / split / MANIFEST).is_file()]
    elif _is_glob(data.source) or _looks_local(data.source):
        if not _is_glob(data.source) and not Path(data.source).expanduser().is_dir():
            problems.append(f"data.source={data.source}: no such folder; pass a SlimPajama-layout folder, a glob of "
                            f"*.jsonl[.zst] files or a Hub dataset id")
        else:
            for split in (data.train_split, data.validation_split):
                try:
                    shard_files(str(Path(data.source).expanduser()) if not _is_glob(data.source) else data.source,
                                split)
                except ValueError as err:
                    problems.append(f"data.source: {err}")
    if _looks_local(data.tokenizer):
        folder = Path(data.tokenizer).expanduser()
        if not folder.is_dir():
            problems.append(f"data.tokenizer={data.tokenizer}: no such tokenizer folder; pass a folder or a Hub id")
        elif not any((folder / name).is_file() for name in TOKENIZER_FILES):
            problems.append(f"data.tokenizer={data.tokenizer} holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    if ck.data_from and not Path(ck.data_from).expanduser().exists():
        problems.append(f"checkpoint.data_from={ck.data_from}: no such folder or file; pass a finished run's final/ "
                        f"or its data_state.json")
    if ck.resume not in (None, "auto") and not Path(ck.resume).is_dir():
        problems.append(f"checkpoint.resume={ck.resume}: no such checkpoint folder; pass OUTPUT_DIR/checkpoints/"
                        f"step-N or auto")
    return problems


def planned_steps(train: TrainArgs) -> int:
    """Optimizer steps the run plans: max_steps, or max_tokens over the global batch (the smaller if both)."""
    candidates = [train.max_steps] if train.max_steps else []
    if train.max_tokens:
        candidates.append(math.ceil(train.max_tokens / train.global_batch_tokens))
    return min(candidates)


# ---- parsing ---------------------------------------------------------------------------------------------------


def cli_flags() -> dict[str, tuple[str, str]]:
    """`--flag` -> (section, field) under the naming rule of the module docstring."""
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(section)
    flags = {}
    for name, sections in owners.items():
        for section in sections:
            plain = len(sections) == 1 or section == "train"
            flag = name if plain else f"{section}_{name}"
            flags["--" + flag.replace("_", "-")] = (section, name)
    return flags


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _flag_sections() -> list[type]:
    """One dataclass per section whose fields are named as their flags; HfArgumentParser turns them into arguments.

    Booleans stay switches and Literal fields choices; every other value stays text for `growlm.config_io`."""
    by_section: dict[str, list] = {section: [] for section in SECTIONS}
    for flag, (section, name) in cli_flags().items():
        source = SECTIONS[section].__dataclass_fields__[name]
        hint = typing.get_type_hints(SECTIONS[section])[name]
        kind = hint if hint is bool or typing.get_origin(hint) is Literal else str
        by_section[section].append((_dest(flag), kind, field(default=source.default, metadata=source.metadata,
                                                               default_factory=source.default_factory)))
    return [dataclasses.make_dataclass(f"{section}_flags", fields, namespace={"_argument_group_name": section})
            for section, fields in by_section.items()]


class _Parser(HfArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ValueError(message)


def build_parser() -> HfArgumentParser:
    """The `scripts/pretrain.py` argument parser: `--config FILE` and one flag per config field."""
    parser = _Parser(_flag_sections(), allow_abbrev=False,
                     usage="pretrain.py [--config FILE] [--flag VALUE ...]   (defaults < YAML < command line)")
    parser.add_argument("--config", metavar="FILE", help="pretraining YAML (configs/pretrain/*.yaml, or a run's "
                                                         "config.yaml); its values become the defaults")
    return parser


def load_yaml(path: str | Path) -> dict[str, dict[str, Any]]:
    """A pretraining YAML's typed values per section; unknown sections and keys are an error."""
    raw = read_mapping(path, "config file", "pass an existing YAML to --config")
    check_keys(raw, SECTIONS, str(path))
    return {section: field_values(cls, raw.get(section) or {}, str(path), section) for section, cls in SECTIONS.items()}


def parse_args(argv: list[str]) -> PretrainConfig:
    """`[--config FILE] [--flag value ...]` -> a validated PretrainConfig (defaults < YAML < CLI)."""
    parser = build_parser()
    flags = cli_flags()
    path = parser.parse_known_args(argv)[0].config
    if path:
        values = load_yaml(path)
        parser.set_defaults(**{_dest(flag): values[section][name] for flag, (section, name) in flags.items()
                               if name in values[section]})
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(f"unknown option {' '.join(unknown)}; run with --help to list the options")
    raw: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for flag, (section, name) in flags.items():
        raw[section][name] = getattr(args, _dest(flag))
    return PretrainConfig(**{section: build(cls, raw[section], "command line", section)
                             for section, cls in SECTIONS.items()})


def help_text() -> str:
    """`--help`: every flag with its meaning and default, grouped by section."""
    return build_parser().format_help()


def accumulation_steps(*, global_batch_tokens: int, seq_len: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step; the global batch must split evenly over ranks and micro-batches."""
    sequences = global_batch_tokens // seq_len
    per_step = micro_batch_size * world_size
    if global_batch_tokens % seq_len or sequences % per_step:
        raise UsageError(
            f"global batch of {global_batch_tokens} tokens = {global_batch_tokens / seq_len:g} sequences of "
            f"{seq_len} does not split into micro-batches of {micro_batch_size} on {world_size} processes; "
            f"make global_batch_tokens a multiple of seq_len * micro_batch_size * world_size = {seq_len * per_step}")
    return sequences // per_step
