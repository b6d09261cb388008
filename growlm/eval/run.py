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
from growlm.source import has_tokenizer

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


def load_lm(config: EvalConfig):
    """An `HFLM` for the model (never with remote code); local folders without a tokenizer get the vendored one."""
    from lm_eval.models.huggingface import HFLM

    tokenizer = None
    if config.is_local and not has_tokenizer(Path(config.model)):
        logger.warning("%s has no tokenizer files; using the vendored llama-32k tokenizer", config.model)
        tokenizer = str(DEFAULT_TOKENIZER_DIR)
    return HFLM(
        pretrained=config.model,
        revision=config.revision or "main",
        tokenizer=tokenizer,
        dtype=config.dtype,
        device=config.device,
        batch_size=config.batch_size,
        trust_remote_code=False,
    )


def run_harness(config: EvalConfig, selection: TaskSelection, lm) -> dict[str, Any]:
    """Run `lm_eval.simple_evaluate` on the selected tasks; returns the harness's results dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="growlm-tasks-") as tmp:
        include_path = str(materialize_offline_tasks(Path(tmp))) if selection.needs_offline_tasks else None
        task_manager = TaskManager(include_path=include_path, include_defaults=selection.needs_builtin_tasks)
        return simple_evaluate(
            model=lm,
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
    """Evaluate, write the results JSON (atomically) and return (record, path)."""
    selection = select_tasks(config.tasks)
    logger.info("evaluating %s on %s tasks: %s (%s)", config.model, selection.label, ", ".join(selection.names),
                {k: v for k, v in asdict(config).items() if k not in ("model", "tasks")})
    record = summarize(run_harness(config, selection, load_lm(config)), config, selection)
    path = write_json(config.output_path(), record, sort_keys=True, durable=True)
    return record, path
