"""The ``timemachine`` command line: argument parsing, progress bars and exit codes; no algorithms.

Each command group lives in its own module here and registers itself through ``register(subparsers)``;
its handler receives the parsed arguments and returns an exit code.

Exit codes: 0 success; 1 a check failed (``doctor --build-ops``); 2 bad input or a user-fixable problem
(one line on stderr, no traceback); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM).  Interruptions
unwind normally, so temporary files are removed and no output is left half-written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from typing import Optional, Sequence

from timemachine import __version__
from timemachine.cli.remedies import error_text
from timemachine.errors import TimemachineError

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that cleanup code runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"timemachine: warning: {message}", file=sys.stderr)

#: Modules that define commands, in the order ``--help`` lists them.
COMMAND_MODULES = ["run", "project", "age_vector", "render", "weights", "doctor", "ui", "worker"]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep hand-written line breaks in descriptions and show defaults of options."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too (``timemachine: error: ...``), with where to read more, and exit 2."""

    def error(self, message: str):
        from timemachine.errors import printable

        self.exit(EXIT_USER_ERROR, f"timemachine: error: {printable(message, 400)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="timemachine",
        formatter_class=_Formatter,
        description="See what your dog or cat looked like as a puppy or kitten.\n\n"
                    "Typical use:  timemachine run photo.jpg --model afhqdog --age-vector yorkshire --out result/",
    )
    parser.add_argument("--version", action="version", version=f"timemachine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"timemachine.cli.{name}").register(subparsers, _Formatter)
    return parser


def error_line(message: str) -> None:
    """Print one user-facing error line on stderr."""
    print(f"timemachine: error: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``timemachine`` console script and of ``python -m timemachine``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(args.handler(args) or EXIT_OK)
    except TimemachineError as exc:
        error_line(error_text(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        error_line(str(exc) or "interrupted")
        return EXIT_INTERRUPTED
    except Terminated as exc:
        error_line(str(exc) or "terminated")
        return EXIT_TERMINATED
    except BrokenPipeError:
        # Output piped into a program that stopped reading (e.g. `| head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
