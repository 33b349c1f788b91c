"""`imgclf serve`: the real gunicorn with two workers, metrics summed over both, a clean SIGTERM."""

from __future__ import annotations

import glob
import importlib
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from imgclf.service.cli import serve as serve_cli
from imgclf.service.cli.main import main
from imgclf.service.server import launch
from tests.support.processes import children_of, free_port

READY_WITHIN_S = 90
STOP_WITHIN_S = 30


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    tmp: Path  # TMPDIR of the server: its metrics directory is made here
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics_dir(self) -> Path:
        found = glob.glob(str(self.tmp / "imgclf-metrics-*"))
        assert len(found) == 1, (found, self.log_text())
        return Path(found[0])




def scrape(url: str) -> list:
    """Return the samples of one GET /metrics (a new connection: either worker may answer)."""
    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())




def maps_tensorflow(pid: int) -> bool:
    """Return whether a TensorFlow shared library is mapped into process ``pid``."""
    return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = serve_cli.serve_env(model_repo, bind=f"127.0.0.1:{port}", workers=2, threads=4)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the conf makes a fresh one, under TMPDIR
    env.update(TMPDIR=str(tmp), IMGCLF_GRACEFUL_TIMEOUT="10", IMGCLF_BATCH_MAX_WAIT_MS="2")
    log = tmp / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.gunicorn_argv(), env=env, cwd=tmp, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", tmp, log)
    try:
        wait_until_both_workers_are_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_until_both_workers_are_ready(server: Server) -> None:
    """Poll until /readyz answers 200 and /metrics shows a load time from each of the two workers."""
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"gunicorn exited early:\n{server.log_text()}"
        try:
            ready = requests.get(server.url + "/readyz", timeout=5)
            if ready.status_code == 200:
                # one series per live worker (multiprocess mode "liveall" adds a pid label)
                pids = {s.labels["pid"] for s in scrape(server.url) if s.name == "imgclf_model_load_seconds"}
                if len(pids) == 2:
                    return
        except requests.ConnectionError:
            pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(f"both workers not ready within {READY_WITHIN_S} s:\n{server.log_text()}")


def per_worker_predictions(metrics_dir: Path) -> dict[int, float]:
    """Return {worker pid: POST /predict requests it counted}, read from each worker's own file."""
    counts = {}
    for path in glob.glob(str(metrics_dir / "counter_*.db")):
        pid = int(Path(path).stem.split("_")[1])
        samples = [s for m in MultiProcessCollector.merge([path]) for s in m.samples]
        counts[pid] = total(samples, "imgclf_requests_total", route="/predict", method="POST")
    return counts


