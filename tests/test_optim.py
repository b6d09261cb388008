"""Optimizer groups, hyperparameters and clipping (training.md §11.4, with the issue's matrices-only decay)."""

import torch

from growlm.modeling import build_model
from growlm.train.config import OptimArgs
from growlm.train.optim import build_optimizer, param_groups


def tiny():
    return build_model("tiny-2L", vocab_size=128)


def test_decay_on_matrices_only_by_default():
    model = tiny()
    opt = build_optimizer(model, OptimArgs())
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.dim() >= 2), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_sp_mode_decays_everything_with_paper_hyperparameters():
    model = tiny()
    opt = build_optimizer(model, OptimArgs(weight_decay_all=True))
    for group in opt.param_groups:
        assert group["weight_decay"] == 0.1
        assert group["betas"] == (0.9, 0.95)
        assert group["eps"] == 1e-8
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out():
    model = tiny()
    model.model.embed_tokens.weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1, weight_decay_all=False)
    assert all(p is not model.model.embed_tokens.weight for g in groups for p in g["params"])


def test_clipping_uses_the_global_norm():
    model = tiny()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OptimArgs().grad_clip)
    assert torch.isclose(norm.double(), expected)
    after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters()))
    assert torch.isclose(after, torch.tensor(1.0, dtype=torch.float64), atol=1e-4)
