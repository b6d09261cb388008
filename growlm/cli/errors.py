"""The contract every growlm command keeps: a user error (bad input, a missing file, a Hub or network failure:
`ValueError` / `OSError`, which huggingface_hub's errors are) prints one `error: ...` line naming the problem and
the fix, and exits with status 2; `--debug` anywhere on the command line shows the traceback instead."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split())


def _network_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's transport errors (refused connections, timeouts): huggingface_hub raises them as they
    are, and they are not OSErrors."""
    try:
        import httpx2  # the HTTP client huggingface_hub uses
    except ImportError:
        return ()
    return (httpx2.TransportError,)


def _network_message(error: BaseException) -> str:
    try:
        where = f" reaching {error.request.url.scheme}://{error.request.url.netloc.decode()}"
    except (AttributeError, RuntimeError):
        where = ""
    return f"network failure{where}: {one_line(error)}; check HF_ENDPOINT and the connection, then retry"


def split_debug(argv: list[str] | None) -> tuple[list[str], bool]:
    """(argv without `--debug`, whether it was there); argv None means the process's own arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return [arg for arg in argv if arg != "--debug"], "--debug" in argv


def report(error: BaseException, *, debug: bool) -> int:
    """Print the one `error:` line for a user error and return exit status 2 (re-raise it under `--debug`)."""
    if debug:
        raise error
    network = not isinstance(error, (ValueError, OSError))
    print(f"error: {_network_message(error) if network else one_line(error)}", file=sys.stderr)
    return 2


def command(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a command's `main(argv)`: returns its status, or 2 after one `error:` line for a user error."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        argv, debug = split_debug(argv)
        try:
            return main(argv) or 0
        except (ValueError, OSError, *_network_errors()) as error:
            return report(error, debug=debug)

    return run
