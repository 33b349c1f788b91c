"""Benchmark: normal requests under hostile clients, before (gunicorn on the port) and after (`imgclf serve`).

For each of the two servers, in one run, on the same tiny model (the tests' small graph with the 2015
interface, trained once into bench/out/hostile-models; decoding dominates a request, as with real photos):

* **before**: gunicorn straight on the port, the shipped gunicorn config (what `imgclf serve` ran before
  the front), ``IMGCLF_MAX_REQUEST_PIXELS=0`` (no per-request pixel budget, where that setting exists);
* **after**: the shipped `imgclf serve` command (the front, gunicorn behind it), default settings.

Both: 2 workers × 8 threads. The phases, each bounded in time:

1. no attack;
2. 200 connections sending a request head one byte every 2 s (reopened when the server closes one);
3. a 64-client flood: 64 closed-loop clients sending POST /predict as fast as they are answered;
4. 8 worst-case amplification requests at once: a 13.6 MB ``:predict`` body of 64 copies of a ~160 KB
   PNG that decodes to 7000×7000 (built here), under the per-image pixel and instance limits.

In every phase a probe sends normal POST /predict requests (a 5 KB JPEG) from 4 clients for
``--phase-seconds``, each with a 5 s timeout (a hang counts as an error at 5 s, it does not stall the run).
Prints one table: probe requests, errors, p50/p99 latency (errors count at their elapsed time), the
workers' peak RSS, and after/before ratios. The last phase leaves the servers busy for minutes, so each
server is killed after it.

Then the front's scenarios (issue 27), against a fresh `imgclf serve`, each with the probe before, during
and after one attack, and the front's RSS (at the end of each phase, and its peak):

* **connection hog**: 1000 connections that send nothing, from 127.0.0.2-5 (250 each, the default
  per-address limit; together every slot), each reopened as soon as the front closes it (after 0.5 s
  when refused);
* **large bodies to a 404**: 4 closed-loop clients POSTing 5 MB to ``/v1/models/nobody:predict`` (gunicorn
  answers 404 before reading the body), with the count of each status they got.

Then the floods of issue 27, each against one `imgclf serve` (default settings), with the probe's p50
and p99 before, during and after the flood (the before window is the baseline, in the same run):

* **v2 element flood**: 16 clients each sending, again and again, a v2 BYTES tensor of 250,000 one-byte
  elements (1.25 MB, binary form): over the instance limit, a 400 that must come before any element is read;
* **output-name flood**: 16 clients each sending a v2 request that names 60,000 outputs (1.2 MB).

The flood requests' own answers (status, median time) are printed too. The whole run takes about
9 minutes (``--front-only``: the front's scenarios alone, about 2; ``--floods-only``: the floods alone,
about 2); not a test, no assertions.

    python -m bench.hostile [--phase-seconds 12] [--front-only] [--floods-only]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from imgclf.service.cli import serve as serve_cli
from imgclf.service.server import launch
from tests.support.processes import children_of, free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
MODEL = "shapes"
PROBE_TIMEOUT_S = 5.0
PROBE_CLIENTS = 4
SLOW_HEADERS = 200
FLOOD_CLIENTS = 64
AMPLIFIERS = 8
READY_WITHIN_S = 120


def train_model(model_dir: Path) -> Path:
    """Return the model repository, training the tiny model once (the tests' small 2015-interface graph)."""
    from imgclf.core.repository import list_versions
    from imgclf.featurizer.images.demo import write_demo_images
    from imgclf.featurizer.runtime.featurizer import FeaturizerConfig
    from imgclf.training.gate import GateConfig
    from imgclf.training.train_job import TrainJob, run_train
    from tests.support.legacy_graph import write_legacy_graph

    if not list_versions(model_dir, MODEL):
        print("training the benchmark model (once) ...", flush=True)
        graph = write_legacy_graph(OUT / "hostile-legacy.pb")
        images = write_demo_images(OUT / "hostile-images", per_class=8)
        # What is served matters here, not how well: 8 photos a class cannot pass the publish gate.
        run_train(TrainJob(image_dir=images, featurizer=FeaturizerConfig(graph, precision="fp32"),
                           cache=OUT / "hostile-features.sqlite", model_dir=model_dir, name=MODEL, progress=False,
                           gate=GateConfig(publish="always")))
    return model_dir


def small_jpeg() -> bytes:
    """Return a 320×240 photo-like JPEG (about 5 KB): the normal request."""
    rng = np.random.default_rng(3)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((320, 240), Image.BICUBIC)
    buffer = io.BytesIO()
    coarse.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def amplification_body() -> bytes:
    """Return the 13.6 MB :predict body: 64 copies of a ~160 KB PNG that decodes to 7000×7000."""
    path = OUT / "hostile-7000.png"
    if not path.exists():
        rng = np.random.default_rng(0)
        # Flat colour with sparse noise: deflate squeezes 147 MB of pixels into about 160 KB.
        pixels = np.full((7000, 7000, 3), 120, dtype=np.uint8)
        rows, cols = rng.integers(0, 7000, 300), rng.integers(0, 7000, 300)
        pixels[rows, cols] = rng.integers(0, 256, (300, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, "PNG", optimize=False, compress_level=9)
    b64 = base64.b64encode(path.read_bytes()).decode()
    return json.dumps({"instances": [{"b64": b64}] * 64}).encode()


@dataclass
class Probe:
    """Latencies of the normal requests of one phase."""

    latencies: list[float] = field(default_factory=list)  # every request, errors at their elapsed time
    errors: int = 0
    first_error: str = ""

    def row(self) -> tuple[int, int, float, float]:
        ms = np.percentile(np.asarray(self.latencies) * 1000, [50, 99]) if self.latencies else [np.nan] * 2
        return len(self.latencies), self.errors, float(ms[0]), float(ms[1])


def probe(url: str, jpeg: bytes, seconds: float) -> Probe:
    """Send normal POST /predict requests from PROBE_CLIENTS clients for ``seconds``."""
    result, lock = Probe(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = requests.post(url + "/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")},
                                         timeout=PROBE_TIMEOUT_S)
                ok, why = response.status_code == 200, f"HTTP {response.status_code}"
            except requests.RequestException as e:
                ok, why = False, type(e).__name__
            with lock:
                result.latencies.append(time.perf_counter() - started)
                if not ok:
                    result.errors += 1
                    result.first_error = result.first_error or why

    threads = [threading.Thread(target=client, daemon=True) for _ in range(PROBE_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + PROBE_TIMEOUT_S + 5)
    return result


class Background:
    """An attack running in a thread of its own until stopped."""

    def __init__(self, target, *args) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=target, args=(*args, self.stop), daemon=True)
        self.thread.start()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(15)


def slow_headers(port: int, stop: threading.Event) -> None:
    """Keep SLOW_HEADERS connections sending a request head one byte every 2 s; reopen those the server closes."""
    head = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Padding: slowloris\r\n" * 4 + b"\r\n"

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                for byte in head:
                    if stop.is_set() or reader.at_eof():
                        break
                    writer.write(bytes([byte]))
                    await writer.drain()
                    try:
                        if await asyncio.wait_for(reader.read(4096), 2.0) == b"":
                            break  # the server closed it: open another
                    except TimeoutError:
                        pass
            except OSError:
                pass
            finally:
                writer.close()

    async def main() -> None:
        tasks = [asyncio.ensure_future(one()) for _ in range(SLOW_HEADERS)]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()

    asyncio.run(main())


def flood(url: str, jpeg: bytes, answered: list[int], stop: threading.Event) -> None:
    """Run FLOOD_CLIENTS closed-loop clients sending POST /predict until stopped; count 200s in ``answered``."""
    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(url + "/predict", files={"image": ("a.jpg", jpeg, "image/jpeg")},
                                            timeout=10)
                    answered[0] += response.status_code == 200
                except requests.RequestException:
                    pass

    threads = [threading.Thread(target=client, daemon=True) for _ in range(FLOOD_CLIENTS)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(12)


def amplify(url: str, body: bytes, stop: threading.Event) -> None:
    """Send AMPLIFIERS worst-case :predict requests at once (each waits for its answer until stopped)."""
    def client() -> None:
        try:
            requests.post(f"{url}/v1/models/{MODEL}:predict", data=body, timeout=600,
                          headers={"Content-Type": "application/json"})
        except requests.RequestException:
            pass

    for _ in range(AMPLIFIERS):
        threading.Thread(target=client, daemon=True).start()
    stop.wait()


def peak_rss_mb(pid: int, out: list[float], stop: threading.Event) -> None:
    """Record the largest RSS (MB) of any process under ``pid`` until stopped."""
    while not stop.wait(0.2):
        pids, rss = children_of(pid), 0.0
        pids += [p for child in pids for p in children_of(child)]
        for p in pids:
            try:
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        rss = max(rss, int(line.split()[1]) / 1024)
            except OSError:
                pass
        out[0] = max(out[0], rss)


def cpu_seconds(pids: list[int]) -> float:
    """Return the user + system CPU seconds the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Server:
    """`imgclf serve` (``front``) or gunicorn alone on a free port, on ``model_dir``."""

    def __init__(self, model_dir: Path, front: bool, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = serve_cli.serve_env(model_dir, bind=f"127.0.0.1:{self.port}", workers=2, threads=8)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if not front:
            env["IMGCLF_MAX_REQUEST_PIXELS"] = "0"  # the budget off, where the setting exists
        self.log = log
        argv = serve_cli.front_argv() if front else launch.gunicorn_argv()
        with open(log, "wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited; see {self.log}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"not ready within {READY_WITHIN_S} s; see {self.log}")

    def kill(self) -> None:
        """Kill the whole process group (the front, gunicorn, its workers): the last phase left them busy."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)


PHASES = ("no attack", f"{SLOW_HEADERS} slow-header connections", f"{FLOOD_CLIENTS}-client flood",
          f"{AMPLIFIERS} amplification requests")


def run_case(model_dir: Path, front: bool, jpeg: bytes, body: bytes, seconds: float) -> dict[str, tuple]:
    """Run every phase against one server; return {phase: (sent, errors, p50 ms, p99 ms, peak RSS MB)}."""
    name = "after" if front else "before"
    server = Server(model_dir, front, OUT / f"hostile-{name}.log")
    rows = {}
    try:
        server.wait_ready()
        probe(server.url, jpeg, 2.0)  # warm the workers
        for phase in PHASES:
            rss = [0.0]
            watch = Background(peak_rss_mb, server.process.pid, rss)
            attack = None
            if phase.endswith("slow-header connections"):
                attack = Background(slow_headers, server.port)
                time.sleep(2.0)  # the connections are open and holding what they hold
            elif phase.endswith("flood"):
                answered = [0]
                master = children_of(server.process.pid)[0] if front else server.process.pid
                fronts, workers = ([server.process.pid] if front else []), children_of(master)
                cpu0 = cpu_seconds(fronts), cpu_seconds(workers), answered[0]
                attack = Background(flood, server.url, jpeg, answered)
                time.sleep(1.0)
            elif phase.endswith("amplification requests"):
                attack = Background(amplify, server.url, body)
                time.sleep(2.0)  # the bodies are uploaded and decoding
            result = probe(server.url, jpeg, seconds)
            if attack is not None:
                attack.end()
            watch.end()
            if phase.endswith("flood"):
                n = answered[0] - cpu0[2] + len(result.latencies) - result.errors
                rows["cpu"] = (1000 * (cpu_seconds(fronts) - cpu0[0]) / n, 1000 * (cpu_seconds(workers) - cpu0[1]) / n)
                print(f"  {name:<6} CPU per request in the flood: front {rows['cpu'][0]:.2f} ms, gunicorn workers "
                      f"{rows['cpu'][1]:.2f} ms ({n} requests)", flush=True)
            rows[phase] = (*result.row(), rss[0])
            sent, errors, p50, p99 = result.row()
            note = f" (first error: {result.first_error})" if result.first_error else ""
            print(f"  {name:<6} {phase:<34} {sent:>5} sent {errors:>4} errors  p50 {p50:8.1f} ms  "
                  f"p99 {p99:8.1f} ms  peak RSS {rss[0]:7.0f} MB{note}", flush=True)
            if attack is not None and not phase.endswith("amplification requests"):
                time.sleep(1.0)  # let the server settle before the next phase
    finally:
        server.kill()
    return rows





# --- The front's scenarios (issue 27): one attack each, normal requests before, during and after it ---------

HOG_CONNECTIONS = 1000
HOG_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 6))  # 250 each: the default per-address limit, all 1000 slots
HOG_RETRY_S = 0.5  # after a 429/503 the hog waits this long; after a silent close it reopens at once
BIG_BODY_BYTES = 5_000_000
BIG_BODY_CLIENTS = 4


