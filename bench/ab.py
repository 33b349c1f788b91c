"""Benchmark two checkouts against each other, interleaved: bench.serve at one concurrency and bench.featurize.

A refactoring must not make the service or the featurizer slower, and the
machine's own drift is as large as the differences to find; so the two
checkouts take turns, round after round (A B, then B A, ...), each running its
own ``bench.serve`` (batching on, one concurrency level) and its own
``bench.featurize`` (the batched fp32 pipeline) with its own Python. Prints
every round's figures and the medians, and the ratios of this checkout to the
baseline.

    python -m bench.ab --baseline ../baseline-checkout [--baseline-python ../baseline-checkout/.venv/bin/python]
        [--rounds 3] [--concurrency 16] [--requests 300] [--images 200]

The baseline is any checkout of imgclf with its bench/ (e.g. ``git worktree add ../base <commit>`` and a venv in
which that checkout is installed). Not a test: no assertions. Every run is bounded in time.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_WITHIN_S = 1800
# bench.serve: the header line of the batching-ON table, then one row per level:
# conc sent errors req/s p50 p95 p99 img/call cpu-ms
_SERVE_ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)" + r"\s+([\d.]+)" * 4 + r"\s+([\d.na]+)" * 2 + "$")
_FEATURIZE_ROW = re.compile(r"^\(b\) batched pipeline, fp32\s+([\d.]+) img/s")


def run(python: str, checkout: Path, module: str, args: list[str]) -> str:
    """Run ``python -m module args`` in ``checkout``; return its output (raises when it fails)."""
    done = subprocess.run([python, "-m", module, *args], cwd=checkout, capture_output=True, text=True,
                          timeout=RUN_WITHIN_S)
    if done.returncode:
        raise RuntimeError(f"{module} in {checkout} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-3000:]}")
    return done.stdout


def serve_figures(output: str, concurrency: int) -> dict[str, float]:
    """Return req/s, p50, p99 and worker CPU ms per request of bench.serve's batching-ON row at ``concurrency``."""
    section = output.split("batching ON", 1)[1].split("batching OFF", 1)[0]
    for line in section.splitlines():
        match = _SERVE_ROW.match(line)
        if match and int(match.group(1)) == concurrency:
            return {"req/s": float(match.group(4)), "p50 ms": float(match.group(5)), "p99 ms": float(match.group(7)),
                    "errors": float(match.group(3)), "img/call": float(match.group(8)),
                    "cpu ms/req": float(match.group(9))}
    raise ValueError(f"no batching-ON row for concurrency {concurrency} in:\n{output[-2000:]}")


def featurize_rate(output: str) -> float:
    """Return the batched fp32 pipeline's img/s printed by bench.featurize."""
    for line in output.splitlines():
        match = _FEATURIZE_ROW.match(line.strip())
        if match:
            return float(match.group(1))
    raise ValueError(f"no '(b) batched pipeline, fp32' line in:\n{output[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout")
    parser.add_argument("--baseline-python", default="", help="its Python (default: BASELINE/.venv/bin/python)")
    parser.add_argument("--python", default=sys.executable, help="this checkout's Python")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    baseline = args.baseline.resolve()
    sides = {"baseline": (args.baseline_python or str(baseline / ".venv" / "bin" / "python"), baseline),
             "this": (args.python, ROOT)}
    print(f"CPU: {platform.processor() or platform.machine()}; baseline {baseline}, this {ROOT}; "
          f"{args.rounds} rounds, bench.serve concurrency {args.concurrency} x {args.requests} requests, "
          f"bench.featurize {args.images} images", flush=True)
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for name in order:
            python, checkout = sides[name]
            started = time.monotonic()
            serve = serve_figures(run(python, checkout, "bench.serve", ["--concurrency", str(args.concurrency),
                                                                        "--requests", str(args.requests)]),
                                  args.concurrency)
            serve["featurize img/s"] = featurize_rate(run(python, checkout, "bench.featurize",
                                                          ["--images", str(args.images), "--no-openvino"]))
            figures[name].append(serve)
            print(f"round {round_ + 1} {name:<8} " + "  ".join(f"{k} {v:.2f}" for k, v in serve.items())
                  + f"  ({time.monotonic() - started:.0f} s)", flush=True)
    print("\nmedians (this / baseline):")
    for key in figures["this"][0]:
        this = statistics.median(f[key] for f in figures["this"])
        base = statistics.median(f[key] for f in figures["baseline"])
        ratio = f"{this / base:6.3f}x" if base else "   n/a"
        print(f"  {key:<16} this {this:9.2f}   baseline {base:9.2f}   {ratio}")


if __name__ == "__main__":
    main()
