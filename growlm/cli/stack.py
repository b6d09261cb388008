"""Grow a trained Llama into a larger one (G_stack and friends) and save it as a Hugging Face folder.

    python growth/stack.py --src runs/base-6L --out runs/grown-24L --g 4            # G_stack, "stack" order
    python growth/stack.py --src runs/base-6L --out runs/g --stacking-list 0-5,0-5,0-5,0-5
    python growth/stack.py --src runs/base-6L --out runs/g --partial 1-234*7-56    # paper's partial stacking
    python growth/stack.py --src runs/base-6L --out runs/g --g 4 --operator learn  # G_learn (trains in pretrain)
    python growth/stack.py --src owner/base --revision main --out runs/g --num-layers 24 --operator zero
    python growth/stack.py --src runs/base --out runs/wide --width-operator split --hidden-size 4096 \\
        --num-attention-heads 64 --num-key-value-heads 64
    python growth/stack.py --src runs/base-6L --out runs/g --g 4 --operator random --ramp-steps 5000  # masked
    python growth/stack.py --config prts_configs/stacking_6L_24L.json --out runs/grown-24L   # prts JSON
    python growth/plan.py --params 1.1B --tokens 100B --json > plan.json && \\
        python growth/stack.py --src runs/base-6L --out runs/g --plan plan.json

The output folder holds config.json, sharded safetensors, generation_config.json, the source's tokenizer,
growth.json (everything needed to reproduce the growth) and a model card README.md. Errors print one
line to stderr and exit with status 2, leaving no output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex

from growlm.cli.errors import command
from growlm.config_io import read_mapping
from growlm.growth.grow import DTYPES, grow_checkpoint, grow_lit_checkpoint
from growlm.growth.layer_map import parse_partial, parse_stacking_list
from growlm.growth.prts_config import PRTS_METHODS, GrowthJob, read_growth_config
from growlm.growth.types import WIDTH_FIELDS, GrowthOptions, LearnOptions


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="growlm-stack", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("source and output")
    io.add_argument("--src", help="source model: a local HF folder or a Hub repo id (owner/name)")
    io.add_argument("--revision", help="Hub branch, tag or commit of --src")
    io.add_argument("--out", help="output folder (must not exist unless --overwrite)")
    io.add_argument("--config", help="a growth JSON: prts format (src_config_name, stacking_list, ...) or the "
                    "project format (source/target/depth/width/noise/seed/output); flags override it")
    io.add_argument("--prts-method", choices=PRTS_METHODS, help="prts method for a prts --config "
                    "(default stacking)")
    io.add_argument("--dtype", choices=list(DTYPES), help="cast the output weights (default: keep the source dtype)")
    io.add_argument("--shard-size", default="2GB", help="max safetensors shard size, e.g. 2GB, 500MB (default 2GB)")
    io.add_argument("--overwrite", action="store_true", help="replace --out once the new folder is complete")
    io.add_argument("--push-to-hub", metavar="REPO", help="upload the grown folder to this Hub repo")
    depth = parser.add_argument_group("depth growth")
    depth.add_argument("--operator", choices=["stack", "zero", "random", "learn"], help="depth operator: stack "
                       "(G_stack, default when depth grows), zero (G_zero, duplicated blocks get zero output "
                       "projections), random (G_random, new layers on top ramped in by pretrain.py) or learn (G_learn: "
                       "starts as G_stack, its operator trains when pretraining starts)")
    depth.add_argument("--g", type=positive_int, help="growth factor: target layers = g * source layers")
    depth.add_argument("--num-layers", type=positive_int, help="target number of layers (instead of --g)")
    depth.add_argument("--stacking-list", help="layer map: 'stack', 'interpolate', or 0-based ids and inclusive "
                       "ranges, e.g. '0-5,0-5' or '0,0,1,1'")
    depth.add_argument("--partial", help="the paper's 1-based partial-stacking notation, e.g. '1-234*7-56'")
    depth.add_argument("--plan", help="JSON from `python growth/plan.py ... --json`; its g is used")
    depth.add_argument("--gate-mode", choices=["sublayer", "block"], help="random: gate each new block's attention "
                       "and MLP outputs (sublayer, the paper; default) or the whole block (block, the reference code)")
    width = parser.add_argument_group("width growth")
    width.add_argument("--width-operator", choices=["split", "zero", "random", "learn"], help="width operator: "
                       "split (G_direct, function preserving), zero (G_zero width), random (G_random, new units ramped "
                       "in by pretrain.py) or learn (G_learn width)")
    for flag in WIDTH_FIELDS:
        width.add_argument(f"--{flag.replace('_', '-')}", type=positive_int, help=f"target {flag}")
    width.add_argument("--split", choices=["uneven", "even"], help="split coefficients (default uneven)")
    width.add_argument("--index-rule", choices=["balanced", "cyclic", "random"],
                       help="which source units new units copy (default balanced)")
    ramp = parser.add_argument_group("masked growth (--operator random or --width-operator random)")
    ramp.add_argument("--ramp-steps", type=positive_int, help="optimizer steps of each ramp phase in pretrain.py "
                      "(default 5000; depth: one phase, width: three)")
    learn = parser.add_argument_group("G_learn (--operator learn / --width-operator learn): the operator-training "
                                      "phase that pretraining runs first")
    for field in dataclasses.fields(LearnOptions):
        kind = {"action": "store_const", "const": True} if field.type == "bool" else \
            {"type": {"int": int, "float": float}[field.type]}
        learn.add_argument(f"--learn-{field.name.replace('_', '-')}", **kind,
                           help=f"{field.metadata['help']} (default {field.default})")
    learn.add_argument("--head-structured", action="store_const", const=True,
                       help="width maps act on whole attention heads (B_q = kron(B_heads, I)), keeping RoPE pairs")
    completep = parser.add_argument_group("CompleteP source (a folder with parameterization.json)")
    completep.add_argument("--completep-correction", choices=["naive", "fold", "gauge", "rescale"],
                           help="how depth growth treats the residual multiplier (default gauge; completep.md §6)")
    misc = parser.add_argument_group("noise and seed")
    misc.add_argument("--noise", type=float, help="noise injection alpha in [0, 1) (paper: 0.2 at most)")
    misc.add_argument("--seed", type=int, help="RNG seed (default 3407)")
    return parser


def implied_num_layers(layer_map: list[int] | str | None) -> int | None:
    """Target depth implied by an explicit list or partial notation (named maps need --g or --num-layers)."""
    if isinstance(layer_map, list):
        return len(layer_map)
    if isinstance(layer_map, str) and layer_map not in ("stack", "interpolate"):
        return len(parse_partial(layer_map, 9))  # 9 = the notation's limit; the real depth is checked later
    return None


def apply_flags(options: GrowthOptions, args: argparse.Namespace) -> GrowthOptions:
    """Override config-file options with the flags given on the command line."""
    layer_map_flags = [f for f in ("stacking_list", "partial") if getattr(args, f) is not None]
    if len(layer_map_flags) > 1:
        raise ValueError("give either --stacking-list or --partial, not both")
    if args.stacking_list is not None:
        options.layer_map = parse_stacking_list(args.stacking_list)
    if args.partial is not None:
        options.layer_map = args.partial
    g = args.g
    if args.plan is not None:
        plan_g = read_mapping(args.plan, "--plan file").get("g")
        if not isinstance(plan_g, int) or plan_g < 1:
            raise ValueError(f"--plan {args.plan} has no positive integer 'g' (got {plan_g!r}); "
                             "write it with `python growth/plan.py ... --json`")
        if g is not None and g != plan_g:
            raise ValueError(f"--g {g} conflicts with g={plan_g} from --plan {args.plan}; give one of them")
        g = plan_g
    if g is not None and args.num_layers is not None:
        raise ValueError("give either --g or --num-layers, not both")
    if g is not None:
        options.g, options.num_layers = g, None
    if args.num_layers is not None:
        options.num_layers, options.g = args.num_layers, None
    if options.num_layers is None and options.g is None:
        options.num_layers = implied_num_layers(options.layer_map)
    for flag in WIDTH_FIELDS + ("split", "index_rule", "seed", "completep_correction", "ramp_steps", "gate_mode"):
        if getattr(args, flag) is not None:
            setattr(options, flag, getattr(args, flag))
    if args.noise is not None:
        options.noise_alpha = args.noise
    if args.width_operator is not None:
        options.width_op = args.width_operator
    if args.operator is not None:
        options.depth_op = args.operator
    learn_flags = [f for f in dataclasses.fields(LearnOptions) if getattr(args, f"learn_{f.name}") is not None]
    for field in learn_flags:
        setattr(options.learn, field.name, getattr(args, f"learn_{field.name}"))
    if args.head_structured:
        options.head_structured = True
    if (learn_flags or args.head_structured) and "learn" not in (options.depth_op, options.width_op):
        raise ValueError("--learn-* and --head-structured set up G_learn; add --operator learn and/or "
                         "--width-operator learn")
    depth_flags = (args.g, args.num_layers, args.stacking_list, args.partial, args.plan)
    if options.depth_op is None and any(flag is not None for flag in depth_flags):
        options.depth_op = "stack"  # depth flags ask for depth growth, also next to a width operator
    if args.ramp_steps is not None and "random" not in (options.depth_op, options.width_op):
        raise ValueError("--ramp-steps applies to masked growth; add --operator random or --width-operator random")
    if args.gate_mode is not None and options.depth_op != "random":
        raise ValueError("--gate-mode applies to masked depth growth; add --operator random")
    return options


def run(args: argparse.Namespace, command: str) -> str:
    """Resolve the job from --config and flags, grow, and return the output folder."""
    job = read_growth_config(args.config, prts_method=args.prts_method) if args.config else \
        GrowthJob(options=GrowthOptions(), source=None)
    if args.prts_method and not args.config:
        raise ValueError("--prts-method needs a prts --config")
    options = apply_flags(job.options, args)
    out = args.out or job.output
    if not out:
        raise ValueError("no output folder: pass --out (or set 'output' in the --config file)")
    kwargs = dict(dtype=args.dtype, max_shard_size=args.shard_size, overwrite=args.overwrite,
                  push_to_hub=args.push_to_hub, command=command)
    if job.source_format == "lit" and args.src is None:
        return str(grow_lit_checkpoint(job.source, job.lit_config, out, options, **kwargs))
    src = args.src or job.source
    if not src:
        raise ValueError("no source model: pass --src (a local folder or a Hub repo id) or set source.path in --config")
    return str(grow_checkpoint(src, out, options, revision=args.revision or job.revision, **kwargs))


@command
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = run(args, command=shlex.join(["growth/stack.py", *argv]))
    print(f"grown model written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
