"""``imgclf``: the command line's entry point, with every package's subcommands in the order --help lists them.

The top layer knows every package, so the list of command modules lives here,
imported for real (the layer contracts see each arrow); each of them imports
only argparse-level things, so ``imgclf --help`` stays fast and no command
imports Flask before it runs.
"""

from __future__ import annotations

import argparse
import sys

from imgclf.core import cli
from imgclf.featurizer import cli as featurizer_cli
from imgclf.service.access import api_keys
from imgclf.service.cli import demo, doctor, predict, serve
from imgclf.training import cli as training_cli
from imgclf.training import models_cli

COMMAND_MODULES = (demo, featurizer_cli, training_cli, models_cli, predict, serve, api_keys, doctor)


def build_parser() -> argparse.ArgumentParser:
    """Return the `imgclf` argument parser with every package's subcommands."""
    return cli.build_parser(COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    """Run the `imgclf` command line; return the exit status."""
    return cli.run_command(build_parser(), argv, lambda args: f"imgclf {args.command}")


if __name__ == "__main__":
    sys.exit(main())