def connection_hog(port: int, counts: dict, stop: threading.Event) -> None:
    """Hold HOG_CONNECTIONS connections that send nothing, from HOG_ADDRESSES; reopen each one the server closes."""
    async def one(address: str) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
            except OSError:
                counts["connect errors"] += 1
                await asyncio.sleep(HOG_RETRY_S)
                continue
            counts["held"] += 1
            try:
                answer = await reader.read(64)  # until the server refuses (an answer) or closes it (nothing)
            except OSError:
                answer = b""
            finally:
                counts["held"] -= 1
                writer.close()
            counts["refused" if answer else "closed"] += 1
            if answer:
                await asyncio.sleep(HOG_RETRY_S)

    async def hold() -> None:
        tasks = [asyncio.ensure_future(one(HOG_ADDRESSES[i % len(HOG_ADDRESSES)])) for i in range(HOG_CONNECTIONS)]
        while not stop.is_set():
            counts["most held"] = max(counts["most held"], counts["held"])
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(hold())


def big_bodies_to_404(url: str, counts: dict, stop: threading.Event) -> None:
    """Run BIG_BODY_CLIENTS closed-loop clients POSTing BIG_BODY_BYTES to a model that does not exist."""
    body = b"x" * BIG_BODY_BYTES

    def client() -> None:
        while not stop.is_set():
            try:
                status = requests.post(f"{url}/v1/models/nobody:predict", data=body, timeout=30,
                                       headers={"Content-Type": "application/json"}).status_code
            except requests.RequestException as e:
                status = type(e).__name__
            counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(BIG_BODY_CLIENTS)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(35)


