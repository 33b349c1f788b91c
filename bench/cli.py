"""Benchmark: how fast the command line answers, and how many TensorFlow lines it prints, against a baseline.

Runs the same commands with this checkout's ``imgclf`` (its console script's code, in this
interpreter) and with a baseline executable (another install of imgclf, e.g. main's
``.venv/bin/imgclf`` from before issue 26), alternating, in fresh processes, from a scratch
folder with a tiny legacy graph and a few demo images:

* ``--help``, ``--version``;
* two bad arguments: ``train dir --graph g.pb --model-dir m --name n`` (IMAGE_DIR needs --cache)
  and ``featurize --batch-size -3 ...``;
* a default featurize that succeeds, and one that fails after TensorFlow loaded (a corrupt
  graph), each with ``TF_CPP_MIN_LOG_LEVEL`` unset and with it at 0, counting the stderr lines
  that TensorFlow wrote (absl, ``cpu_feature_guard``, oneDNN, CUDA factories).

Prints the median wall time of each command on each side and the ratio baseline/candidate, and
the TensorFlow line counts. Not a test: no assertions.

    python -m bench.cli --baseline /path/to/baseline/.venv/bin/imgclf [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A line TensorFlow's C++ side writes: absl's notice, glog-style "I0000 00:00:..." lines, their continuations.
TF_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} |To enable the following instructions"
                     r"|.*(cpu_feature_guard|oneDNN custom operations|Unable to register cu))")
# What the installed console script runs, in this interpreter (so both sides start the same way).
CANDIDATE = [sys.executable, "-c", "import sys; from imgclf.service.cli.main import main; sys.exit(main())"]


def run(command: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    """Run ``command``; return (seconds, exit status, stderr)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - start, done.returncode, done.stderr


def tf_lines(stderr: str) -> int:
    """Return how many lines of ``stderr`` TensorFlow wrote."""
    return sum(1 for line in stderr.splitlines() if TF_LINE.match(line))


def scratch(folder: Path) -> None:
    """Write the tiny legacy graph, a corrupt one, and 2 demo images per class into ``folder``."""
    from imgclf.featurizer.images.demo import write_demo_images
    from tests.support.legacy_graph import write_legacy_graph

    write_legacy_graph(folder / "g.pb")
    (folder / "corrupt.pb").write_bytes(b"\x08\x01 this is not a GraphDef" * 50)
    write_demo_images(folder / "images", per_class=2)
    (folder / "dir").mkdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the baseline's imgclf executable")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each timed command per side")
    args = parser.parse_args()
    sides = {"baseline": [args.baseline], "candidate": CANDIDATE}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scratch(folder)
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        featurize = ["featurize", "images", "--graph", "g.pb", "--cache", "c.sqlite"]
        timed = {
            "--help": ["--help"],
            "--version": ["--version"],
            "train dir (no --cache)": ["train", "dir", "--graph", "g.pb", "--model-dir", "m", "--name", "n"],
            "featurize --batch-size -3": ["featurize", "--batch-size", "-3", "dir", "--graph", "g.pb", "--cache",
                                          "c.sqlite"],
        }
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.repeat} runs each, "
              "alternating sides; median wall seconds")
        print(f"{'command':<28} {'baseline':>9} {'candidate':>9} {'ratio':>7}  exit (b/c)")
        for name, argv in timed.items():
            times: dict[str, list[float]] = {side: [] for side in sides}
            status = {}
            for _ in range(args.repeat):
                for side, prefix in sides.items():
                    seconds, status[side], _ = run([*prefix, *argv], folder, env)
                    times[side].append(seconds)
            b, c = statistics.median(times["baseline"]), statistics.median(times["candidate"])
            print(f"{name:<28} {b:9.2f} {c:9.2f} {b / c:6.1f}x  {status['baseline']}/{status['candidate']}")
        print("\nTensorFlow lines on stderr (exit status)")
        print(f"{'command':<62} {'baseline':>10} {'candidate':>10}")
        for level in (None, "0"):
            level_env = dict(env) if level is None else {**env, "TF_CPP_MIN_LOG_LEVEL": level}
            label = "TF_CPP_MIN_LOG_LEVEL unset" if level is None else f"TF_CPP_MIN_LOG_LEVEL={level}"
            for name, argv in (("featurize (succeeds)", featurize),
                               ("featurize (corrupt graph, fails)", [*featurize[:3], "corrupt.pb", *featurize[4:]])):
                cells = []
                for prefix in sides.values():
                    (folder / "c.sqlite").unlink(missing_ok=True)
                    _, status_code, err = run([*prefix, *argv], folder, level_env)
                    cells.append(f"{tf_lines(err)} ({status_code})")
                print(f"{name + ', ' + label:<62} {cells[0]:>10} {cells[1]:>10}")


if __name__ == "__main__":
    main()
