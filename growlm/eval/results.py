"""The `eval_results.json` record: per-task metrics with standard errors, plus how they were produced.

Schema (one JSON object)::

    {"model": str, "revision": str | null, "harness": "lm-eval", "harness_version": "0.4.13",
     "dtype": "float32", "batch_size": 8, "device": "cpu", "num_fewshot": 0, "limit": null,
     "task_set": "offline" | "paper" | "custom",
     "tasks": {"<task>": {"dataset": str, "dataset_config": str | null, "split": str, "n": int,
                          "acc": p, "acc_se": sqrt(p(1-p)/n), "acc_stderr_harness": float, ...,
                          "word_perplexity": float, "byte_perplexity": float, "bits_per_byte": float}},
     "average": {"tasks": [...], "acc": mean, "acc_se": sqrt(sum se^2) / k}   # only when >= 2 acc tasks
    }
"""

from __future__ import annotations

import math
from typing import Any

ACCURACY_METRICS = ("acc", "acc_norm")
PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity")
RESULTS_FILENAME = "eval_results.json"


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy: sqrt(p(1-p)/n) (training.md §7)."""
    if n <= 0:
        raise ValueError(f"standard error needs n > 0 samples, got n={n}")
    return math.sqrt(p * (1.0 - p) / n)


def summarize_task(metrics: dict[str, Any], *, n: int, dataset: str, dataset_config: str | None = None,
                   split: str | None = None) -> dict[str, Any]:
    """One task's entry from the harness's `results[task]` dict (keys like `acc,none`)."""
    entry: dict[str, Any] = {"dataset": dataset, "dataset_config": dataset_config, "split": split, "n": n}
    for name in ACCURACY_METRICS + PERPLEXITY_METRICS:
        value = metrics.get(f"{name},none")
        if value is None:
            continue
        entry[name] = float(value)
        if name in ACCURACY_METRICS:
            entry[f"{name}_se"] = standard_error(float(value), n)
            harness_stderr = metrics.get(f"{name}_stderr,none")
            if isinstance(harness_stderr, (int, float)):
                entry[f"{name}_stderr_harness"] = float(harness_stderr)
    return entry


def average_accuracy(tasks: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Mean acc over the tasks that report one, with the SE of a mean of independent estimates."""
    names = [name for name, entry in tasks.items() if "acc" in entry]
    if len(names) < 2:
        return None
    mean = sum(tasks[name]["acc"] for name in names) / len(names)
    se = math.sqrt(sum(tasks[name]["acc_se"] ** 2 for name in names)) / len(names)
    return {"tasks": names, "acc": mean, "acc_se": se}


