"""The command-line machinery every `imgclf` command shares: the parser with subcommands, and one runner.

Each package registers its subcommands from a small ``cli`` module that imports
only argparse-level things, so ``imgclf --help`` stays fast and ``imgclf
featurize`` never imports Flask; a handler imports the heavy parts it needs when
it runs. Which modules those are is said by the top layer, which knows every
package (:mod:`imgclf.service.cli.main`, the ``imgclf`` entry point): nothing
here names a package above core.

:func:`run_command` runs a parsed command and maps its errors to one line on
stderr and an exit status (:func:`imgclf.core.errors.exit_status`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from types import ModuleType

from imgclf.core.errors import EXIT_INTERRUPTED, exit_status, is_tf_user_error

NOISY_LOGGERS = ("tensorflow", "absl", "h5py", "PIL")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add ``-v``/``--verbose`` (count) to ``parser``."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")


def build_parser(modules: Iterable[ModuleType]) -> argparse.ArgumentParser:
    """Return the `imgclf` argument parser with the subcommands each of ``modules`` registers, in that order."""
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Transfer-learning image classifier: Inception-v3 bottlenecks, a small dense head, "
                    "an HTTP API.")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in modules:
        module.register(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, prog: Callable[[argparse.Namespace], str],
                interrupted: str = "work committed so far is kept, run again to resume") -> int:
    """Parse ``argv``, set up logging (``-v``/``-vv``) and run the chosen subcommand; return the exit status.

    Errors a user can act on print one line, ``PROG: error: MESSAGE``, and give 1 (2 for bad arguments or
    settings); Ctrl-C prints ``interrupted`` and gives 130. Anything else is a bug and shows its traceback.
    ``prog(args)`` names the command.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the output
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog(args)}: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        status = exit_status(exc)
        if status is None:
            raise
        print(f"{prog(args)}: error: {_message(exc)}", file=sys.stderr)
        return status


def _message(exc: BaseException) -> str:
    """Return what to print for ``exc``: its message, or its kind when it has none."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {str(exc.filename)!r}"
    if is_tf_user_error(exc):
        # "{{function_node ...}} /a/b; Operation not permitted [Op:CreateSummaryFileWriter] name: " -> the middle
        text = re.sub(r"^\{\{.*?\}\}\s*", "", str(getattr(exc, "message", exc)))
        text = re.sub(r"\s*\[Op:.*$", "", text, flags=re.S).strip()
        return f"{type(exc).__name__}: {text}"
    return str(exc) or type(exc).__name__
