"""Benchmark: publish a new model version under load (concurrency 16) and measure the swap.

Starts the real service under gunicorn (2 workers) on a repository holding one
version of a model, drives POST /predict from N client threads (closed loop,
each with its own requests.Session), and after ``--before`` seconds publishes
version 2 (:func:`imgclf.core.repository.publish_version`, a copy of version 1)
while the load goes on. The trigger:

- ``poll`` (default): the service polls the repository (``IMGCLF_POLL_SECONDS=1``)
  and loads the new version itself. If the new version is never answered within
  ``--swap-timeout`` seconds (a build without the poller), the run fails (exit 1).
- ``sighup``: SIGHUP to the gunicorn master, today's reload (new workers load the
  newest version, old ones finish their requests and exit).

Every answer's ``version`` is recorded. The swap ends when the new version has
answered and the old one answers no more (the later of the first answer from
the new version and the last from the old one); "during" is every request
started from the publish to then,
"after" the ``--after`` seconds that follow. Prints requests/s, p50 and p99 per
phase with ratios to "before" (the baseline of the same run), the time from
publish to the first and to the last-switched answer of the new version, and
the non-200 answers, against the targets: zero non-200, p99 during the swap at
most 2x p99 before. Not a test: it reports, it does not assert (exit 0 when it
ran; 1 when the swap never happened). Every step is bounded in time.

    python -m bench.swap [--trigger poll|sighup] [--concurrency 16] [--before 15] [--after 15] [--graph tiny|full]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from bench.serve import GRAPH, OUT, build_graph, make_jpeg
from imgclf.core.repository import list_versions, publish_version, read_card
from tests.support.gunicorn_server import gunicorn

MODEL_NAME = "swap"
TINY_GRAPH = OUT / "legacy_inception_seed0.pb"
SETTLE_S = 2.0  # the swap is over once this long has passed without an answer from the old version
P99_TARGET = 2.0  # p99 during the swap at most this many times p99 before


@dataclass(frozen=True)
class Sample:
    """One request: when it started and ended (monotonic s), its HTTP status (0: no answer), its version."""

    start: float
    end: float
    status: int
    version: int | None


class Load:
    """N closed-loop client threads POSTing one JPEG to /predict until stopped."""

    def __init__(self, url: str, jpeg: bytes, concurrency: int, timeout: float = 60.0):
        self.url, self.jpeg, self.timeout = f"{url}/predict", jpeg, timeout
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def _run(self) -> None:
        session = requests.Session()
        headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
        while not self._stop.is_set():
            start = time.monotonic()
            status, version = 0, None
            try:
                response = session.post(self.url, data=self.jpeg, headers=headers, timeout=self.timeout)
                status = response.status_code
                if status == 200:
                    version = int(response.json()["version"])
            except (requests.RequestException, ValueError, KeyError):
                session.close()
                session = requests.Session()  # a broken connection: start afresh
            with self._lock:
                self.samples.append(Sample(start, time.monotonic(), status, version))
        session.close()


def prepare_model(graph_choice: str) -> Path:
    """Return a version directory of the benchmark model for ``graph_choice`` (tiny|full), training it once."""
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train

    base = OUT / f"swap-base-{graph_choice}"
    if list_versions(base, MODEL_NAME):
        return base / MODEL_NAME / str(max(list_versions(base, MODEL_NAME)))
    if graph_choice == "full":
        graph = build_graph(GRAPH)
    else:
        from tests.support.legacy_graph import write_legacy_graph

        graph = TINY_GRAPH if TINY_GRAPH.exists() else write_legacy_graph(TINY_GRAPH)
    print(f"training the swap benchmark model on the {graph_choice} graph (once) ...", flush=True)
    images = write_demo_images(OUT / "swap-images", per_class=8)
    # What is served matters here, not how well: 8 photos a class cannot pass the publish gate.
    outcome = run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                                 cache=OUT / f"swap-features-{graph_choice}.sqlite", model_dir=base,
                                 name=MODEL_NAME, progress=False,
                                 gate=GateConfig(publish="always")))
    return outcome.version_dir


def publish_copy(repo: Path, source: Path) -> int:
    """Publish a copy of version directory ``source`` as the next version of the model; return its number."""
    card = {k: v for k, v in read_card(source).items() if k != "version"}

    def write(work: Path) -> dict:
        for entry in source.iterdir():
            if entry.name == "model_card.json":
                continue  # publish_version writes the card, with the new version
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, work / entry.name)
        return card

    return int(publish_version(repo, MODEL_NAME, write).name)


def wait_for_swap(load: Load, published_at: float, new: int, timeout: float) -> tuple[float, float] | None:
    """Wait until only version ``new`` has answered for SETTLE_S; return (first new end, last old end) or None."""
    deadline = published_at + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        after = [s for s in load.snapshot() if s.end >= published_at and s.status == 200]
        first_new = min((s.end for s in after if s.version == new), default=None)
        last_old = max((s.end for s in after if s.version != new), default=published_at)
        if first_new is not None and time.monotonic() - max(first_new, last_old) >= SETTLE_S:
            return first_new, last_old
    return None


def phase(samples: list[Sample], start: float, end: float) -> dict:
    """Return requests/s, p50/p99 latency (ms) and non-200 count of the requests started in [start, end)."""
    inside = [s for s in samples if start <= s.start < end]
    latencies = np.array([s.end - s.start for s in inside if s.status == 200]) * 1000
    seconds = max(end - start, 1e-9)
    return {"requests": len(inside), "seconds": seconds, "rps": len(inside) / seconds,
            "p50": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
            "non200": sum(1 for s in inside if s.status != 200)}


def print_report(phases: dict[str, dict], first_new_s: float, last_old_s: float, trigger: str, args) -> bool:
    """Print the table and the targets; return whether both targets were met."""
    base = phases["before"]
    print(f"\nswap benchmark: trigger {trigger}, {args.workers} workers x {args.threads} threads, "
          f"concurrency {args.concurrency}, graph {args.graph}, {platform.machine()} {os.cpu_count()} cores")
    print(f"{'phase':8} {'seconds':>8} {'requests':>9} {'req/s':>8} {'x before':>9} {'p50 ms':>8} {'x before':>9} "
          f"{'p99 ms':>8} {'x before':>9} {'non-200':>8}")
    for name, p in phases.items():
        print(f"{name:8} {p['seconds']:8.1f} {p['requests']:9d} {p['rps']:8.1f} {p['rps'] / base['rps']:9.2f} "
              f"{p['p50']:8.1f} {p['p50'] / base['p50']:9.2f} {p['p99']:8.1f} {p['p99'] / base['p99']:9.2f} "
              f"{p['non200']:8d}")
    print(f"publish -> first answer from the new version: {first_new_s:.2f} s; "
          f"-> last answer from the old one: {last_old_s:.2f} s; "
          f"swap (the later): {max(first_new_s, last_old_s):.2f} s")
    non200 = sum(p["non200"] for p in phases.values())
    ratio = phases["during"]["p99"] / base["p99"]
    zero_ok, p99_ok = non200 == 0, ratio <= P99_TARGET
    print(f"target zero non-200 answers: {non200} -> {'met' if zero_ok else 'MISSED'}")
    print(f"target p99 during swap <= {P99_TARGET:g}x p99 before: {ratio:.2f}x -> {'met' if p99_ok else 'MISSED'}")
    return zero_ok and p99_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trigger", choices=("poll", "sighup"), default="poll",
                        help="how the service learns of the new version (default: poll, IMGCLF_POLL_SECONDS=1)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default: 16)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default: 2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default: 8)")
    parser.add_argument("--before", type=float, default=15.0, help="seconds of load before publishing (default: 15)")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after the swap (default: 15)")
    parser.add_argument("--swap-timeout", type=float, default=60.0,
                        help="seconds to wait for the new version to be served (default: 60)")
    parser.add_argument("--graph", choices=("tiny", "full"), default="tiny",
                        help="featurizer graph: the tiny legacy one (default) or full-size random Inception-v3")
    args = parser.parse_args(argv)
    if min(args.concurrency, args.workers, args.threads) < 1 or min(args.before, args.after, args.swap_timeout) <= 0:
        parser.error("counts must be >= 1 and durations > 0")

    OUT.mkdir(parents=True, exist_ok=True)
    source = prepare_model(args.graph)
    jpeg = make_jpeg()
    with tempfile.TemporaryDirectory(prefix="imgclf-swap-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "models"
        shutil.copytree(source, repo / MODEL_NAME / "1")
        env = {"IMGCLF_POLL_SECONDS": "1"} if args.trigger == "poll" else {}
        print(f"starting gunicorn ({args.workers} workers) on {repo} ...", flush=True)
        with gunicorn(repo, tmp, workers=args.workers, threads=args.threads, env=env, ready_within=240) as server:
            for _ in range(3):  # warm the connection path before measuring
                requests.post(f"{server.url}/predict", data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60)
            load = Load(server.url, jpeg, args.concurrency)
            began = time.monotonic()
            load.start()
            time.sleep(args.before)
            published_at = time.monotonic()
            new = publish_copy(repo, repo / MODEL_NAME / "1")
            if args.trigger == "sighup":
                os.kill(server.process.pid, signal.SIGHUP)
            print(f"published version {new} after {args.before:g} s of load; waiting for it ...", flush=True)
            swapped = wait_for_swap(load, published_at, new, args.swap_timeout)
            if swapped is None:
                load.stop()
                print(f"error: version {new} was not served within {args.swap_timeout:g} s of publishing it "
                      f"(trigger {args.trigger}" + (": does this build poll the repository, IMGCLF_POLL_SECONDS?)"
                                                    if args.trigger == "poll" else ")"), file=sys.stderr)
                return 1
            first_new, last_old = swapped
            swap_end = max(first_new, last_old)  # the new version answers and the old one no longer does
            time.sleep(max(0.0, swap_end + args.after - time.monotonic()))
            stopped = time.monotonic()
            load.stop()
        samples = load.snapshot()
    phases = {"before": phase(samples, began, published_at), "during": phase(samples, published_at, swap_end),
              "after": phase(samples, swap_end, stopped)}
    print_report(phases, first_new - published_at, last_old - published_at, args.trigger, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
