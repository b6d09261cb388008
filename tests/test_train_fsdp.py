"""FSDP2 on CPU (gloo): shard a tiny Llama per decoder layer, train a step with the project's optimizer, save
model + optimizer with torch.distributed.checkpoint, load into a fresh sharded model, and get identical state
and identical next-step losses. This is the sharded path accelerate uses for SHARDED_STATE_DICT checkpoints.
Then the same through `accelerate launch` with the 8-GPU FSDP2 config on 2 CPU processes and the project's
training loop: SIGTERM -> save -> resume gives bitwise the losses of an uninterrupted run. And FSDP2's memory: only
the main process builds or loads the full model, and gradient accumulation keeps gradients sharded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard
from transformers import LlamaForCausalLM

from growlm.modeling import build_model, empty_model, llama_config
from growlm.train.config import OptimArgs
from growlm.train.optim import build_optimizer
from tests.test_pretrain import ENV, PYTHON, REPO, TINY, last_logged_step, step_losses


def sharded_model_and_optimizer():
    model = build_model("tiny-2L", vocab_size=128, seed=0)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, build_optimizer(model, OptimArgs(lr=1e-2))


def train_step(model, optimizer, batch) -> float:
    loss = model(input_ids=batch[:, :-1], labels=batch[:, 1:].contiguous(), shift_labels=batch[:, 1:].contiguous()).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def worker(rank: int, world: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    batches = torch.randint(0, 128, (3, 2, 17), generator=torch.Generator().manual_seed(rank))
    model, optimizer = sharded_model_and_optimizer()
    train_step(model, optimizer, batches[0])
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    expected = [train_step(model, optimizer, b) for b in batches[1:]]

    fresh, fresh_optimizer = sharded_model_and_optimizer()
    model_state, optim_state = get_state_dict(fresh, fresh_optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(fresh, fresh_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = [train_step(fresh, fresh_optimizer, b) for b in batches[1:]]
    assert resumed == expected, (resumed, expected)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    a, _ = get_state_dict(model, optimizer, options=full)
    b, _ = get_state_dict(fresh, fresh_optimizer, options=full)
    if rank == 0:
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dist.destroy_process_group()


def test_fsdp2_dcp_round_trip(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "dcp"), 29641), nprocs=2, join=True)
    assert (tmp_path / "dcp" / ".metadata").is_file()
    assert len(list((tmp_path / "dcp").glob("*.distcp"))) == 2


def fsdp_launch(out, port: int, *extra: str) -> list[str]:
    """`accelerate launch` of the 8-GPU FSDP2 config on 2 CPU processes. ACCELERATE_USE_CPU=1 (in FSDP_ENV) makes
    accelerate use gloo; the training loop then keeps FSDP2, which accelerate alone would replace with DDP."""
    return [PYTHON, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/fsdp2_1node_8gpu.yaml",
            "--num_processes", "2", "--main_process_port", str(port), "scripts/pretrain.py", *TINY,
            "--max-steps", "6", "--output-dir", str(out), *extra]


FSDP_ENV = {**ENV, "ACCELERATE_USE_CPU": "1"}


@pytest.mark.slow
def test_fsdp2_through_accelerate_resumes_exactly_after_sigterm(tmp_path):
    reference = tmp_path / "reference"
    result = subprocess.run(fsdp_launch(reference, 29651), cwd=REPO, env=FSDP_ENV, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Saving FSDP model" in result.stderr  # FSDP's sharded checkpoint, not DDP's
    assert (reference / "checkpoints" / "step-00000006" / "pytorch_model_fsdp_0" / ".metadata").is_file()

    out = tmp_path / "interrupted"
    proc = subprocess.Popen(fsdp_launch(out, 29652, "--resume", "auto"), cwd=REPO, env=FSDP_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while last_logged_step(out) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the launcher, which forwards it to both workers
    _, stderr = proc.communicate(timeout=240)
    assert "stopped by SIGTERM after saving step" in stderr, stderr[-3000:]
    saved = max(int(p.name[5:]) for p in (out / "checkpoints").glob("step-????????"))
    assert 2 <= saved < 6 and not list((out / "checkpoints").glob("*.tmp"))

    result = subprocess.run(fsdp_launch(out, 29653, "--resume", "auto"), cwd=REPO, env=FSDP_ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert step_losses(out) == step_losses(reference)  # bitwise on CPU
    ours, theirs = load_file(out / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def rss_mib() -> float:
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1)) / 1024


def test_empty_model_has_the_built_layout_and_real_buffers_but_writes_no_weights():
    config = llama_config("6L1024H", vocab_size=4096)  # 326 MiB of fp32 weights
    with torch.device("meta"):
        reference = LlamaForCausalLM(config)
    before = rss_mib()
    model = empty_model(config)
    assert rss_mib() - before < 20
    params = dict(model.named_parameters())
    assert {n: (p.shape, p.dtype) for n, p in params.items()} == {
        n: (p.shape, p.dtype) for n, p in reference.named_parameters()}
    assert all(p.device.type == "cpu" for p in params.values())
    assert len({p.data_ptr() for p in params.values()}) == len(params)  # accelerate's FSDP2 maps by data_ptr
    rotary = model.model.rotary_emb
    assert torch.equal(rotary.inv_freq, type(rotary)(config).inv_freq)


def init_memory(out: Path, *args: str) -> dict[int, dict]:
    """benchmarks/init_memory.py through `accelerate launch` of the FSDP2 config on 2 CPU processes, with glibc's
    mmap threshold lowered so that RSS follows the live tensors (freed blocks go back to the OS)."""
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/fsdp2_1node_8gpu.yaml",
           "--num_processes", "2", "--main_process_port", "29655", "benchmarks/init_memory.py", *args]
    result = subprocess.run(cmd, cwd=REPO, env={**FSDP_ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(m) for m in re.findall(r"\{\"rank\".*?\}", result.stdout)]
    return {line["rank"]: line for line in lines}


@pytest.mark.slow
def test_fsdp2_loads_on_the_main_process_only_and_accumulates_sharded_gradients(tmp_path):
    """--init-from a bf16 folder (6L1024H at vocab 4096: 326 MiB in fp32). Rank 1 builds an empty model where rank 0
    loads the full one, and after the broadcast holds about its half (on CPU the shards live in CPU memory; on GPUs
    in device memory); the gathered weights equal the folder's. A step of 2 micro-batches stays well under the
    ~1.6 x model that FSDP2's no_sync reaches (an unsharded gradient of every parameter). Measured: build 497 / 8,
    prepare 503 / 192, step 387 / 371 MiB on ranks 0 / 1; before, rank 1 had build 497, prepare 519, step 501."""
    build_model("6L1024H", vocab_size=4096).to(torch.bfloat16).save_pretrained(tmp_path / "init")
    ranks = init_memory(tmp_path, "--init-from", str(tmp_path / "init"), "--accumulation", "2")
    main, other = ranks[0], ranks[1]
    model = main["model"]
    assert main["fsdp2"] and other["receives_weights"] and not main["receives_weights"]
    assert main["matches_init"] is True
    assert main["build"] > model and other["build"] < 0.1 * model
    assert other["prepare"] < 0.75 * model  # its half of the weights plus one full tensor in flight
    assert main["step"] < 1.4 * model and other["step"] < 1.4 * model
