"""Stopping on a signal: the loop saves the optimizer step in flight and starts no other, and
scripts/slurm_pretrain.sbatch (run by bash with a fake srun / scancel / scontrol on PATH) forwards the time-limit
signal, waits for the save, requeues, and leaves a user's --resume alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import growlm.train.loop as loop
from growlm.train.checkpoint import COMPLETE_MARKER, complete_checkpoints
from growlm.train.config import parse_args
from tests.test_pretrain import ENV, REPO, TINY, last_logged_step, step_losses

SBATCH = REPO / "scripts" / "slurm_pretrain.sbatch"
JOB_ID = "4242"
FAKE_SRUN = r"""#!/bin/bash
echo "srun SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-}" >> "$FAKE_SLURM_LOG"
printf '%s\0' "$@" > "$FAKE_SLURM_LOG.srun-args"
echo $$ > "$FAKE_SLURM_LOG.srun-pid"
while [[ $1 == -* ]]; do shift; done
[[ -n ${FAKE_SRUN_DRY:-} ]] && exit 0
exec "$@"
"""
# Like slurmstepd, signal every process of the step (the launcher and its workers), not the batch shell.
FAKE_SCANCEL = r"""#!/bin/bash
echo "scancel $*" >> "$FAKE_SLURM_LOG"
tree() { echo "$1"; local child; for child in $(ps -o pid= --ppid "$1"); do tree "$child"; done; }
kill -s "${1#--signal=}" $(tree "$(cat "$FAKE_SLURM_LOG.srun-pid")") 2>/dev/null
exit 0
"""
FAKE_SCONTROL = r"""#!/bin/bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
if [[ $1 == show && $2 == hostnames ]]; then echo 127.0.0.1; fi
"""


@pytest.mark.parametrize(("hook", "extra_steps"), [("accumulate_gradients", 0), ("mfu", 1)])
def test_stop_is_honoured_right_after_the_optimizer_step(hook, extra_steps, tmp_path, monkeypatch):
    """SIGTERM during step 3's forward/backward (before its `optimizer.step()` and the stop check that follows)
    saves step 3 and runs no step 4. A signal after that check (while step 3 is being logged) is seen by step 4's
    check: the checkpoint is the first step whose optimizer.step() ends after the signal."""
    monkeypatch.chdir(REPO)
    original, calls = getattr(loop, hook), []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, hook, signalling)
    out = tmp_path / "run"
    cfg = parse_args([*TINY, "--output-dir", str(out), "--save-every", "100"])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit, match=f"after saving step {3 + extra_steps}"):
            loop.train(cfg)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == [f"step-0000000{3 + extra_steps}"]
    assert list(step_losses(out)) == list(range(1, 4 + extra_steps))  # no step after the saved one


def fake_slurm(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a 1-node, 2-process job whose srun runs the command here and whose scancel / scontrol
    record their arguments in FAKE_SLURM_LOG."""
    bin_dir = tmp_path / "fake-slurm-bin"
    bin_dir.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scancel": FAKE_SCANCEL, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**ENV, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"), "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NODELIST": "node1",
            "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_GPUS_ON_NODE": "2", "SLURM_CPUS_PER_TASK": "2",
            "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO), **extra}


def srun_command(tmp_path: Path) -> list[str]:
    return (tmp_path / "slurm.log.srun-args").read_text().split("\0")[:-1]


@pytest.mark.parametrize(("user_args", "expected"), [
    ([], ["--resume", "auto"]),
    (["--resume", "/runs/x/checkpoints/step-00000004"], ["--resume", "/runs/x/checkpoints/step-00000004"]),
    (["--resume=auto"], ["--resume=auto"]),
])
def test_sbatch_adds_resume_auto_only_without_a_user_resume(user_args, expected, tmp_path):
    env = fake_slurm(tmp_path, FAKE_SRUN_DRY="1")
    result = subprocess.run(["bash", str(SBATCH), "--config", "c.yaml", *user_args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = srun_command(tmp_path)
    # srun OPTIONS bash -c SCRIPT CONFIG GPUS_PER_NODE MASTER_ADDR MASTER_PORT PRETRAIN_ARGS...
    assert command[:3] == ["--kill-on-bad-exit=1", "bash", "-c"] and "exec accelerate launch" in command[3]
    port = str(20000 + int(JOB_ID) % 10000)
    assert command[4:8] == ["accelerate_configs/fsdp2_multinode.yaml", "2", "127.0.0.1", port]
    assert command[8:] == ["--config", "c.yaml", *expected]
    assert "srun SRUN_CPUS_PER_TASK=2" in (tmp_path / "slurm.log").read_text()


@pytest.mark.slow
def test_sbatch_saves_requeues_and_the_requeued_job_finishes(tmp_path):
    """USR1 to the batch shell (Slurm's `--signal=B:USR1@...`) mid-training: SIGTERM reaches the launcher and its
    FSDP2 workers, a complete checkpoint is written, then the job requeues itself; the requeued start resumes
    from it and finishes the run."""
    out = tmp_path / "run"
    args = [*TINY, "--max-steps", "8", "--output-dir", str(out)]
    env = fake_slurm(tmp_path)
    batch = subprocess.Popen(["bash", str(SBATCH), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while last_logged_step(out) < 2:
        assert batch.poll() is None and time.time() < deadline, batch.stderr.read()[-3000:]
        time.sleep(0.05)
    batch.send_signal(signal.SIGUSR1)
    _, stderr = batch.communicate(timeout=240)
    assert "stopped by SIGTERM after saving step" in stderr, stderr[-3000:]
    log = (tmp_path / "slurm.log").read_text().splitlines()
    assert f"scancel --signal=TERM {JOB_ID}" in log and log[-1] == f"scontrol requeue {JOB_ID}"
    ckpts = out / "checkpoints"
    saved = complete_checkpoints(ckpts)[-1]
    assert (saved / COMPLETE_MARKER).is_file() and not list(ckpts.glob("*.tmp"))
    assert 2 <= int(saved.name[5:]) < 8 and len(list(saved.glob("data_state_rank*.json"))) == 2
    # The requeued job: same id and arguments, Slurm counts the restart; it resumes and completes.
    result = subprocess.run(["bash", str(SBATCH), *args], cwd=REPO, env={**env, "SLURM_RESTART_COUNT": "1"},
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {saved}" in result.stderr and (out / "final" / "model.safetensors").is_file()
    assert list(step_losses(out)) == list(range(1, 9))
    assert (tmp_path / "slurm.log").read_text().count("requeue") == 1
