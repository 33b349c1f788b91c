"""Benchmark: a bounded soak of the service under gunicorn: mixed valid and invalid requests, worker memory.

Starts gunicorn (``--workers`` workers, ``--threads`` threads each) on a small
model and drives it for ``--seconds`` from ``--concurrency`` closed-loop
clients (each with its own keep-alive session, each sending its next request
as soon as the last one is answered, 127.0.0.1 only). Every request is drawn
at random (seeded) from a mix: valid JPEGs to POST /predict as multipart, as a
raw body and as JSON base64, and to the TF-Serving route; invalid ones (a
truncated JPEG, text sent as an image, malformed JSON, an unknown model on
both routes, a wrong content type). Each worker's resident memory (VmRSS from
/proc/<pid>/status) is sampled every second.

Criteria (the exit status is non-zero when one fails): no 5xx, no connection
error, every valid answer carries the reference's top label and score (the
model loaded in this process and run on one image, without HTTP or batching),
every invalid request gets its 4xx, no worker replaced, and each worker's RSS
grows by less than 10 % from the mean of the first 20 s to the mean of the last
20 s (checked only when the run lasts at least 40 s). A few seconds of the same
load run first as a warm-up, not counted.

The model: ``--graph tiny`` (default) trains a head on the tiny 2015-style test
graph (tests/legacy_graph.py), so the server starts in seconds and the soak
sends thousands of requests; ``--graph full`` serves bench/serve.py's model on
the full-size random-weight Inception-v3 (built and trained once, shared with
that benchmark). Both are served in fp32, the precision of the reference.

    python -m bench.soak [--seconds 60] [--concurrency 16] [--workers 2] [--threads 8] [--graph tiny]
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

from imgclf.service.cli import serve as serve_cli
from imgclf.service.server import launch
from tests.support.processes import children_of, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODEL_NAME = "soak"
READY_WITHIN_S = 240
STOP_WITHIN_S = 60
REQUEST_TIMEOUT_S = 60
WINDOW_S = 20.0  # RSS growth: mean of the first WINDOW_S seconds against the mean of the last WINDOW_S
MAX_RSS_GROWTH = 0.10
SCORE_TOLERANCE = 1e-4  # batches of different sizes may round the last bits differently

VALID_KINDS = ("multipart", "raw", "json-b64", "tfserving")
# Invalid requests and the statuses they must get.
INVALID_KINDS = {"truncated-jpeg": {400}, "text-as-image": {400, 415}, "bad-json": {400},
                 "unknown-model": {404}, "tfserving-unknown-model": {404}, "wrong-content-type": {415}}


# --- the model -------------------------------------------------------------------------------------------------

def build_tiny_model(out: Path = OUT) -> tuple[Path, Path]:
    """Return (version dir, image dir) of a head trained once on the tiny test graph and the demo pictures."""
    from imgclf.core.repository import list_versions, resolve
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train
    from tests.support.legacy_graph import write_legacy_graph

    out.mkdir(parents=True, exist_ok=True)
    images = write_demo_images(out / "serve-images", per_class=8)  # the same set bench/serve.py trains on
    model_dir = out / "soak-models"
    if not list_versions(model_dir, MODEL_NAME):
        graph = write_legacy_graph(out / "soak-legacy-graph.pb")
        print("training the soak model on the tiny graph (once) ...", flush=True)
        # What is served matters here, not how well: 8 photos a class cannot pass the publish gate.
        run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                           cache=out / "soak-features.sqlite", model_dir=model_dir, name=MODEL_NAME,
                           progress=False, gate=GateConfig(publish="always")))
    return resolve(model_dir / MODEL_NAME), images


def build_full_model() -> tuple[Path, Path]:
    """Return (version dir, image dir) of bench/serve.py's model on the full-size random-weight graph."""
    from bench import serve as serve_bench

    OUT.mkdir(parents=True, exist_ok=True)
    version_dir = serve_bench.train_model(serve_bench.build_graph(serve_bench.GRAPH), OUT / "serve-models")
    return version_dir, OUT / "serve-images"


def sample_images(image_dir: Path) -> dict[str, bytes]:
    """Return the first JPEG of each class folder, by relative path."""
    found = {}
    for folder in sorted(p for p in Path(image_dir).iterdir() if p.is_dir()):
        first = sorted(folder.glob("*.jpg"))[0]
        found[f"{folder.name}/{first.name}"] = first.read_bytes()
    return found


def reference_predictions(version_dir: Path, images: dict[str, bytes]) -> dict[str, tuple[str, float]]:
    """Return {image: (top label, score)} from the model loaded here, one image at a time, no HTTP."""
    from imgclf.training.classifier import load_model

    model = load_model(version_dir)
    references = {}
    for name, data in images.items():
        probabilities = model.predict_rgb([model.decode(data)])[0]
        best = int(np.argmax(probabilities))
        references[name] = (model.labels[best], float(probabilities[best]))
    return references


