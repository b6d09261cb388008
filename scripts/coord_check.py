"""CompleteP coordinate check: python scripts/coord_check.py [--depths 2,8,32] [--out docs/coord_check]."""

import sys

from growlm.completep.coord_check import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
