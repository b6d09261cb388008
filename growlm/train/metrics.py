"""`metrics.jsonl`: one record per optimizer step plus eval records, written by the main process; and its
human-readable twin, a dense progress line in the main process's log."""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import timedelta
from pathlib import Path

from growlm.atomic import write_text

logger = logging.getLogger(__name__)


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
            records = parse_records(self.path.read_text(), self.path)
            kept = [json.dumps(r) for r in records if r["step"] <= resumed_step]
            write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")


def progress_line(record: dict, *, total_steps: int, eta_s: float, data_wait_frac: float) -> str:
    """A step record as one log line: step/total, loss, lr, grad norm, tokens/s, MFU (on compute time) and the data
    wait's share of the step time (`data_wait_frac`, e.g. over the logging interval), peak memory, ETA."""
    mfu = "n/a" if record["mfu"] is None else f"{100 * record['mfu']:.1f}%"
    return (f"step {record['step']}/{total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.3e} | "
            f"grad_norm {record['grad_norm']:.3f} | tok/s {record['tokens_per_s']:,.0f} | mfu {mfu} | "
            f"data_wait {100 * data_wait_frac:.1f}% | peak_mem {record['peak_mem_gb']:.2f} GiB | "
            f"eta {timedelta(seconds=round(eta_s))}")


class ProgressLog:
    """Logs `progress_line` at INFO every `every` steps (0: none) and at the last step, in the main process only,
    with the data wait's share of the step time since the previous line. The ETA is the mean wall time per step of
    this process so far (evals and saves included)."""

    def __init__(self, *, total_steps: int, every: int, start_step: int, enabled: bool = True):
        self.total_steps, self.every, self.start_step, self.enabled = total_steps, every, start_step, enabled
        self.started = time.perf_counter()
        self.waited = self.stepped = 0.0  # data-wait and step seconds since the last line

    def write(self, record: dict) -> None:
        step = record["step"]
        self.waited, self.stepped = self.waited + record["data_wait_s"], self.stepped + record["step_s"]
        if not self.enabled or (step != self.total_steps and not (self.every and step % self.every == 0)):
            return
        per_step = (time.perf_counter() - self.started) / (step - self.start_step)
        logger.info(progress_line(record, total_steps=self.total_steps, eta_s=per_step * (self.total_steps - step),
                                  data_wait_frac=self.waited / self.stepped))
        self.waited = self.stepped = 0.0


def parse_records(text: str, path: Path) -> list[dict]:
    """The records of a `metrics.jsonl` text. A partial last line (a crash mid-write: no newline at its end, or
    not JSON) is dropped with a warning; a bad line elsewhere is an error naming it."""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = all(not rest.strip() for rest in lines[number:])
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a metrics record")
        except ValueError:
            if last:
                logger.warning("%s: dropping a partial last line (a crash while it was written): %.60r", path, line)
                break
            raise ValueError(f"{path}, line {number}: not a JSON metrics record: {line[:60]!r}") from None
        records.append(record)
    return records


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a `metrics.jsonl` written by `scripts/pretrain.py` (a partial last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; the training stage did not write its metrics")
    return parse_records(path.read_text(), path)
