"""G_learn (growth.md §3.5, §4.5, §10 tests 6 and 10): the depth start is G_stack bitwise, only the operator trains and
it lowers the loss, the materialised model is a plain Llama equal to the operator's output; width maps start [I; G];
growlm-stack --operator learn + pretraining runs the phase first and counts its tokens and FLOPs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_llama, tiny_llama
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from growlm.cli.stack import main as stack_main
from growlm.growth.layer_map import resolve_layer_map
from growlm.growth.learn import LearnedGrowth
from growlm.growth.operators import GrowthOptions, grow_state_dict
from growlm.growth.types import LearnOptions
from growlm.modeling import count_parameters, layer_tensor_shapes, tensor_shapes
from growlm.train.config import UsageError, parse_args
from growlm.train.flops import full_flops_per_token, training_flops
from growlm.train.learn_phase import operator_step
from growlm.train.loop import train
from growlm.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
EMBED = "model.embed_tokens.weight"
WIDER = dict(hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=4)


def depth_operator(src: LlamaForCausalLM, layer_map="stack", num_layers: int = 6, **kwargs):
    """G_learn over `src` (3 layers) to `num_layers`, with its target config."""
    config, _ = grow_state_dict(src.config, src.state_dict(),
                                GrowthOptions(depth_op="learn", layer_map=layer_map, num_layers=num_layers))
    resolved = resolve_layer_map(layer_map, src.config.num_hidden_layers, num_layers)
    return LearnedGrowth(src.config, config, src.state_dict(), layer_map=resolved, width=False, **kwargs), config


def fixed_batch(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(seed))


def train_steps(op: LearnedGrowth, config, steps: int, lr: float = 1e-2) -> tuple[LlamaForCausalLM, list[float]]:
    """`steps` AdamW steps of the operator on one fixed batch, as the learn phase takes them."""
    model = LlamaForCausalLM(config).train()
    optimizer = torch.optim.AdamW(op.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    batch, losses = fixed_batch(), []
    for _ in range(steps):
        losses.append(float(operator_step(op, model, [batch], num_items=batch[:, 1:].numel())))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model, losses


@pytest.mark.parametrize("layer_map", ["stack", [2, 0, 1, 1, 2]])
@pytest.mark.parametrize(("tied", "bias"), [(False, True), (True, False)])
def test_depth_start_is_g_stack_bitwise(layer_map, tied, bias):
    src = tiny_llama(tied=tied, bias=bias)
    num_layers = 6 if layer_map == "stack" else len(layer_map)
    options = dict(layer_map=layer_map, num_layers=num_layers)
    _, stacked = grow_state_dict(src.config, src.state_dict(), GrowthOptions(depth_op="stack", **options))
    _, written = grow_state_dict(src.config, src.state_dict(), GrowthOptions(depth_op="learn", **options))
    op, _ = depth_operator(src, layer_map, num_layers)
    generated = op()
    assert list(written) == list(generated) == list(stacked)
    for name, tensor in stacked.items():
        assert torch.equal(written[name], tensor) and torch.equal(generated[name], tensor), name


def test_three_steps_train_only_the_mixes():
    src = tiny_llama()
    op, config = depth_operator(src)
    source = {name: tensor.clone() for name, tensor in op.named_buffers()}
    mixes = [mix.detach().clone() for mix in op.mix]
    assert {name.split(".")[0] for name, _ in op.named_parameters()} == {"mix"}
    assert len(op.mix) == len(layer_tensor_shapes(src.config))  # one M_X [L', L] per tensor kind
    model = LlamaForCausalLM(config).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(op.parameters(), lr=1e-3)
    for step in range(3):
        batch = fixed_batch(step)
        operator_step(op, model, [batch], num_items=batch[:, 1:].numel())
        assert all(mix.grad is not None and mix.grad.abs().sum() > 0 for mix in op.mix)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(not torch.equal(mix, start) for mix, start in zip(op.mix, mixes))
    assert all(torch.equal(tensor, source[name]) for name, tensor in op.named_buffers())  # source and IO frozen
    assert all(torch.equal(p, before[name]) and p.grad is None for name, p in model.named_parameters())


@pytest.mark.parametrize("kind", ["depth", "depth+width", "depth, train_io"])
def test_training_lowers_the_loss_on_a_fixed_batch(kind):
    src = tiny_llama()
    if kind == "depth+width":
        config, _ = grow_state_dict(src.config, src.state_dict(),
                                    GrowthOptions(depth_op="learn", width_op="learn", g=2, **WIDER))
        op = LearnedGrowth(src.config, config, src.state_dict(), layer_map=[0, 1, 2] * 2, width=True)
    else:
        op, config = depth_operator(src, train_io=kind.endswith("train_io"))
    _, losses = train_steps(op, config, steps=8)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("tied", [False, True])
def test_materialised_model_is_a_plain_llama_equal_to_the_operator(tied, tmp_path):
    src = tiny_llama(tied=tied)
    op, config = depth_operator(src)
    model, _ = train_steps(op, config, steps=3)
    generated = {name: tensor.detach() for name, tensor in op().items()}
    # trained: target layer 3 is no longer a copy of source layer 0
    assert not torch.equal(generated["model.layers.3.mlp.up_proj.weight"],
                           src.state_dict()["model.layers.0.mlp.up_proj.weight"])
    op.materialise(model)
    plain = LlamaForCausalLM(config)
    plain.load_state_dict({**generated, **({"lm_head.weight": generated[EMBED]} if tied else {})}, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, plain.state_dict()[name]), name
    ids = fixed_batch()
    with torch.no_grad():
        expected = functional_call(model.eval(), generated, args=(ids,)).logits
        assert torch.equal(plain.eval()(ids).logits, expected)
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert type(reloaded) is LlamaForCausalLM
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)


@pytest.mark.parametrize("head_structured", [False, True])
@pytest.mark.parametrize("tied", [False, True])
def test_width_shapes_identity_rows_strict_load_and_tied_head(tied, head_structured):
    src = tiny_llama(tied=tied)
    options = GrowthOptions(width_op="learn", head_structured=head_structured, **WIDER)
    config, written = grow_state_dict(src.config, src.state_dict(), options)
    op = LearnedGrowth(src.config, config, src.state_dict(), layer_map=None, width=True,
                       head_structured=head_structured, seed=options.seed)
    generated = {name: tensor.detach() for name, tensor in op().items()}
    assert {name: tuple(t.shape) for name, t in generated.items()} == tensor_shapes(config)
    for name, tensor in written.items():  # growth wrote the operator's start
        torch.testing.assert_close(tensor, generated[name], rtol=1e-6, atol=1e-6)
    for name, b in op.maps.items():  # B = [I; G]
        assert torch.equal(b[:b.shape[1]], torch.eye(b.shape[1])), name
        assert b[b.shape[1]:].abs().sum() > 0, name
    assert op.maps["emb"].shape == (128, 64)
    assert op.maps["q"].shape == ((8, 4) if head_structured else (128, 64))
    E = src.state_dict()[EMBED]
    torch.testing.assert_close(generated[EMBED], E @ op.maps["emb"].detach().T)
    model = LlamaForCausalLM(config)
    model.load_state_dict({**generated, **({"lm_head.weight": generated[EMBED]} if tied else {})}, strict=True)
    op.materialise(model)
    if tied:
        assert "lm_head.weight" not in generated and torch.equal(model.lm_head.weight, generated[EMBED])
    else:
        torch.testing.assert_close(generated["lm_head.weight"],
                                   src.state_dict()["lm_head.weight"] @ op.maps["emb"].detach().T)


@pytest.mark.parametrize(("options", "message"), [
    (dict(depth_op="learn", g=2, noise_alpha=0.2), "noise_alpha=0.2 with depth_op='learn'"),
    (dict(width_op="learn", noise_alpha=0.2, **WIDER), "noise_alpha=0.2 with width_op='learn'"),
    (dict(depth_op="learn", g=2, learn=LearnOptions(steps=0)), r"learn.steps=0 must be a positive int"),
    (dict(depth_op="learn", g=2, learn=LearnOptions(steps=-3)), r"learn.steps=-3 must be a positive int"),
    (dict(depth_op="learn", g=2, learn=LearnOptions(steps=10, warmup=20)), r"learn.warmup=20 must be an int in"),
    (dict(depth_op="learn", g=2, learn=LearnOptions(lr=0.0)), r"learn.lr=0.0 must be a positive number"),
    (dict(depth_op="learn", g=2, learn=LearnOptions(min_lr=1.0)), r"learn.min_lr=1.0 must lie in \[0, learn.lr"),
    (dict(depth_op="learn", width_op="split", g=2, **WIDER), "width_op='split' cannot be combined with G_learn"),
    (dict(depth_op="learn", g=2, head_structured=True), "head_structured=True applies to width_op='learn' only"),
])
def test_invalid_learn_options_raise(options, message):
    src = tiny_llama()
    with pytest.raises(ValueError, match=message):
        grow_state_dict(src.config, src.state_dict(), GrowthOptions(**options))


def test_project_growth_json_sets_the_learn_options():
    from growlm.growth.prts_config import project_to_job

    job = project_to_job({"depth": {"op": "learn", "learn": {"steps": 5, "lr": "1e-4", "train_io": True}},
                          "width": {"op": "learn", "head_structured": True}})
    assert job.options.learn == LearnOptions(steps=5, lr=1e-4, train_io=True) and job.options.head_structured


def test_learn_flags_need_a_learn_operator(tmp_path, capsys):
    src = save_tiny_llama(tmp_path / "src", with_tokenizer=True)
    assert stack_main(["--src", str(src), "--out", str(tmp_path / "out"), "--g", "2", "--learn-steps", "5"]) == 2
    assert "add --operator learn" in capsys.readouterr().err and not (tmp_path / "out").exists()


# --- growlm-stack --operator learn, then pretraining: the phase runs first and is counted ----------------------------

LEARN_STEPS, MAIN_STEPS, SEQUENCES = 3, 2, 2
RUN = ["--config", "configs/pretrain/tiny_cpu.yaml", "--seq-len", "32", "--micro-batch-size", "2",
       "--global-batch-tokens", str(32 * SEQUENCES), "--validation-blocks", "1", "--warmup-steps", "0",
       "--max-steps", str(MAIN_STEPS), "--save-every", "1", "--keep-last", "5"]


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-layer source grown to 4 layers with G_learn (3 operator steps), then pretrained for 2 steps."""
    root = tmp_path_factory.mktemp("learn")
    src = save_tiny_llama(root / "src", with_tokenizer=True, layers=2)
    assert stack_main(["--src", str(src), "--out", str(root / "grown"), "--g", "2", "--operator", "learn",
                       "--learn-steps", str(LEARN_STEPS), "--learn-warmup", "1", "--learn-lr", "1e-2"]) == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        train(parse_args([*RUN, "--output-dir", str(root / "run"), "--init-from", str(root / "grown")]))
    return root / "grown", root / "run"