def test_metrics_are_summed_over_both_workers(server, model_repo):
    image = sorted((model_repo.parent / "images" / "sunsets").glob("*.jpg"))[0].read_bytes()

    def predict(_):
        # a new connection each time, so the two workers share the requests
        response = requests.post(server.url + "/predict", files={"image": ("a.jpg", image, "image/jpeg")},
                                 headers={"Connection": "close"}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in {"bubbles", "checkers", "stripes", "sunsets"}

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # bounded: until both workers have answered some
            list(pool.map(predict, range(16)))
            sent += 16
            counts = per_worker_predictions(server.metrics_dir())
            if sum(1 for n in counts.values() if n > 0) == 2:
                break
    assert sum(1 for n in counts.values() if n > 0) == 2, counts
    assert sum(counts.values()) == sent
    for _ in range(6):  # whichever worker answers the scrape reports both workers' requests
        samples = scrape(server.url)
        assert total(samples, "imgclf_requests_total", route="/predict", method="POST", status="200") == sent
        assert total(samples, "imgclf_request_seconds_count", route="/predict") == sent
        # one image per request, plus each worker's one-image warm-up
        assert total(samples, "imgclf_batch_size_sum", model="shapes") == sent + 2
        assert total(samples, "imgclf_batch_max_size") == 32


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_the_master_never_loads_tensorflow(server):
    workers = children_of(server.process.pid)
    assert len(workers) == 2, workers
    assert all(maps_tensorflow(pid) for pid in workers)  # the check does see TensorFlow where it is
    assert not maps_tensorflow(server.process.pid)
    assert "tensorflow is imported in the gunicorn master" not in server.log_text()


def test_sigterm_stops_gunicorn_cleanly(server):  # runs last: it stops the module's server
    metrics_dir = server.metrics_dir()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn still running {STOP_WITHIN_S} s after SIGTERM:\n{server.log_text()}")
    log = server.log_text()
    assert code == 0, log
    assert "Shutting down: Master" in log and "Traceback" not in log, log
    assert "Control socket" not in log  # one per-user path: concurrent servers would clash on it
    assert not metrics_dir.exists()  # the conf removes the directory it made


def test_serve_with_an_empty_repository_suggests_the_demo(tmp_path, capsys):
    assert main(["serve", "--model-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"no model in {tmp_path}" in err and "imgclf demo --serve" in err


@pytest.mark.parametrize("front", ["", "0"])
def test_serve_execs_the_front_or_gunicorn_with_the_options_as_environment(model_repo, monkeypatch, front):
    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.delenv("IMGCLF_THREADS", raising=False)
    monkeypatch.setenv("IMGCLF_FRONT", front)  # empty: the default (the front)
    assert main(["serve", "--model-dir", str(model_repo), "--bind", "0.0.0.0:9000", "--workers", "3"]) == 0
    (path, argv, env), = calls
    assert path == sys.executable
    conf = str(Path(launch.__file__).with_name("gunicorn_conf.py"))
    if front:  # IMGCLF_FRONT=0: gunicorn alone on the address
        assert argv == [sys.executable, "-P", "-m", "gunicorn", "-c", conf, "imgclf.service:create_app()"]
    else:  # the front, which starts that same gunicorn command behind it
        assert argv == [sys.executable, "-P", "-m", "imgclf.service.front.main"]
    assert env["IMGCLF_MODEL_REPOSITORY"] == str(model_repo.resolve())
    assert (env["IMGCLF_BIND"], env["IMGCLF_WORKERS"]) == ("0.0.0.0:9000", "3") and "IMGCLF_THREADS" not in env
    assert "IMGCLF_ALLOW_UNSAFE_OPS" not in env


def test_serve_passes_allow_unsafe_ops_to_the_workers(model_repo, monkeypatch):
    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda path, argv, env: calls.append(env))
    monkeypatch.setenv("IMGCLF_ALLOW_UNSAFE_OPS", "0")  # recorded, so the test's own setting is undone after it
    assert main(["serve", "--model-dir", str(model_repo), "--allow-unsafe-ops"]) == 0
    assert calls[0]["IMGCLF_ALLOW_UNSAFE_OPS"] == "1"


def test_gunicorn_behind_the_front_serves_the_fronts_channel(monkeypatch):
    import imgclf.service.server.gunicorn_conf as conf

    monkeypatch.setenv("IMGCLF_BIND", "unix:/tmp/x/gunicorn.sock")
    monkeypatch.setenv("IMGCLF_FRONT_CHANNEL", "1")  # what the front sets for the gunicorn it starts
    conf = importlib.reload(conf)
    assert conf.worker_class == "imgclf.service.server.channel.ChannelWorker"
    monkeypatch.delenv("IMGCLF_FRONT_CHANNEL")
    importlib.reload(conf)


def test_gthread_behind_a_proxy_of_ones_own_takes_one_request_per_connection_and_thread(monkeypatch):
    import imgclf.service.server.gunicorn_conf as conf

    monkeypatch.setenv("IMGCLF_BIND", "unix:/tmp/x/gunicorn.sock")
    monkeypatch.setenv("IMGCLF_THREADS", "6")
    conf = importlib.reload(conf)
    assert (conf.keepalive, conf.worker_connections) == (0, 6)  # a busy worker leaves new requests to the others
    monkeypatch.setenv("IMGCLF_BIND", "127.0.0.1:8000")
    conf = importlib.reload(conf)
    assert (conf.keepalive, conf.worker_connections) == (2, 1000)  # gunicorn's defaults on a TCP port


def test_gunicorn_settings_come_from_the_environment(monkeypatch):
    import imgclf.service.server.gunicorn_conf as conf

    monkeypatch.setenv("IMGCLF_WORKERS", "3")
    monkeypatch.setenv("IMGCLF_BIND", "0.0.0.0:8080")
    conf = importlib.reload(conf)
    assert (conf.workers, conf.threads, conf.bind, conf.worker_class) == (3, 8, ["0.0.0.0:8080"], "gthread")
    assert conf.preload_app is False and conf.timeout >= 60
    monkeypatch.setenv("IMGCLF_WORKERS", "0")
    with pytest.raises(ValueError, match="IMGCLF_WORKERS must be at least 1"):
        importlib.reload(conf)
    monkeypatch.delenv("IMGCLF_WORKERS")
    monkeypatch.delenv("IMGCLF_BIND")
    importlib.reload(conf)  # leave the module as the environment says
