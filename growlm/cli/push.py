"""Push a model folder (weights, config, tokenizer, README.md card) to a Hub model repo as one commit.

    python scripts/push.py --folder runs/grown-24L --repo-id org/grown-24L
    python scripts/push.py --folder runs/base/step-1000 --repo-id org/base --revision ckpt/step-1000 --private

The endpoint and token come from HF_ENDPOINT (default https://huggingface.co) and HF_TOKEN. Prints the commit sha
on stdout; errors print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from growlm.cli.errors import command
from growlm.hub_push import hub_endpoint, push_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="growlm-push", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="local model folder to upload")
    parser.add_argument("--repo-id", required=True, help="target model repo, owner/name")
    parser.add_argument("--revision", help="target branch, created from main if missing (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--commit-message", help="commit title (default: 'Upload <folder name>')")
    return parser


@command
def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    sha = push_folder(args.folder, args.repo_id, revision=args.revision, private=args.private,
                      commit_message=args.commit_message)
    print(f"{hub_endpoint()}/{args.repo_id}/commit/{sha}", file=sys.stderr)
    print(sha)


if __name__ == "__main__":
    raise SystemExit(main())
