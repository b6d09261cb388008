"""`make demo`: the whole pipeline on the embedded defaults (CPU, about 10 minutes on 2 cores) into runs/demo/.

    python scripts/demo.py                         # re-running skips the stages that already finished
    python scripts/demo.py --output-dir /tmp/demo  # any scripts/pipeline.py option except --config
"""

import sys

from growlm.pipeline.cli import main
from growlm.pipeline.commands import REPO_ROOT

if __name__ == "__main__":
    main(["--config", str(REPO_ROOT / "configs" / "pipeline" / "demo.yaml"), *sys.argv[1:]])
