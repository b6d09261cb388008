"""Plan a growth run (growth.md §9): `python growth/plan.py --params 1.1B --tokens 100B [--g 4] [--json]`.

Thin entry point over `growlm.cli.plan`; `growlm-plan` is the same command once growlm is installed.
"""

from growlm.cli.plan import main

if __name__ == "__main__":
    raise SystemExit(main())