# --- the server ------------------------------------------------------------------------------------------------





def rss_kib(pid: int) -> int | None:
    """Return the resident memory of ``pid`` in KiB (VmRSS), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def metric_samples(url: str) -> list:
    """Return the samples of one GET /metrics (on a new connection: either worker may answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    response.raise_for_status()
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def loaded_worker_pids(url: str) -> set[int]:
    """Return the pids of the live workers that have loaded and warmed up their models."""
    return {int(s.labels["pid"]) for s in metric_samples(url) if s.name == "imgclf_model_load_seconds"}


class Server:
    """gunicorn on a model repository, started and stopped by its caller; every wait is bounded.

    ``front``: run `imgclf serve`'s front, which starts gunicorn behind it (its workers on the front's
    channel), instead of gunicorn alone on the port; signals go to the front, which passes SIGHUP on.
    """

    def __init__(self, model_dir: Path, workers: int, threads: int, tmp: Path, extra_env: dict | None = None,
                 front: bool = False):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.workers = workers
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log = self.tmp / "gunicorn.log"
        env = serve_cli.serve_env(model_dir, bind=f"127.0.0.1:{port}", workers=workers, threads=threads)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the conf makes a fresh one, under TMPDIR
        env.update(TMPDIR=str(self.tmp), IMGCLF_PRECISION="fp32", **(extra_env or {}))
        with open(self.log, "wb") as out:
            argv = serve_cli.front_argv() if front else launch.gunicorn_argv()
            self.process = subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=out, stderr=subprocess.STDOUT)
        self.front = front

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:]

    def worker_pids(self) -> list[int]:
        """Return the pids of the master's worker processes."""
        if self.front:  # the front's one child is gunicorn's master
            return [pid for master in children_of(self.process.pid) for pid in children_of(master)]
        return children_of(self.process.pid)

    def metrics_dir(self) -> Path:
        """Return the Prometheus multiprocess directory the conf made under TMPDIR."""
        (found,) = glob.glob(str(self.tmp / "imgclf-metrics-*"))
        return Path(found)

    def wait_ready(self, timeout: float = READY_WITHIN_S) -> None:
        """Wait until every worker has loaded and warmed up its models."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200 and \
                        len(loaded_worker_pids(self.url)) >= self.workers:
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.25)
        raise RuntimeError(f"gunicorn not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_WITHIN_S)


# --- the load --------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One request: when it ran, what it was and how it ended."""

    started: float  # time.monotonic()
    ended: float
    kind: str
    image: str
    status: int | None  # None: no HTTP answer (connection error, timeout)
    problem: str = ""  # "" when the answer was the right one