def test_pretraining_runs_the_learn_phase_first_and_counts_it(learned_run):
    grown, run = learned_run
    growth = json.loads((grown / "growth.json").read_text())
    assert growth["operator"] == "G_learn" and growth["layer_map"] == [0, 1, 0, 1]
    assert growth["learn"] == {"steps": LEARN_STEPS, "lr": 1e-2, "min_lr": 7e-6, "warmup": 1, "weight_decay": 0.1,
                               "train_io": False, "head_structured": False}
    records = read_metrics(run / "metrics.jsonl")
    learn = [r for r in records if r.get("type") == "learn"]
    steps = [r for r in records if "type" not in r]
    per_step = 32 * SEQUENCES
    assert [r["learn_step"] for r in learn] == [1, 2, 3] and [r["tokens"] for r in learn] == [64, 128, 192]
    assert [r["tokens"] for r in steps] == [(LEARN_STEPS + 1) * per_step, (LEARN_STEPS + 2) * per_step]
    config = AutoModelForCausalLM.from_pretrained(run / "final").config
    n_ne = count_parameters(config)["non_embedding"]
    # The operator's own FLOPs: per step, M_X @ S_X forward and the M_X gradient, 2 * L' * L * n_X each.
    mixing = LEARN_STEPS * 4 * 4 * 2 * sum(torch.Size(s).numel() for s in layer_tensor_shapes(config).values())
    training = json.loads((run / "final" / "training.json").read_text())
    assert training["learn"]["mixing_flops"] == mixing and training["learn"]["steps"] == LEARN_STEPS
    assert training["learn"]["final_loss"] == learn[-1]["loss"]
    assert steps[-1]["flops"] == training["flops"] == training_flops(n_ne, steps[-1]["tokens"]) + mixing
    assert steps[-1]["flops_full"] == full_flops_per_token(config, 32) * steps[-1]["tokens"] + mixing
    assert training["tokens"] == steps[-1]["tokens"] and training["steps"] == MAIN_STEPS
    # The main phase read the stream after the learn phase's batches.
    assert json.loads((run / "final" / "data_state.json").read_text())["block"] == (LEARN_STEPS + MAIN_STEPS) * 2
    start = load_file(grown / "model.safetensors")
    assert not torch.equal(load_file(run / "final" / "model.safetensors")["model.layers.2.self_attn.q_proj.weight"],
                           start["model.layers.2.self_attn.q_proj.weight"])


