"""Stage runner: each stage owns a directory and is finished when `DIR/.done` exists, so re-runs skip it."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from growlm.atomic import write_json

DONE_MARKER = ".done"
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Stage:
    """A named unit of work whose completion is recorded by `directory/.done`."""

    name: str
    directory: Path
    run: Callable[[], dict]
    command: tuple[str, ...] = ()  # the CLI the stage runs, if any (shown by --dry-run)


def is_done(directory: Path) -> bool:
    return (directory / DONE_MARKER).is_file()


def mark_done(directory: Path, record: dict) -> None:
    """Write the completion marker last (atomically), with what the stage did."""
    write_json(directory / DONE_MARKER, record, sort_keys=True, durable=True)


def run_stage(stage: Stage, *, log: Callable[[str], None] = print) -> bool:
    """Run `stage` unless its marker exists; returns whether it ran."""
    if is_done(stage.directory):
        log(f"[{stage.name}] already done ({stage.directory}), skipping")
        return False
    log(f"[{stage.name}] running -> {stage.directory}")
    start = time.monotonic()
    record = stage.run()
    seconds = round(time.monotonic() - start, 1)
    mark_done(stage.directory, {"stage": stage.name, "seconds": seconds, **record})
    log(f"[{stage.name}] done in {seconds:.1f} s")
    return True


def run_chains(chains: list[list[Stage]], *, jobs: int, log: Callable[[str], None] = print) -> None:
    """Run each chain's stages in order, `jobs` chains at a time (independent chains only)."""
    from concurrent.futures import ThreadPoolExecutor

    def run(chain: list[Stage]) -> None:
        for stage in chain:
            run_stage(stage, log=log)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(run, chain) for chain in chains]:
            future.result()


def run_command(command: list[str], *, log_file: Path, env: dict[str, str] | None = None,
                capture_stdout: bool = False) -> dict:
    """Run one CLI with its output in `log_file` (stdout returned instead when `capture_stdout`);
    on failure raise SystemExit with the log's tail."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=subprocess.PIPE if capture_stdout else log,
                                stderr=subprocess.STDOUT if not capture_stdout else log, text=True,
                                env={**os.environ, **(env or {})})
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        raise SystemExit(f"command failed with exit code {result.returncode}: {' '.join(command)}\n"
                         f"full log: {log_file}; its last lines:\n{tail}")
    record = {"command": command, "log": str(log_file)}
    return {**record, "stdout": result.stdout.strip()} if capture_stdout else record