def _request(kind: str, image: bytes, model: str) -> tuple[str, dict]:
    """Return (URL path, ``requests`` keyword arguments) of one POST of ``kind``."""
    b64 = base64.b64encode(image).decode("ascii")
    tfserving = f"/v1/models/{model}:predict"
    return {
        "multipart": ("/predict", {"files": {"image": ("photo.jpg", image, "image/jpeg")}}),
        "raw": ("/predict", {"data": image, "headers": {"Content-Type": "image/jpeg"}}),
        "json-b64": ("/predict", {"json": {"b64": b64}}),
        "tfserving": (tfserving, {"json": {"instances": [{"b64": b64}]}}),
        "truncated-jpeg": ("/predict", {"data": image[:len(image) // 2], "headers": {"Content-Type": "image/jpeg"}}),
        "text-as-image": ("/predict", {"data": b"this is text, not a picture\n" * 4,
                                       "headers": {"Content-Type": "image/jpeg"}}),
        "bad-json": ("/predict", {"data": b'{"b64": "' + b64[:40].encode() + b'",',
                                  "headers": {"Content-Type": "application/json"}}),
        "unknown-model": ("/predict?model=no-such-model", {"data": image, "headers": {"Content-Type": "image/jpeg"}}),
        "tfserving-unknown-model": ("/v1/models/no-such-model:predict", {"json": {"instances": [{"b64": b64}]}}),
        "wrong-content-type": ("/predict", {"data": b"<image>not this</image>",
                                            "headers": {"Content-Type": "application/xml"}}),
    }[kind]


def check_answer(kind: str, response: requests.Response, reference: tuple[str, float]) -> str:
    """Return "" when the answer to a request of ``kind`` is right, else what is wrong with it."""
    if kind in INVALID_KINDS:
        expected = INVALID_KINDS[kind]
        if response.status_code not in expected:
            return f"expected HTTP {sorted(expected)}, got {response.status_code}: {response.text[:200]}"
        return ""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        body = response.json()
        if kind == "tfserving":
            row = body["predictions"][0]
            label, score = row["labels"], max(row["probabilities"])
        else:
            label, score = body["predictions"][0]["label"], body["predictions"][0]["score"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"unreadable answer ({type(exc).__name__}: {exc}): {response.text[:200]}"
    if label != reference[0] or abs(score - reference[1]) > SCORE_TOLERANCE:
        return f"predicted {label} {score:.6f}, reference {reference[0]} {reference[1]:.6f}"
    return ""


class Load:
    """Closed-loop clients sending requests drawn from ``kinds`` until stopped; every outcome is recorded."""

    def __init__(self, url: str, model: str, images: dict[str, bytes], references: dict[str, tuple[str, float]],
                 kinds: tuple[str, ...], concurrency: int, seed: int = 0, close_connections: bool = False):
        self.url, self.model, self.images, self.references = url, model, images, references
        self.kinds, self.concurrency, self.seed = tuple(kinds), concurrency, seed
        self.close_connections = close_connections  # a new connection per request: any worker may take it
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        """Start the clients."""
        self._threads = [threading.Thread(target=self._client, args=(n,), name=f"client-{n}", daemon=True)
                         for n in range(self.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop the clients (each finishes its request in flight); return the outcomes."""
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 10)
        with self._lock:
            return list(self.outcomes)

    def in_flight(self, at: float) -> int:
        """Return how many requests had started and not ended at time ``at`` (so far)."""
        with self._lock:
            return sum(1 for o in self.outcomes if o.started <= at < o.ended)

    def _client(self, number: int) -> None:
        rng = np.random.default_rng([self.seed, number])
        names = sorted(self.images)
        headers = {"Connection": "close"} if self.close_connections else {}
        with requests.Session() as session:
            while not self._stop.is_set():
                kind = self.kinds[rng.integers(len(self.kinds))]
                image = names[rng.integers(len(names))]
                path, kwargs = _request(kind, self.images[image], self.model)
                kwargs.setdefault("headers", {}).update(headers)
                started = time.monotonic()
                try:
                    response = session.post(self.url + path, timeout=REQUEST_TIMEOUT_S, **kwargs)
                    status, problem = response.status_code, check_answer(kind, response, self.references[image])
                except requests.RequestException as exc:
                    status, problem = None, f"{type(exc).__name__}: {exc}"
                outcome = Outcome(started, time.monotonic(), kind, image, status, problem)
                with self._lock:
                    self.outcomes.append(outcome)


class RssSampler:
    """Sample the VmRSS of every worker of a gunicorn master every ``interval`` seconds, in a thread."""

    def __init__(self, master_pid: int, interval: float = 1.0):
        self.master_pid, self.interval = master_pid, interval
        self.samples: dict[int, list[tuple[float, int]]] = {}  # pid → [(time.monotonic(), KiB)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> dict[int, list[tuple[float, int]]]:
        """Stop sampling; return the samples by worker pid."""
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            for pid in children_of(self.master_pid):
                kib = rss_kib(pid)
                if kib is not None:
                    self.samples.setdefault(pid, []).append((now, kib))
            if self._stop.wait(self.interval):
                return


# --- the soak --------------------------------------------------------------------------------------------------

@dataclass
class SoakResult:
    """What a soak measured."""

    seconds: float
    outcomes: list[Outcome]
    rss: dict[int, list[tuple[float, int]]]  # worker pid → [(time.monotonic(), KiB)]
    started: float  # time.monotonic() at the start of the measured run
    workers_before: list[int] = field(default_factory=list)
    workers_after: list[int] = field(default_factory=list)

    def statuses(self) -> Counter:
        """Return the number of answers per HTTP status ("connection error" for none)."""
        return Counter(o.status if o.status is not None else "connection error" for o in self.outcomes)

    def rss_windows(self, window: float = WINDOW_S) -> dict[int, tuple[float, float, float]]:
        """Return {pid: (mean MiB of the first ``window`` s, mean MiB of the last ``window`` s, growth)}."""
        out = {}
        end = self.started + self.seconds
        for pid, samples in sorted(self.rss.items()):
            first = [kib for t, kib in samples if t < self.started + window]
            last = [kib for t, kib in samples if t > end - window]
            if first and last:
                a, b = np.mean(first) / 1024, np.mean(last) / 1024
                out[pid] = (float(a), float(b), float(b / a - 1.0))
        return out

    def failures(self, check_memory: bool) -> list[str]:
        """Return every criterion that failed, with examples."""
        failed = []
        server_errors = [o for o in self.outcomes if o.status is not None and o.status >= 500]
        dropped = [o for o in self.outcomes if o.status is None]
        wrong = [o for o in self.outcomes if o.problem and o.status is not None and o.status < 500]
        for what, bad in (("5xx answers", server_errors), ("connection errors", dropped),
                          ("wrong answers", wrong)):
            if bad:
                examples = "; ".join(f"{o.kind} {o.image}: {o.problem}" for o in bad[:3])
                failed.append(f"{len(bad)} {what} (e.g. {examples})")
        if not any(o.kind in VALID_KINDS and not o.problem for o in self.outcomes):
            failed.append("no valid request was answered")
        if sorted(self.workers_after) != sorted(self.workers_before):
            failed.append(f"workers changed during the soak: {self.workers_before} -> {self.workers_after}")
        if check_memory:
            windows = self.rss_windows()
            if len(windows) < len(self.workers_before):
                failed.append(f"RSS windows for {sorted(windows)} only, workers {self.workers_before}")
            for pid, (first, last, growth) in windows.items():
                if growth >= MAX_RSS_GROWTH:
                    failed.append(f"worker {pid} RSS grew {growth:.1%} ({first:.1f} -> {last:.1f} MiB)")
        return failed

    def report(self) -> str:
        """Return the figures: requests/s, answers per status and kind, RSS per worker."""
        total = len(self.outcomes)
        lines = [f"{total} requests in {self.seconds:.1f} s: {total / self.seconds:.1f} requests/s",
                 "status counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses().items(), key=str))]
        by_kind = Counter((o.kind, o.status) for o in self.outcomes)
        for kind in (*VALID_KINDS, *INVALID_KINDS):
            counts = ", ".join(f"{status}: {n}" for (k, status), n in sorted(by_kind.items(), key=str) if k == kind)
            lines.append(f"  {kind:<24} {counts}")
        window = min(WINDOW_S, self.seconds / 2)
        lines.append(f"worker RSS (MiB), mean of the first {window:.0f} s -> mean of the last {window:.0f} s:")
        for pid, (first, last, growth) in self.rss_windows(window).items():
            lines.append(f"  worker {pid}: {first:8.1f} -> {last:8.1f}  ({growth:+.2%}; "
                         f"{len(self.rss[pid])} samples)")
        return "\n".join(lines)


def soak(server: Server, images: dict[str, bytes], references: dict[str, tuple[str, float]], seconds: float,
         concurrency: int, model: str, warmup: float = 5.0, seed: int = 0) -> SoakResult:
    """Warm up, then drive ``server`` with the mixed load for ``seconds``, sampling worker memory."""
    kinds = (*VALID_KINDS, *INVALID_KINDS)
    if warmup > 0:
        warm = Load(server.url, model, images, references, kinds, concurrency, seed=seed + 1).start()
        time.sleep(warmup)
        warm.stop()
    workers_before = server.worker_pids()
    sampler = RssSampler(server.process.pid).start()
    started = time.monotonic()
    load = Load(server.url, model, images, references, kinds, concurrency, seed=seed).start()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    outcomes = load.stop()
    elapsed = time.monotonic() - started
    rss = sampler.stop()
    return SoakResult(elapsed, outcomes, rss, started, workers_before, server.worker_pids())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured run (default 60)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--threads", type=int, default=8, help="request threads per worker (default 8)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring (default 5)")
    parser.add_argument("--graph", choices=("tiny", "full"), default="tiny",
                        help="tiny 2015-style test graph (default) or the full-size random-weight Inception-v3")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix (default 0)")
    args = parser.parse_args(argv)

    version_dir, image_dir = build_full_model() if args.graph == "full" else build_tiny_model()
    images = sample_images(image_dir)
    references = reference_predictions(version_dir, images)
    check_memory = args.seconds >= 2 * WINDOW_S
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {version_dir} "
          f"({args.graph} graph, fp32); {args.workers} worker(s) x {args.threads} threads; concurrency "
          f"{args.concurrency}; {args.warmup:.0f} s warm-up, then {args.seconds:.0f} s; seed {args.seed}"
          + ("" if check_memory else f"; memory not checked (under {2 * WINDOW_S:.0f} s)"), flush=True)
    server = Server(version_dir.parent.parent, args.workers, args.threads, OUT / "soak-server")
    try:
        server.wait_ready()
        result = soak(server, images, references, args.seconds, args.concurrency, version_dir.parent.name,
                      warmup=args.warmup, seed=args.seed)
    finally:
        server.stop()
    print(result.report(), flush=True)
    failed = result.failures(check_memory)
    for line in failed:
        print(f"FAILED: {line}", flush=True)
    if failed:
        print(f"server log: {server.log}", flush=True)
    else:
        print("all criteria met", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
