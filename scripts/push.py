"""Push a model folder to a Hub model repo (see growlm/cli/push.py).

    python scripts/push.py --folder DIR --repo-id org/name [--revision BRANCH] [--private] [--commit-message MSG]
"""

from growlm.cli.push import main

if __name__ == "__main__":
    raise SystemExit(main())