def test_resume_after_the_phase_is_exact_and_skips_it(learned_run, tmp_path, monkeypatch):
    grown, run = learned_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-00000002")
    monkeypatch.chdir(REPO)
    train(parse_args([*RUN, "--output-dir", str(resumed), "--init-from", str(grown), "--resume", "auto"]))
    assert (resumed / "final" / "model.safetensors").read_bytes() == (run / "final" / "model.safetensors").read_bytes()
    def losses(folder: Path) -> list[tuple]:
        return [(r.get("type"), r["step"], r["tokens"], r.get("loss"), r.get("val_loss"))
                for r in read_metrics(folder / "metrics.jsonl")]

    assert losses(resumed) == losses(run)  # the learn records kept, step 2 repeated bitwise
    assert json.loads((resumed / "final" / "training.json").read_text())["learn"] == \
        json.loads((run / "final" / "training.json").read_text())["learn"]


def test_a_changed_source_is_refused(learned_run, tmp_path, monkeypatch):
    grown, _ = learned_run
    growth = json.loads((grown / "growth.json").read_text())
    changed = shutil.copytree(growth["source"], tmp_path / "src")  # the source, trained further after growth
    weights = load_file(changed / "model.safetensors")
    weights["model.norm.weight"] += 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    copy = shutil.copytree(grown, tmp_path / "grown")
    (copy / "growth.json").write_text(json.dumps({**growth, "source": str(changed)}))
    monkeypatch.chdir(REPO)
    with pytest.raises(UsageError, match="SHA-256 differs from growth.json's source_sha256"):
        train(parse_args([*RUN, "--output-dir", str(tmp_path / "run"), "--init-from", str(copy)]))
