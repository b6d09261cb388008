"""Which lm-eval tasks to run: the paper's eight, the offline held-out pair, or a custom list."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from growlm.eval.build import TASKS_DIR

logger = logging.getLogger(__name__)

# training.md §7: the paper's benchmarks, run 0-shot with these harness task names.
PAPER_TASKS = (
    "lambada_openai", "arc_challenge", "arc_easy", "logiqa", "piqa", "sciq", "winogrande", "wikitext",
)
# Shipped in growlm/eval/tasks/ and built from the vendored held-out test split; need no network.
OFFLINE_TASKS = ("slimpajama_continuation", "slimpajama_heldout_ppl")
_TRUTHY = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class TaskSelection:
    """Resolved task names, the name of the set they came from, and whether they need built-in tasks."""

    names: tuple[str, ...]
    label: str

    @property
    def needs_builtin_tasks(self) -> bool:
        return any(name not in OFFLINE_TASKS for name in self.names)

    @property
    def needs_offline_tasks(self) -> bool:
        return any(name in OFFLINE_TASKS for name in self.names)


def datasets_offline() -> bool:
    """True when HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set, i.e. the paper's datasets cannot be fetched."""
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def select_tasks(spec: str) -> TaskSelection:
    """`auto` (paper when online, else offline), `paper`, `offline`, or a comma-separated list of task names."""
    spec = spec.strip()
    if spec == "auto":
        if datasets_offline():
            logger.warning(
                "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set, so the paper's tasks cannot be downloaded; "
                "running the offline held-out tasks %s instead (unset them or pass --tasks paper for the paper's set)",
                ", ".join(OFFLINE_TASKS),
            )
            return TaskSelection(OFFLINE_TASKS, "offline")
        return TaskSelection(PAPER_TASKS, "paper")
    if spec == "paper":
        return TaskSelection(PAPER_TASKS, "paper")
    if spec == "offline":
        return TaskSelection(OFFLINE_TASKS, "offline")
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise ValueError("--tasks is empty; use auto, paper, offline or a comma-separated list of lm-eval task names")
    return TaskSelection(names, "custom")


def materialize_offline_tasks(dest_dir: Path, tasks_dir: Path = TASKS_DIR) -> Path:
    """Copy the offline task YAMLs into `dest_dir` with `data_files` made absolute.

    lm-eval passes `dataset_kwargs.data_files` straight to `datasets.load_dataset`, which resolves relative
    paths against the working directory, so the shipped relative paths are rewritten against `tasks_dir`.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in OFFLINE_TASKS:
        config = yaml.safe_load((tasks_dir / f"{name}.yaml").read_text(encoding="utf-8"))
        data_files = config["dataset_kwargs"]["data_files"]
        config["dataset_kwargs"]["data_files"] = {
            split: str((tasks_dir / path).resolve()) for split, path in data_files.items()
        }
        for path in config["dataset_kwargs"]["data_files"].values():
            if not Path(path).is_file():
                raise ValueError(f"offline task data {path} is missing; run scripts/build_eval_tasks.py")
        (dest_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dest_dir
