"""Benchmark: one gunicorn worker under worst-case amplification requests, without and with the work budgets.

Trains (once) a small model on the tiny 2015-interface graph into bench/out/
(decoding, not the model, is what these requests cost), then for two settings
— "before": ``IMGCLF_MAX_REQUEST_PIXELS=0`` and ``IMGCLF_MAX_DECODE_PIXELS_IN_FLIGHT=0``
(no budget, no gate); "after": the defaults — starts gunicorn (1 worker, 16
threads) and measures, in the same run:

* small ``POST /predict`` latency (p50/p99) with no attack;
* the same while ``--heavy`` concurrent TF-Serving requests each carry
  ``--images`` PNGs of 160 KB that decode to 7000×7000 (3 × 49 MP is the
  default budget's worth), with the worker's peak RSS above idle;
* one request of 64 such PNGs (3.1 Gpx): its status and time to answer.

Prints a table and after/before ratios. Not a test: no assertions; every
request has a timeout.

    python -m bench.budget [--heavy 8] [--images 3] [--small-clients 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from imgclf.service.cli import serve as serve_cli
from imgclf.service.server import launch
from tests.support.images import jpeg
from tests.support.processes import children_of, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODELS = OUT / "budget-models"
SETTINGS = {"before": {"IMGCLF_MAX_REQUEST_PIXELS": "0", "IMGCLF_MAX_DECODE_PIXELS_IN_FLIGHT": "0"},
            "after": {}}


def train_model() -> Path:
    """Return a repository with model "shapes" on the tiny legacy graph, trained once."""
    if (MODELS / "shapes").is_dir():
        return MODELS
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train
    from tests.support.legacy_graph import write_legacy_graph

    OUT.mkdir(parents=True, exist_ok=True)
    graph = write_legacy_graph(OUT / "budget_legacy_graph.pb")
    images = write_demo_images(OUT / "budget-images", per_class=8)
    # What is served matters here, not how well: 8 photos a class cannot pass the publish gate.
    run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                       cache=OUT / "budget-features.sqlite", model_dir=MODELS, name="shapes", progress=False,
                       gate=GateConfig(publish="always")))
    return MODELS


def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (7000, 7000), (200, 30, 40)).save(out, "PNG", optimize=True)
    return out.getvalue()


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def start(repo: Path, extra: dict, tmp: Path) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    env = serve_cli.serve_env(repo, bind=f"127.0.0.1:{port}", workers=1, threads=16)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TMPDIR=str(tmp), IMGCLF_BATCH_MAX_WAIT_MS="2", IMGCLF_TIMEOUT="300", **extra)
    tmp.mkdir(parents=True, exist_ok=True)
    log = open(tmp / "gunicorn.log", "wb")
    process = subprocess.Popen(launch.gunicorn_argv(), env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=5).status_code == 200:
                return process, url, children_of(process.pid)[0]
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit(f"gunicorn not ready in 120 s; see {tmp / 'gunicorn.log'}")


def small_load(url: str, clients: int, stop: threading.Event, seconds: float | None = None) -> tuple[list, int]:
    """Send small /predict requests from ``clients`` threads until ``stop`` or ``seconds``; return latencies, errors."""
    image, latencies, failures = jpeg(3), [], []
    until = time.monotonic() + seconds if seconds else None

    def client():
        session = requests.Session()
        while not stop.is_set() and (until is None or time.monotonic() < until):
            started = time.monotonic()
            try:
                ok = session.post(url + "/predict", data=image, headers={"Content-Type": "image/jpeg"},
                                  timeout=120).status_code == 200
            except requests.RequestException:
                ok = False
            (latencies if ok else failures).append(time.monotonic() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, len(failures)


def percentiles(latencies: list) -> str:
    if not latencies:
        return "     -      -"
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    return f"{p50:6.0f} {p99:6.0f}"


def measure(name: str, repo: Path, args, bomb: dict) -> dict:
    process, url, worker = start(repo, SETTINGS[name], OUT / f"budget-{name}")
    try:
        for _ in range(5):
            requests.post(url + "/predict", data=jpeg(3), headers={"Content-Type": "image/jpeg"}, timeout=60)
        time.sleep(1.5)
        idle = rss_mb(worker)
        quiet, quiet_errors = small_load(url, args.small_clients, threading.Event(), seconds=5)

        stop, peak, result = threading.Event(), [idle], {}

        def sample():
            while not stop.is_set():
                peak.append(rss_mb(worker))
                time.sleep(0.02)

        def small_during_load():
            result["lat"], result["err"] = small_load(url, args.small_clients, stop)

        sampler = threading.Thread(target=sample)
        loaded = threading.Thread(target=small_during_load)
        sampler.start()
        loaded.start()
        started = time.monotonic()

        def heavy(_):
            try:
                return requests.post(url + "/v1/models/shapes:predict", json={"instances": [bomb] * args.images},
                                     timeout=300).status_code
            except requests.RequestException as exc:
                return type(exc).__name__

        with ThreadPoolExecutor(args.heavy) as pool:
            heavy_statuses = list(pool.map(heavy, range(args.heavy)))
        heavy_seconds = time.monotonic() - started
        stop.set()
        loaded.join()
        sampler.join()
        started = time.monotonic()
        try:
            big = requests.post(url + "/v1/models/shapes:predict", json={"instances": [bomb] * 64},
                                timeout=300).status_code
        except requests.RequestException as exc:
            big = type(exc).__name__
        big_seconds = time.monotonic() - started
        return {"name": name, "idle": idle, "quiet": quiet, "quiet_err": quiet_errors, "loaded": result["lat"],
                "loaded_err": result["err"], "peak": max(peak) - idle, "heavy": heavy_statuses,
                "heavy_s": heavy_seconds, "big": big, "big_s": big_seconds}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heavy", type=int, default=8, help="concurrent worst-case requests")
    parser.add_argument("--images", type=int, default=3, help="7000x7000 PNGs per worst-case request")
    parser.add_argument("--small-clients", type=int, default=2, help="threads sending small /predict requests")
    args = parser.parse_args()
    repo = train_model()
    bomb = {"b64": base64.b64encode(bomb_png()).decode()}
    rows = [measure(name, repo, args, bomb) for name in SETTINGS]
    print(f"\n1 gunicorn worker x 16 threads; {args.heavy} concurrent requests of {args.images} x 7000x7000 PNG; "
          f"{args.small_clients} small /predict clients")
    print(f"{'':7} {'quiet p50/p99 ms':>17} {'under load p50/p99 ms':>22} {'errors':>7} {'RSS +MB':>8} "
          f"{'heavy':>14} {'heavy s':>8} {'64-image':>9} {'its s':>6}")
    for r in rows:
        print(f"{r['name']:7} {percentiles(r['quiet']):>17} {percentiles(r['loaded']):>22} "
              f"{r['quiet_err'] + r['loaded_err']:>7} {r['peak']:>8.0f} "
              f"{','.join(map(str, sorted(set(r['heavy'])))):>14} {r['heavy_s']:>8.1f} {r['big']!s:>9} "
              f"{r['big_s']:>6.1f}")
    before, after = rows
    print(f"after/before: peak RSS growth x{after['peak'] / max(before['peak'], 1):.2f}, small p99 under load "
          f"x{np.percentile(after['loaded'] or [0], 99) / max(np.percentile(before['loaded'] or [1], 99), 1e-9):.2f}, "
          f"64-image request time x{after['big_s'] / max(before['big_s'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
