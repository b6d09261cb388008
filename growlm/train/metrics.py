"""`metrics.jsonl`: one record per optimizer step plus eval records, written by the main process."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Append-only JSON lines. On resume, records after the resumed step (from a killed run) are dropped first,
    so the file always describes one consistent history."""

    def __init__(self, path: str | Path, *, resumed_step: int | None, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resumed_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a `metrics.jsonl` written by `scripts/pretrain.py`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; the training stage did not write its metrics")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
