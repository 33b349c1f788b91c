"""The command-line machinery every `imgclf` command shares: the parser with subcommands, and one runner.

Each package registers its subcommands from a small ``cli`` module that imports
only argparse-level things, so ``imgclf --help`` stays fast and ``imgclf
featurize`` never imports Flask; a handler checks its arguments first and imports
the heavy parts it needs after, so a bad argument is refused before TensorFlow
loads. Which modules those are is said by the top layer, which knows every
package (:mod:`imgclf.service.cli.main`, the ``imgclf`` entry point): nothing
here names a package above core.

What every command gets from here: ``--version``; ``-v``/``-q`` before or after
the subcommand's name (``-q`` only results and errors, ``-v`` info logs, ``-vv``
debug logs and TensorFlow's own lines); typed metavars; deprecated option names
that still work and warn (:func:`add_deprecated_alias`); ``imgclf completion
SHELL`` (shtab, imported only there). :func:`run_command` runs a parsed command
and maps its errors to one line on stderr and an exit status
(:func:`imgclf.core.errors.exit_status`); TensorFlow's start-up lines are kept
back (:mod:`imgclf.core.tf_startup`) and printed only when the command fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType

from imgclf.core import tf_startup
from imgclf.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_status, is_tf_user_error

NOISY_LOGGERS = ("h5py", "PIL", "pydot", "matplotlib")  # third-party debug chatter, kept at WARNING
TF_LOGGERS = ("tensorflow", "absl")  # TensorFlow's Python-side logs: at WARNING unless -vv
COMPLETION_SHELLS = ("bash", "zsh", "fish")
# Metavars by type where a command does not name its own (``--batch-size N`` rather than ``BATCH_SIZE``).
TYPED_METAVARS = {int: "N", float: "NUMBER", Path: "PATH"}
# The subcommands' own -v/-q: counted apart from the ones before the subcommand, added up by run_command.
SUB_VERBOSE, SUB_QUIET = "sub_verbose", "sub_quiet"


def add_verbosity(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """Add ``-v``/``--verbose`` (count) and ``-q``/``--quiet`` to ``parser`` (the root one when ``top``)."""
    group = parser.add_argument_group("output")
    default = 0 if top else argparse.SUPPRESS  # a subcommand's absent flag must not hide the root's
    group.add_argument("-v", "--verbose", action="count", default=default, dest="verbose" if top else SUB_VERBOSE,
                       help="more log output: -v progress and info logs, -vv debug logs and TensorFlow's own lines")
    group.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                       dest="quiet" if top else SUB_QUIET,
                       help="only results and errors: no progress bars, no warnings")


def build_parser(modules: Iterable[ModuleType]) -> argparse.ArgumentParser:
    """Return the `imgclf` argument parser with the subcommands each of ``modules`` registers, in that order.

    Every subcommand (nested ones too) also takes ``-v``/``-q``; ``imgclf completion SHELL`` comes last.
    """
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Transfer-learning image classifier: Inception-v3 bottlenecks, a small dense head, "
                    "an HTTP API.")
    parser.add_argument("--version", action=_Version, help="print imgclf's version and exit")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in modules:
        module.register(sub)
    _add_completion(sub, parser)
    for child in _subparsers(parser):
        add_verbosity(child, top=False)
    for each in (parser, *_subparsers(parser)):
        _type_metavars(each)
    return parser


class _Version(argparse.Action):
    """``--version``: print ``PROG VERSION`` and exit 0; the package metadata is read only then (--help stays fast)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from imgclf.core.version import package_version  # importlib.metadata: only when asked

        print(f"{parser.prog} {package_version()}")
        parser.exit()


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Yield every subcommand's parser under ``parser``, depth first (``models``, then ``models train``...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield child
                yield from _subparsers(child)


def _type_metavars(parser: argparse.ArgumentParser) -> None:
    """Give options without a metavar or choices the metavar of their type (:data:`TYPED_METAVARS`)."""
    for action in parser._actions:
        if action.option_strings and action.metavar is None and action.choices is None and action.nargs != 0:
            metavar = TYPED_METAVARS.get(action.type)
            if metavar:
                action.metavar = metavar


