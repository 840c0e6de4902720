"""
What the command-line tools (helper.train, helper.evaluate, helper.caption)
share: user errors reported as one line, without a traceback.

Each tool has a `main(argv=None) -> int` that tests and notebooks can call;
argparse itself reports unknown or malformed options (exit code 2).
"""
import argparse
import os
import sys
from typing import Callable, Optional, Sequence

# Errors that bad input causes (missing or foreign files, an occupied output
# folder, values out of range): the message is all the user needs. Set
# CAPTIONING_DEBUG=1 to see their tracebacks anyway.
USER_ERRORS = (OSError, ValueError)
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's code for "ended by Ctrl-C"


def run_reporting_errors(function: Callable[[], int]) -> int:
    """
    Run a tool's work, turning user errors into `error: ...` on stderr.

    Inputs:
    - function: the work; returns the exit code

    Returns:
    - its exit code, EXIT_ERROR after a user error, EXIT_INTERRUPTED after
      Ctrl-C
    """
    try:
        return function()
    except USER_ERRORS as error:
        if os.environ.get("CAPTIONING_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_command(
    parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], None], argv: Optional[Sequence[str]]
) -> int:
    """
    Parse the options and do a tool's work.

    Inputs:
    - parser: the tool's options (argparse exits with code 2 on bad ones)
    - work: does the work from the parsed options
    - argv: the options; None for sys.argv[1:]

    Returns:
    - the exit code: 0, EXIT_ERROR after a user error, EXIT_INTERRUPTED
      after Ctrl-C
    """
    args = parser.parse_args(argv)

    def run() -> int:
        work(args)
        return 0

    return run_reporting_errors(run)


def add_decoding_options(parser: argparse.ArgumentParser) -> None:
    """The options of the tools that caption images: --beam-size, --length-penalty, --device."""
    parser.add_argument("--beam-size", type=int, default=1, help="1 for greedy decoding (default), K > 1 for beam search")
    parser.add_argument(
        "--length-penalty", type=float, default=0.0, help="beam search: rank by log p / length ** alpha (default 0)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
