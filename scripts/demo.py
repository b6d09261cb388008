"""`make demo`: the whole pipeline on the embedded defaults (CPU, about 10 minutes on 2 cores) into runs/demo/.

    python scripts/demo.py                         # re-running skips the stages that already finished
    python scripts/demo.py --output-dir /tmp/demo  # any scripts/pipeline.py option except --config

At the end the grown model is loaded with plain `AutoModelForCausalLM` and generates a few tokens.
"""

import sys
from pathlib import Path

from growlm.pipeline.cli import build_parser, main
from growlm.pipeline.config import load_config
from growlm.pipeline.layout import Layout
from growlm.pipeline.sample import generate_sample

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "demo.yaml"
PROMPT = "In the beginning"

if __name__ == "__main__":
    argv = ["--config", str(CONFIG), *sys.argv[1:]]
    main(argv)
    args = build_parser().parse_args(argv)
    if not args.dry_run:
        output_dir = Path(load_config(CONFIG, output_dir=args.output_dir).output_dir).resolve()
        grown = Layout(output_dir).publish_model("grown")
        print(f"\nplain transformers: AutoModelForCausalLM.from_pretrained({str(grown)!r})")
        print(f"greedy sample: {generate_sample(grown, PROMPT)!r}")