def rss_mb(pid: int) -> float:
    """Return the RSS of process ``pid`` in MB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_of(pid: int, out: list[float], stop: threading.Event) -> None:
    """Record the largest RSS (MB) of process ``pid`` until stopped."""
    while not stop.wait(0.1):
        out[0] = max(out[0], rss_mb(pid))


FRONT_SCENARIOS = {
    f"connection hog: {HOG_CONNECTIONS} silent connections from {len(HOG_ADDRESSES)} addresses, reopened":
        lambda server, counts: Background(connection_hog, server.port, counts),
    f"{BIG_BODY_CLIENTS} clients sending {BIG_BODY_BYTES / 1e6:.0f} MB bodies to an unknown model (404)":
        lambda server, counts: Background(big_bodies_to_404, server.url, counts),
}


def run_front_scenarios(model_dir: Path, jpeg: bytes, seconds: float) -> list[tuple]:
    """Run each of FRONT_SCENARIOS against `imgclf serve`; return rows (scenario, phase, probe row, RSS, counts)."""
    server = Server(model_dir, True, OUT / "hostile-front-scenarios.log")
    rows = []
    try:
        server.wait_ready()
        probe(server.url, jpeg, 2.0)  # warm the workers
        print(f"  the front's RSS at rest: {rss_mb(server.process.pid):.0f} MB", flush=True)
        for scenario, start_attack in FRONT_SCENARIOS.items():
            counts: dict = {"held": 0, "most held": 0, "refused": 0, "closed": 0, "connect errors": 0}
            for phase in ("before", "during", "after"):
                peak = [0.0]
                watch = Background(peak_of, server.process.pid, peak)
                attack = start_attack(server, counts) if phase == "during" else None
                if attack is not None:
                    time.sleep(3.0)  # the connections are open, the bodies on their way
                result = probe(server.url, jpeg, seconds)
                if attack is not None:
                    attack.end()
                    time.sleep(2.0)  # the server closes what the attack left
                watch.end()
                shown = {k: v for k, v in counts.items() if v and k != "held"} if phase == "during" else {}
                rows.append((scenario, phase, result.row(), rss_mb(server.process.pid), peak[0], shown))
                sent, errors, p50, p99 = result.row()
                note = f" (first error: {result.first_error})" if result.first_error else ""
                print(f"  {scenario[:40]:<40} {phase:<6} {sent:>5} sent {errors:>4} errors  p50 {p50:8.1f} ms  "
                      f"p99 {p99:8.1f} ms  front RSS {rows[-1][3]:5.0f} MB (peak {peak[0]:5.0f}){note} {shown or ''}",
                      flush=True)
    finally:
        server.kill()
    return rows


def report_front_scenarios(rows: list[tuple]) -> None:
    """Print the front's scenarios as one table, each phase's p50 and p99 also as a ratio to its "before"."""
    print("\n| scenario | phase | sent / errors | p50 ms | p99 ms | p50, p99 / before | front RSS MB (end, peak) "
          "| the attack's requests |")
    print("|---|---|---|---|---|---|---|---|")
    before = {}
    for scenario, phase, (sent, errors, p50, p99), rss, peak, counts in rows:
        before.setdefault(scenario, (p50, p99))
        b50, b99 = before[scenario]
        outcome = ", ".join(f"{k}: {v}" for k, v in counts.items())
        print(f"| {scenario} | {phase} | {sent} / {errors} | {p50:.0f} | {p99:.0f} | {p50 / b50:.2f}, {p99 / b99:.2f} "
              f"| {rss:.0f}, {peak:.0f} | {outcome} |")


FLOOD_SENDERS = 16
FLOOD_ELEMENTS = 250_000
FLOOD_OUTPUTS = 60_000


def element_flood_request(url: str) -> tuple[str, bytes, dict]:
    """Return the v2 element flood's request: a binary BYTES tensor of FLOOD_ELEMENTS one-byte elements."""
    blob = b"".join([b"\x01\x00\x00\x00x"] * FLOOD_ELEMENTS)
    header = json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [FLOOD_ELEMENTS],
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    return (f"{url}/v2/models/{MODEL}/infer", header + blob,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})


