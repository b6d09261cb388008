"""FSDP2 on CPU (gloo): shard a tiny Llama per decoder layer, train a step with the project's optimizer, save
model + optimizer with torch.distributed.checkpoint, load into a fresh sharded model, and get identical state
and identical next-step losses. This is the sharded path accelerate uses for SHARDED_STATE_DICT checkpoints."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from growlm.modeling import build_model
from growlm.train.config import OptimArgs
from growlm.train.optim import build_optimizer


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
