"""The `imgclf` console script: a thin dispatcher over each package's subcommands."""

from __future__ import annotations

import argparse
import logging
import os
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the output
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("tensorflow", "absl", "h5py", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    from featurizer.errors import ImgclfError

    try:
        return args.func(args)
    except (ImgclfError, ValueError, FileNotFoundError) as exc:
        print(f"imgclf {args.command}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        print(f"imgclf {args.command}: interrupted; work committed so far is kept, run again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
