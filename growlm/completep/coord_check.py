"""Coordinate check on CPU (completep.md §5): train tiny Llamas for a few steps across depths and widths and measure
how far the final residual stream moves, m_t = mean|h_L(theta_t) - h_L(theta_0)|, on a fixed batch.

Variants: completep (alpha 1), depth-mup (alpha 0.5), mup (width rules only, r = 1) and sp (one LR, sigma_base
init everywhere; equal to mup at the base width). Pass: for completep/depth-mup the least-squares slope of
log m_t against log L stays within +-0.3 and max/min < 3 for t in 5..steps; the sp/mup controls drift (slope > 0.7).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from growlm.completep.model import Parametrization, build
from growlm.completep.optim import param_groups
from growlm.modeling import Shape, llama_config

VARIANTS = {"completep": ("completep", 1.0), "depth-mup": ("completep", 0.5), "mup": ("mup", 1.0),
            "sp": ("sp", 1.0)}
SCALED = ("completep", "depth-mup")
VOCAB, SEQ, BATCH, HEAD_DIM, BASE_WIDTH, BASE_DEPTH = 64, 32, 16, 16, 64, 2


def bigram_batches(count: int, seed: int) -> list[torch.Tensor]:
    """`count` batches [BATCH, SEQ + 1] from one random bigram chain (fixed transition matrix and RNG seed)."""
    g = torch.Generator().manual_seed(seed)
    transitions = torch.softmax(3.0 * torch.randn(VOCAB, VOCAB, generator=g), dim=-1)
    batches = []
    for _ in range(count):
        tokens = [torch.randint(0, VOCAB, (BATCH,), generator=g)]
        for _ in range(SEQ):
            tokens.append(torch.multinomial(transitions[tokens[-1]], 1, generator=g).squeeze(1))
        batches.append(torch.stack(tokens, dim=1))
    return batches


def tiny_model(variant: str, depth: int, width: int, seed: int):
    kind, alpha = VARIANTS[variant]
    config = llama_config(Shape(depth, width, width // HEAD_DIM, width // HEAD_DIM, 4 * width, head_dim=HEAD_DIM,
                                max_position_embeddings=SEQ + 1), vocab_size=VOCAB)
    base_width, base_depth = (width, depth) if kind == "sp" else (BASE_WIDTH, BASE_DEPTH)
    p = Parametrization(parametrization="mup" if kind == "sp" else kind, alpha=alpha, base_width=base_width,
                        base_depth=base_depth)
    return build(config, p, seed=seed, attn_implementation="eager")


def measure(variant: str, depth: int, width: int, *, lr: float, steps: int = 10, seed: int = 0) -> dict:
    """m_t for t = 1..steps and each layer's scaled branch output size (mean |.|) after the last step."""
    torch.manual_seed(seed)
    model = tiny_model(variant, depth, width, seed)
    optimizer = torch.optim.AdamW(param_groups(model, lr=lr, weight_decay=0.0, eps=1e-12), betas=(0.9, 0.95))
    captured, branches = {}, {}
    model.model.norm.register_forward_pre_hook(lambda m, args: captured.__setitem__("h", args[0].detach()))
    for i, layer in enumerate(model.model.layers):  # registered after the scaling hooks: sees scaled outputs
        for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):
            proj.register_forward_hook(lambda m, a, out, i=i: branches.__setitem__(i, out.detach().abs().mean()))
    *train_batches, eval_batch = bigram_batches(steps + 1, seed)

    def final_stream() -> torch.Tensor:
        with torch.no_grad():
            model(input_ids=eval_batch[:, :-1])
        return captured["h"]

    h0, sizes = final_stream(), []
    for batch in train_batches:
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        model(input_ids=x, labels=y, shift_labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sizes.append((final_stream() - h0).abs().mean().item())
    return {"variant": variant, "depth": depth, "width": width, "lr": lr, "seed": seed, "delta_h": sizes,
            "branch_out": [branches[i].item() for i in range(depth)]}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def verdict(runs: list[dict], axis: str, *, first_step: int = 5) -> dict[str, dict]:
    """Per variant: the worst slope and max/min ratio over t >= first_step (seeds averaged), and pass/fail."""
    out = {}
    for variant in sorted({r["variant"] for r in runs}):
        mine = [r for r in runs if r["variant"] == variant]
        xs = sorted({r[axis] for r in mine})
        mean = {x: [sum(v) / len(v) for v in zip(*[r["delta_h"] for r in mine if r[axis] == x])] for x in xs}
        steps = range(first_step - 1, len(mean[xs[0]]))
        slopes = [slope(xs, [mean[x][t] for x in xs]) for t in steps]
        ratios = [max(mean[x][t] for x in xs) / min(mean[x][t] for x in xs) for t in steps]
        worst = max(slopes, key=abs)
        passed = abs(worst) <= 0.3 and max(ratios) < 3 if variant in SCALED else min(slopes) > 0.7
        out[variant] = {"slope": worst, "min_slope": min(slopes), "max_ratio": max(ratios), "pass": passed,
                        "expect": "flat" if variant in SCALED else "drift", "final": {x: mean[x][-1] for x in xs}}
    return out


def depth_sweep(depths, variants=tuple(VARIANTS), *, width: int = 64, lr: float = 3e-3, seeds=(0,), steps=10):
    runs = [measure(v, d, width, lr=lr, steps=steps, seed=s) for v in variants for d in depths for s in seeds]
    return {"axis": "depth", "runs": runs, "verdict": verdict(runs, "depth")}


def width_sweep(widths, variants=("completep", "sp"), *, depth: int = 2, lr: float = 1e-2, seeds=(0,), steps=10):
    runs = [measure(v, depth, w, lr=lr, steps=steps, seed=s) for v in variants for w in widths for s in seeds]
    result = verdict(runs, "width")
    for variant, v in result.items():  # width: only |slope| matters for the scaled variants (completep.md §5)
        v["pass"] = abs(v["slope"]) <= 0.3 if variant in SCALED else v["min_slope"] > 0.3
    return {"axis": "width", "runs": runs, "verdict": result}


def plot(sweeps: list[dict], path: Path) -> None:
    """One panel per sweep: final m_t against depth or width, log-log, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for variant, v in sweep["verdict"].items():
            xs = sorted(v["final"], key=float)
            ax.loglog([float(x) for x in xs], [v["final"][x] for x in xs], "o-", base=2,
                      label=f"{variant} (slope {v['slope']:+.2f}, {'pass' if v['pass'] else 'FAIL'})")
        ax.set_xlabel(sweep["axis"] + (" (layers)" if sweep["axis"] == "depth" else " (hidden size)"))
        ax.set_ylabel("mean |h_L(t) - h_L(0)| after the last step")
        ax.set_title(f"coordinate check: {sweep['axis']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="growlm-coord-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="2,4,8,16,32,64", help="comma-separated depths (width 64, LR 3e-3)")
    parser.add_argument("--widths", default="64,128,256,512", help="comma-separated widths (depth 2, LR 1e-2); "
                        "empty to skip")
    parser.add_argument("--seeds", default="0,1", help="comma-separated RNG seeds")
    parser.add_argument("--steps", type=int, default=10, help="AdamW steps per run")
    parser.add_argument("--out", default="docs/coord_check", help="output prefix: PREFIX.json and PREFIX.png")
    args = parser.parse_args(argv)
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    seeds = ints(args.seeds)
    sweeps = [depth_sweep(ints(args.depths), seeds=seeds, steps=args.steps)]
    if ints(args.widths):
        sweeps.append(width_sweep(ints(args.widths), seeds=seeds, steps=args.steps))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(sweeps, indent=1) + "\n")
    plot(sweeps, out.with_suffix(".png"))
    for sweep in sweeps:
        for variant, v in sweep["verdict"].items():
            print(f"{sweep['axis']:5s} {variant:10s} slope {v['slope']:+.3f} max/min {v['max_ratio']:6.2f} "
                  f"expect {v['expect']:5s} {'PASS' if v['pass'] else 'FAIL'}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0 if all(v["pass"] for s in sweeps for v in s["verdict"].values()) else 1
