"""Elastic resume: a checkpoint written by P processes resumes on P' != P with the same global batch (the
accumulation steps change instead), in shards and streaming mode (both save a global data position).

What equality holds: the resumed run trains the same global samples in the same order from the same weights,
optimizer and scheduler state, but each optimizer step's gradient is summed over a different split (2 micro-batches
on one process vs 1 micro-batch per rank plus an all-reduce), so the sums differ in float summation order only. The
losses therefore agree with the uninterrupted single-process run to rel 1e-5 (as 1 vs 2 processes do without any
resume), not bitwise; a wrong data position or a lost optimizer state shifts them by far more (~1e-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from growlm.train.checkpoint import SAVE_HOOK_ENV
from tests.test_pretrain import PYTHON, TINY, pretrain_cmd, run, step_losses

pytestmark = pytest.mark.slow  # six tiny runs, four of them through accelerate launch on 2 CPU processes


def two_process_cmd(out: Path, port: int, *extra: str) -> list[str]:
    return [PYTHON, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu_2proc.yaml",
            "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port), "scripts/pretrain.py", *TINY,
            "--output-dir", str(out), *extra]


def launch(processes: int, out: Path, port: int, *extra: str, **env):
    cmd = pretrain_cmd(out, *extra) if processes == 1 else two_process_cmd(out, port, *extra)
    return run(cmd, ACCELERATE_USE_CPU="1", **env)


def resume_elsewhere(out: Path, before: int, after: int, port: int, *flags: str):
    """Train on `before` processes until the save of step 4 crashes (step 2 is the newest checkpoint), then resume on
    `after` processes to the end (step 6)."""
    crashed = launch(before, out, port, *flags, "--resume", "auto", **{SAVE_HOOK_ENV: "crash@4"})
    assert crashed.returncode != 0 and not (out / "checkpoints" / "step-00000004").exists()
    state = json.loads((out / "checkpoints" / "step-00000002" / "COMPLETE").read_text())
    assert state["num_processes"] == before
    return launch(after, out, port + 1, *flags, "--resume", "auto")


def assert_close(resumed: dict[int, float], reference: dict[int, float]) -> None:
    assert list(resumed) == list(reference) == [1, 2, 3, 4, 5, 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), (step, resumed, reference)


@pytest.fixture(scope="module")
def shard_flags(shards) -> list[str]:
    return ["--format", "shards", "--source", str(shards), "--block-shuffle", "16"]


@pytest.fixture(scope="module")
def shard_reference(shard_flags, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted single-process run: 2 sequences x 2 accumulation steps per optimizer step."""
    out = tmp_path_factory.mktemp("shard-reference")
    result = run(pretrain_cmd(out, *shard_flags))
    assert result.returncode == 0, result.stderr[-3000:]
    return step_losses(out)


@pytest.mark.parametrize(("before", "after", "port"), [(2, 1, 29661), (1, 2, 29663)])
def test_shards_resume_on_another_process_count(shard_flags, shard_reference, tmp_path, before, after, port):
    out = tmp_path / "run"
    result = resume_elsewhere(out, before, after, port, *shard_flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"written by {before} processes, this run has {after}" in result.stderr
    assert_close(step_losses(out), shard_reference)
    saved = out / "checkpoints" / "step-00000006"
    assert len(list(saved.glob("data_state_rank*.json"))) == after
    assert len(list(saved.glob("random_states_*.pkl"))) == after


def test_streaming_resumes_on_another_process_count(tmp_path):
    """Streaming mode packs the same global block sequence on every rank, so the last rank's state after a step is
    the global position (`PackedStream.state_dict`): 2 -> 1 processes resumes as exactly as shards mode does."""
    reference = tmp_path / "reference"
    assert run(pretrain_cmd(reference)).returncode == 0
    out = tmp_path / "run"
    result = resume_elsewhere(out, 2, 1, 29665)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_close(step_losses(out), step_losses(reference))