class DeprecatedAlias(argparse.Action):
    """An old option name kept for one release: stores like the new one and prints one warning line."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated and goes in the next release; use "
              f"{self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a hidden, warning alias of the option ``new`` already in ``parser`` (for one release)."""
    action = parser._option_string_actions[new]
    parser.add_argument(old, action=DeprecatedAlias, new=new, dest=action.dest, type=action.type,
                        choices=action.choices, metavar=action.metavar, help=argparse.SUPPRESS)


def _add_completion(sub: argparse._SubParsersAction, root: argparse.ArgumentParser) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)",
                       description="Print a completion script for SHELL, generated from imgclf's own parser. "
                                   "bash: `imgclf completion bash > ~/.local/share/bash-completion/completions/"
                                   "imgclf`; zsh: `imgclf completion zsh > \"${fpath[1]}/_imgclf\"`; fish: "
                                   "`imgclf completion fish > ~/.config/fish/completions/imgclf.fish`.")
    p.add_argument("shell", choices=COMPLETION_SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(func=lambda args: print_completion(root, args.shell))


def print_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print ``shell``'s completion script for ``parser`` (paths complete as files); return 0."""
    import shtab  # only here: --help stays fast

    for each in (parser, *_subparsers(parser)):
        for action in each._actions:
            if action.type is Path and not hasattr(action, "complete"):
                action.complete = shtab.FILE
    print(shtab.complete(parser, shell=shell), end="")
    return 0


def configure_output(verbose: int, quiet: bool) -> None:
    """Set the log level (``-q`` ERROR, default WARNING, ``-v`` INFO, ``-vv`` DEBUG) and TensorFlow's output.

    Below ``-vv``, TensorFlow's C++ log level is 2 (unless TF_CPP_MIN_LOG_LEVEL says otherwise) and what its
    import prints is kept back (:mod:`imgclf.core.tf_startup`); at ``-vv`` its level is 0 and its lines show.
    """
    level = logging.ERROR if quiet else logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # a second command in one process (tests) sets its own
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    for name in TF_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose >= 2 else max(level, logging.WARNING))
    if verbose >= 2:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        tf_startup.uninstall()
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the output
        tf_startup.capture_import()


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; fold the subcommand's ``-v``/``-q`` into ``verbose`` and ``quiet`` (exit 2 if both given)."""
    args = parser.parse_args(argv)
    args.verbose = getattr(args, "verbose", 0) + vars(args).pop(SUB_VERBOSE, 0)
    args.quiet = getattr(args, "quiet", False) or vars(args).pop(SUB_QUIET, False)
    if args.verbose and args.quiet:
        parser.error("-q (only results and errors) and -v (more output) exclude each other")
    return args


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None, prog: Callable[[argparse.Namespace], str],
                interrupted: str = "work committed so far is kept, run again to resume") -> int:
    """Parse ``argv``, set up logging (``-q``, ``-v``, ``-vv``) and run the chosen subcommand; return the exit status.

    Errors a user can act on print one line, ``PROG: error: MESSAGE``, and give 1 (2 for bad arguments or
    settings); Ctrl-C prints ``interrupted`` and gives 130. Anything else is a bug and shows its traceback.
    A command that fails (1, 2 or a traceback) first prints what TensorFlow's import wrote, if anything.
    ``prog(args)`` names the command.
    """
    args = parse(parser, argv)
    tf_startup.captured()  # forget an earlier command's (tests run several in one process)
    configure_output(args.verbose, args.quiet)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print(f"{prog(args)}: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        status = exit_status(exc)
        _replay_tensorflow_lines()
        if status is None:
            raise
        print(f"{prog(args)}: error: {_message(exc)}", file=sys.stderr)
        return status
    if status in (EXIT_FAILED, EXIT_USAGE):
        _replay_tensorflow_lines()
    return status


def _replay_tensorflow_lines() -> None:
    """Print what TensorFlow's import wrote to stderr, if anything (a failed command's context)."""
    text = tf_startup.captured()
    if text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()


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
