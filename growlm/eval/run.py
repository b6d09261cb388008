"""Evaluate a causal LM with lm-evaluation-harness (`simple_evaluate` + `HFLM`) and write `eval_results.json`."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from growlm.assets import DEFAULT_TOKENIZER_DIR
from growlm.atomic import write_json
from growlm.eval.results import RESULTS_FILENAME, average_accuracy, summarize_task
from growlm.eval.task_sets import TaskSelection, materialize_offline_tasks, select_tasks
from growlm.growth.safetensors_io import LazySafetensorsReader
from growlm.source import has_tokenizer, resolve_source

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run. `model` is a local model folder or a Hub repo id."""

    model: str
    revision: str | None = None
    tasks: str = "auto"
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"
    limit: int | None = None
    num_fewshot: int = 0
    seed: int = 1234
    output: Path | None = None

    def __post_init__(self):
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.device not in DEVICES:
            problems.append(f"device {self.device!r} is not one of {DEVICES}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit must be >= 1 samples per task, got {self.limit}")
        if self.num_fewshot < 0:
            problems.append(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.revision is not None and self.is_local:
            problems.append(f"--revision applies to Hub ids, but {self.model!r} is a local folder; drop --revision")
        if problems:
            raise ValueError("invalid evaluation config: " + "; ".join(problems))

    @property
    def is_local(self) -> bool:
        return Path(self.model).is_dir()

    def output_path(self) -> Path:
        """`--output`, else `eval_results.json` inside a local model folder, else `<org>--<name>.eval_results.json`."""
        if self.output is not None:
            return Path(self.output)
        if self.is_local:
            return Path(self.model) / RESULTS_FILENAME
        return Path.cwd() / f"{self.model.replace('/', '--')}.{RESULTS_FILENAME}"


def load_lm(config: EvalConfig, model_dir: Path):
    """An `HFLM` for the resolved model folder (never with remote code); without a tokenizer it gets the vendored
    one."""
    from lm_eval.models.huggingface import HFLM

    tokenizer = None
    if not has_tokenizer(model_dir):
        logger.warning("%s has no tokenizer files; using the vendored llama-32k tokenizer", config.model)
        tokenizer = str(DEFAULT_TOKENIZER_DIR)
    return HFLM(
        pretrained=str(model_dir),
        tokenizer=tokenizer,
        dtype=config.dtype,
        device=config.device,
        batch_size=config.batch_size,
        trust_remote_code=False,
    )


def run_harness(config: EvalConfig, selection: TaskSelection, model_dir: Path) -> dict[str, Any]:
    """Check the task names, load the model and run `lm_eval.simple_evaluate`; returns the harness's results."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="growlm-tasks-") as tmp:
        include_path = str(materialize_offline_tasks(Path(tmp))) if selection.needs_offline_tasks else None
        task_manager = TaskManager(include_path=include_path, include_defaults=selection.needs_builtin_tasks)
        unknown = [name for name in selection.names if name not in task_manager.all_tasks]
        if unknown:
            raise ValueError(f"--tasks: unknown lm-eval task(s) {unknown}; use auto, paper, offline or names from "
                             "`lm_eval --tasks list`")
        return simple_evaluate(
            model=load_lm(config, model_dir),
            tasks=list(selection.names),
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            task_manager=task_manager,
            log_samples=False,
            random_seed=config.seed,
            numpy_random_seed=config.seed,
            torch_random_seed=config.seed,
            fewshot_random_seed=config.seed,
        )


def summarize(harness_output: dict[str, Any], config: EvalConfig, selection: TaskSelection) -> dict[str, Any]:
    """The `eval_results.json` record (schema in `growlm.eval.results`) from the harness output."""
    import lm_eval

    tasks = {}
    # `configs` holds the leaf tasks only: a group name (e.g. mmlu) contributes its subtasks, not an aggregate.
    for name, task_config in harness_output["configs"].items():
        tasks[name] = summarize_task(
            harness_output["results"][name], n=int(harness_output["n-samples"][name]["effective"]),
            dataset=(task_config.get("metadata") or {}).get("source_dataset") or task_config.get("dataset_path"),
            dataset_config=task_config.get("dataset_name"),
            split=task_config.get("test_split") or task_config.get("validation_split"),
        )
    record = {
        "model": config.model,
        "revision": config.revision,
        "harness": "lm-eval",
        "harness_version": lm_eval.__version__,
        "dtype": config.dtype,
        "batch_size": config.batch_size,
        "device": config.device,
        "num_fewshot": config.num_fewshot,
        "limit": config.limit,
        "seed": config.seed,
        "task_set": selection.label,
        "tasks": tasks,
    }
    average = average_accuracy(tasks)
    if average:
        record["average"] = average
    return record


def evaluate_model(config: EvalConfig) -> tuple[dict[str, Any], Path]:
    """Evaluate, write the results JSON (atomically) and return (record, path). Every input is checked before the
    model is loaded: the output path, the model (folder or Hub id, readable safetensors) and the task names."""
    selection = select_tasks(config.tasks)
    output = config.output_path()
    if output.is_dir() or not output.parent.is_dir():
        raise ValueError(f"--output {output}: must be a file path in an existing folder (it is "
                         f"{'a folder' if output.is_dir() else 'in a missing folder'})")
    source = resolve_source(config.model, config.revision)
    LazySafetensorsReader(source.path).close()  # a truncated or corrupt weight file fails here, in one line
    logger.info("evaluating %s on %s tasks: %s (%s)", config.model, selection.label, ", ".join(selection.names),
                {k: v for k, v in asdict(config).items() if k not in ("model", "tasks")})
    record = summarize(run_harness(config, selection, source.path), config, selection)
    path = write_json(output, record, sort_keys=True, durable=True)
    return record, path
