"""The `imgclf` console script: a thin dispatcher over each package's subcommands."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """Return the `imgclf` argument parser with every package's subcommands."""
    from featurizer import cli as featurizer_cli
    from models import cli as models_cli
    from service import demo, predict_cli, serve_cli
    from training import cli as training_cli

    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Transfer-learning image classifier: Inception-v3 bottlenecks, a small dense head, "
                    "an HTTP API.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.register(sub)
    featurizer_cli.register(sub)
    training_cli.register(sub)
    models_cli.register(sub)
    predict_cli.register(sub)
    serve_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `imgclf` command line; return the exit status."""
    from featurizer.cli import run_command

    return run_command(build_parser(), argv, lambda args: f"imgclf {args.command}")

if __name__ == "__main__":
    sys.exit(main())
