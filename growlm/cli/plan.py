"""Plan a growth run: tokens d for the small base before growing it (growth.md §9, paper Eq. 2).

    growlm-plan --params 1.1B --tokens 100B                 # or: python growth/plan.py ...
    growlm-plan --shape 24L2048H --tokens 100B --g 4        # N = the shape's total parameter count
    growlm-plan --params 3B --tokens 300B --min-base-tokens 6.3B --json > plan.json

`--json` prints one JSON object (the stack CLI reads `g` from it with `--plan plan.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict

from growlm.cli.errors import command
from growlm.growth.timing import PARAM_COUNTS, GrowthTimingPlan, TargetShape, plan, target_shape

_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_COUNT = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", re.IGNORECASE)


def parse_count(text: str) -> float:
    """A positive count written as `1.1e9`, `1100000000`, `1.1B`, `300B`, `410M`, `20K` or `2T`."""
    match = _COUNT.fullmatch(text)
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()] if match else math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive count; write e.g. 1.1e9, 1.1B, 300B or 410M")
    return value


def format_count(value: float) -> str:
    """A count with 3 significant digits and a K/M/B/T suffix (1.14e10 -> '11.4B')."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="growlm-plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=parse_count, help="target parameter count N (e.g. 1.1B); "
                        "defaults to --shape's count")
    parser.add_argument("--tokens", type=parse_count, required=True, help="target training tokens D (e.g. 100B)")
    parser.add_argument("--g", type=int, default=4, help="growth factor (L'/L at fixed width; default 4)")
    parser.add_argument("--min-base-tokens", type=parse_count, default=0.0, dest="min_base_tokens",
                        help="lower clamp d_lo on d, normally the base's warmup tokens (default 0)")
    target = parser.add_argument_group("target shape (optional): gives the suggested base shape")
    target.add_argument("--shape", help="a named shape from growlm.modeling.SHAPES, e.g. 24L2048H, 1.1B, 3B")
    target.add_argument("--param-count", choices=[c.replace("_", "-") for c in PARAM_COUNTS], default="total",
                        help="which count of --shape is N when --params is not given (default total)")
    target.add_argument("--num-layers", type=int, help="target layer count (instead of --shape)")
    target.add_argument("--hidden-size", type=int, help="target hidden size (with --num-layers)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    return parser


def resolve_target(args: argparse.Namespace) -> TargetShape | None:
    """The target shape from --shape or --num-layers/--hidden-size, or None."""
    layout_given = args.num_layers is not None or args.hidden_size is not None
    if args.shape and layout_given:
        raise ValueError("give either --shape or --num-layers/--hidden-size, not both")
    if args.shape:
        return target_shape(args.shape, count=args.param_count.replace("-", "_"))
    if not layout_given:
        return None
    if args.num_layers is None:
        raise ValueError("--hidden-size needs --num-layers (the base keeps the width and has L/g layers)")
    return TargetShape(args.num_layers, args.hidden_size)


def render_summary(result: GrowthTimingPlan) -> str:
    """The human-readable plan."""
    count = {"given": "as given"}.get(result.params_count, f"{result.params_count} count of {result.target_shape}")
    box = "inside the fit box" if result.in_range else "OUTSIDE the fit box (extrapolation)"
    lines = [
        f"target      N = {format_count(result.N)} parameters ({count}), D = {format_count(result.D)} tokens",
        f"compute     C = 6*N*D = {result.C:.3g} FLOPs, {box}",
        f"base tokens d = {format_count(result.d)} (Eq. 2 gives d_raw = {format_count(result.d_raw)}; "
        f"clamp [d_lo = {format_count(result.d_lo)}, {result.f_hi}*D = {format_count(result.f_hi * result.D)}])",
    ]
    if result.base_num_layers is not None:
        name = f" = {result.base_shape_name}" if result.base_shape_name else ""
        width = result.base_shape.get("hidden_size")
        layout = f"{result.base_num_layers} layers" + (f" x hidden {width}" if width else "")
        lines.append(f"base model  {layout}{name}; train it on d tokens, then grow it x{result.g} "
                     f"to {result.target_num_layers} layers")
    extra = result.grown_total_flops / result.scratch_flops - 1
    lines += [
        f"FLOPs       base 6*(N/g)*d = {result.base_flops:.3g}; grown total = {result.grown_total_flops:.3g} "
        f"vs scratch {result.scratch_flops:.3g} (+{extra:.2%})",
        f"            at equal FLOPs the grown target trains D - d/g = {format_count(result.equal_flops_target_tokens)}"
        " tokens",
    ]
    return "\n".join(lines)


@command
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = plan(args.params, args.tokens, g=args.g, d_lo=args.min_base_tokens, target=resolve_target(args))
    except ValueError as error:
        parser.error(str(error))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(asdict(result), indent=2) if args.json else render_summary(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