def output_flood_request(url: str, jpeg: bytes) -> tuple[str, bytes, dict]:
    """Return the output-name flood's request: one good image, FLOOD_OUTPUTS requested output names."""
    body = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(jpeg).decode()]}],
            "outputs": [{"name": f"output-{i}"} for i in range(FLOOD_OUTPUTS)]}
    return f"{url}/v2/models/{MODEL}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}


def send_flood(request: tuple[str, bytes, dict], answers: list, stop: threading.Event) -> None:
    """Run FLOOD_SENDERS clients sending ``request`` again and again until stopped; record (status, seconds)."""
    url, body, headers = request

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    status = session.post(url, data=body, headers=headers, timeout=60).status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                answers.append((status, time.perf_counter() - started))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(FLOOD_SENDERS)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(65)


FLOODS = ("v2 element flood", "output-name flood")


def run_floods(model_dir: Path, jpeg: bytes, seconds: float) -> dict[str, dict[str, tuple]]:
    """Run each flood against one `imgclf serve`: the probe before, during and after; return the rows."""
    server = Server(model_dir, True, OUT / "hostile-floods.log")
    rows: dict[str, dict[str, tuple]] = {}
    try:
        server.wait_ready()
        probe(server.url, jpeg, 2.0)  # warm the workers
        for flood_name in FLOODS:
            request = (element_flood_request(server.url) if flood_name == "v2 element flood"
                       else output_flood_request(server.url, jpeg))
            rows[flood_name] = {"before": probe(server.url, jpeg, seconds).row()}
            answers: list = []
            attack = Background(send_flood, request, answers)
            time.sleep(1.0)
            rows[flood_name]["during"] = probe(server.url, jpeg, seconds).row()
            attack.end()
            time.sleep(1.0)
            rows[flood_name]["after"] = probe(server.url, jpeg, seconds).row()
            statuses = sorted({str(status) for status, _ in answers})
            median = float(np.median([t for _, t in answers]) * 1000) if answers else float("nan")
            rows[flood_name]["flood"] = (len(answers), ", ".join(statuses), median, len(request[1]))
            print(f"  {flood_name}: {len(answers)} flood requests of {len(request[1]) / 1e6:.2f} MB answered "
                  f"{', '.join(statuses)} in {median:.0f} ms (median)", flush=True)
            for when in ("before", "during", "after"):
                sent, errors, p50, p99 = rows[flood_name][when]
                print(f"    probe {when:<6} {sent:>5} sent {errors:>4} errors  p50 {p50:8.1f} ms  p99 {p99:8.1f} ms",
                      flush=True)
    finally:
        server.kill()
    return rows


