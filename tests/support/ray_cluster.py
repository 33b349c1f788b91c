"""A real two-node Ray cluster on 127.0.0.1 for the Ray engine's system tests.

`ray start --head --block` and a second `ray start --address=HEAD --block` (a
second raylet joining the first: two nodes), each in its own process group, each
with its own ports (explicit free ports; worker ports from a range of their own),
a private temp dir and a small object store. ``stop()`` ends exactly these two
process groups (SIGTERM, then SIGKILL); it never runs `ray stop`, which would
end every Ray process on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 2**20


class RayCluster:
    """A head node and one worker node, started with ``env`` (e.g. the S3 server's AWS_* variables)."""

    def __init__(self, env: dict[str, str], cpus_per_node: int = 2):
        # RAY_AUTH_MODE=disabled: a throw-away cluster on 127.0.0.1; drivers get the same variable (driver_env).
        self.driver_env = {**env, "RAY_AUTH_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.env = {**os.environ, **self.driver_env, "RAY_DISABLE_USAGE_STATS": "1"}
        self.temp_dir = tempfile.mkdtemp(prefix="imgclf-ray-", dir="/tmp")  # unix socket paths must stay short
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.cpus_per_node = cpus_per_node
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _node_args(self, worker_ports: int) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus_per_node),
                "--object-store-memory", str(OBJECT_STORE_BYTES), "--node-manager-port", str(free_port()),
                "--object-manager-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 499),
                "--disable-usage-stats", "--block"]

    def _spawn(self, args: list[str]) -> None:
        log = Path(self.temp_dir) / f"node{len(self.procs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(subprocess.Popen([RAY, "start", *args], env=self.env, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, timeout: float = 90) -> RayCluster:
        """Start both nodes and wait until the cluster lists two alive nodes (on failure, stop what started)."""
        try:
            self._spawn(["--head", "--port", str(self.port), "--temp-dir", self.temp_dir, "--include-dashboard",
                         "false", "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                         *self._node_args(20000)])
            self._wait_for_port(timeout)
            self._spawn(["--address", self.address, *self._node_args(20500)])
            self._wait_for_nodes(2, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, timeout: float) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Ray node exited: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"the Ray head did not listen on {self.address} in {timeout} s: {self.tail()}")

    def _wait_for_nodes(self, count: int, timeout: float) -> None:
        probe = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
                 "deadline = time.monotonic() + float(sys.argv[3])\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:\n"
                 "    time.sleep(0.5)\n"
                 "sys.exit(sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]))")
        run = subprocess.run([sys.executable, "-c", probe, self.address, str(count), str(timeout)], env=self.env,
                             capture_output=True, text=True, timeout=timeout + 60)
        if run.returncode != 0:
            raise RuntimeError(f"the Ray cluster did not reach {count} alive node(s): {run.stderr[-800:]} "
                               f"{self.tail()}")

    def tail(self) -> str:
        """Return the end of the nodes' logs (for failure messages)."""
        return " | ".join(log.read_text(errors="replace")[-800:] for log in self.logs if log.exists())

    def processes_titled(self, title: str) -> list[int]:
        """Return the pids of this machine's processes whose command line starts with ``title`` (Ray sets
        ``ray::<actor class>`` as a worker's title), among the descendants of this cluster's nodes."""
        mine = set()
        frontier = [p.pid for p in self.procs]
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        while frontier:
            pid = frontier.pop()
            for child in children.get(pid, []):
                if child not in mine:
                    mine.add(child)
                    frontier.append(child)
        found = []
        for pid in sorted(mine):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(title):
                found.append(pid)
        return found

    def stop(self) -> None:
        """End both nodes' process groups (SIGTERM, then SIGKILL) and remove the temp dir."""
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(10)
        time.sleep(1)  # let the raylets' workers notice and exit before their sockets go away
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group start_new_session made for this node: its raylet, GCS, workers
    except ProcessLookupError:
        pass