def print_floods(rows: dict[str, dict[str, tuple]]) -> None:
    """Print the floods' table: the probe before / during / after, and during/before ratios."""
    print("\n| flood | flood requests (answers, median ms, body MB) | probe p50 ms before / during / after "
          "| p99 ms before / during / after | during/before p50, p99 | probe errors during |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        b, d, a, f = row["before"], row["during"], row["after"], row["flood"]
        print(f"| {name} | {f[0]} ({f[1]}, {f[2]:.0f} ms, {f[3] / 1e6:.2f} MB) | {b[2]:.0f} / {d[2]:.0f} / {a[2]:.0f} "
              f"| {b[3]:.0f} / {d[3]:.0f} / {a[3]:.0f} | {d[2] / b[2]:.2f}, {d[3] / b[3]:.2f} | {d[1]} |")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=12.0, help="how long the probe runs in each phase")
    parser.add_argument("--front-only", action="store_true", help="run only the front's scenarios (connection "
                                                                  "hog, large bodies to an unknown model)")
    parser.add_argument("--floods-only", action="store_true", help="run only the floods of issue 27")
    args = parser.parse_args()
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = train_model(OUT / "hostile-models")
    if args.front_only:
        report_front_scenarios(run_front_scenarios(model_dir, small_jpeg(), args.phase_seconds))
        print(f"whole run {time.monotonic() - started:.0f} s")
        return
    if args.floods_only:
        jpeg = small_jpeg()
        print(f"{os.cpu_count()} cores; model {MODEL} (tiny graph); probe: {PROBE_CLIENTS} clients, POST /predict "
              f"{len(jpeg) / 1000:.0f} KB JPEG, {args.phase_seconds:g} s per window; {FLOOD_SENDERS} flood clients",
              flush=True)
        print_floods(run_floods(model_dir, jpeg, args.phase_seconds))
        print(f"whole run {time.monotonic() - started:.0f} s")
        return
    jpeg, body = small_jpeg(), amplification_body()
    print(f"{os.cpu_count()} cores; model {MODEL} (tiny graph); probe: {PROBE_CLIENTS} clients, POST /predict "
          f"{len(jpeg) / 1000:.0f} KB JPEG, {PROBE_TIMEOUT_S:g} s timeout, {args.phase_seconds:g} s per phase; "
          f"amplification body {len(body) / 1e6:.1f} MB; 2 workers x 8 threads", flush=True)
    results = {front: run_case(model_dir, front, jpeg, body, args.phase_seconds) for front in (False, True)}

    print("\n| phase | before: sent / errors | p50 ms | p99 ms | after: sent / errors | p50 ms | p99 ms "
          "| after/before p50, p99 | peak worker RSS MB before / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in PHASES:
        b, a = results[False][phase], results[True][phase]
        print(f"| {phase} | {b[0]} / {b[1]} | {b[2]:.0f} | {b[3]:.0f} | {a[0]} / {a[1]} | {a[2]:.0f} | {a[3]:.0f} "
              f"| {a[2] / b[2]:.2f}, {a[3] / b[3]:.2f} | {b[4]:.0f} / {a[4]:.0f} |")
    base_b, base_a = results[False][PHASES[0]], results[True][PHASES[0]]
    cpu = results[True]["cpu"]
    print(f"\nthe front's CPU per request in the flood: {cpu[0]:.2f} ms beside the workers' {cpu[1]:.2f} ms "
          f"({cpu[0] / cpu[1]:.1%}); before, the workers' {results[False]['cpu'][1]:.2f} ms")
    print(f"the front's overhead with no attack: p50 {base_a[2] / base_b[2]:.2f}x, p99 {base_a[3] / base_b[3]:.2f}x "
          f"(after / before)")
    report_front_scenarios(run_front_scenarios(model_dir, jpeg, args.phase_seconds))
    print_floods(run_floods(model_dir, jpeg, args.phase_seconds))
    print(f"whole run {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
