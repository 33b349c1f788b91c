"""Which ``tf.distribute`` strategy a training run uses, and this process's role in it.

* ``default``: TensorFlow's default strategy (one device, no distribution).
* ``mirrored``: ``MirroredStrategy`` over every local GPU (or the CPU). On a CPU
  machine ``cpu_devices=N`` (``--cpu-devices``, or ``IMGCLF_CPU_DEVICES``) splits
  the CPU into N logical devices first, so mirroring can be tried without GPUs.
* ``multiworker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``,
  or by a cluster file in the curriculum's format (YAML)::

      job_name: worker                 # only "worker": parameter servers are not supported
      worker_hosts: [host1:2222, host2:2222]   # or "host1:2222,host2:2222"
      ps_hosts: []                     # ignored
      task_id: 0                       # this process's index in worker_hosts; 0 is the chief

Devices and the multi-worker runtime can only be configured before TensorFlow
runs its first op, so :func:`make_strategy` must come first in a process.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from imgclf.core import settings
from imgclf.core.errors import ImgclfError
from imgclf.models.config import STRATEGIES

log = logging.getLogger(__name__)

ENV_CPU_DEVICES = "IMGCLF_CPU_DEVICES"


class DistributeError(ImgclfError, ValueError):
    """A strategy setting is malformed or cannot be applied in this process."""


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster (a single process is the chief of a cluster of one)."""

    task_type: str | None = None
    task_id: int = 0
    num_workers: int = 1
    has_chief_job: bool = False  # TF_CONFIG names a "chief" task (else worker 0 is the chief)

    @property
    def is_chief(self) -> bool:
        """Return whether this process writes the export, the logs and the real checkpoints."""
        return self.task_type in (None, "chief") or (self.task_type == "worker" and self.task_id == 0
                                                     and not self.has_chief_job)


def cpu_devices_from_env(value: int | None) -> int | None:
    """Return ``value``, else ``IMGCLF_CPU_DEVICES`` as an integer, else None."""
    if value is not None:
        return value
    return settings.env_int(ENV_CPU_DEVICES, None, minimum=1)


def split_cpu(count: int) -> None:
    """Split the first CPU into ``count`` logical devices (before TensorFlow initialises).

    Raises:
        DistributeError: ``count`` < 1, or TensorFlow already runs with another number of CPU devices.
    """
    import tensorflow as tf

    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DistributeError(f"cpu_devices must be an integer >= 1; received {count!r}")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise DistributeError(f"cannot split the CPU into {count} devices: TensorFlow is already running "
                                  f"with {have} (set --cpu-devices in a fresh process)") from None


def read_cluster(path: str | Path) -> dict:
    """Read a curriculum cluster file and return the equivalent ``TF_CONFIG`` dict.

    Raises:
        FileNotFoundError: no file at ``path``.
        DistributeError: it is not valid YAML, lacks a field, asks for a parameter server,
            or ``task_id`` is not an index into ``worker_hosts``.
    """
    import yaml

    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no cluster file at {str(path)!r}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DistributeError(f"{str(path)!r} is not a YAML cluster file: {exc}") from exc
    if not isinstance(spec, dict):
        raise DistributeError(f"{str(path)!r} must be a mapping with job_name, worker_hosts and task_id; "
                              f"received {type(spec).__name__}")
    missing = [k for k in ("job_name", "worker_hosts", "task_id") if k not in spec]
    if missing:
        raise DistributeError(f"{str(path)!r} lacks {', '.join(missing)} (expected job_name, worker_hosts, "
                              f"ps_hosts, task_id)")
    job = spec["job_name"]
    if job == "ps":
        raise DistributeError(f"{str(path)!r} asks for a parameter server (job_name: ps): parameter-server "
                              f"training is not supported; run every process as job_name: worker, which "
                              f"trains with --strategy multiworker (synchronous all-reduce)")
    if job != "worker":
        raise DistributeError(f"job_name in {str(path)!r} must be 'worker'; received {job!r}")
    hosts = _hosts(spec["worker_hosts"], path)
    task_id = spec["task_id"]
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(hosts):
        raise DistributeError(f"task_id in {str(path)!r} must be an index into worker_hosts (0 to "
                              f"{len(hosts) - 1}); received {task_id!r}")
    if _hosts(spec.get("ps_hosts") or [], path):
        log.warning("ps_hosts in %s are ignored: multi-worker training needs no parameter servers", path)
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": task_id}}


def _hosts(value, path: Path) -> list[str]:
    hosts = [h.strip() for h in value.split(",") if h.strip()] if isinstance(value, str) else value
    if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h for h in hosts):
        raise DistributeError(f"hosts in {str(path)!r} must be a list (or comma-separated string) of "
                              f"host:port; received {value!r}")
    return hosts


def _tf_config_from_env() -> dict:
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise DistributeError("--strategy multiworker needs the cluster: set TF_CONFIG "
                              "('{\"cluster\": {\"worker\": [...]}, \"task\": {\"type\": \"worker\", "
                              "\"index\": 0}}') or pass --cluster cluster.yml")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        _ = config["task"]["type"], config["task"]["index"]  # both must be there
    except (ValueError, KeyError, TypeError) as exc:
        raise DistributeError(f"TF_CONFIG is not a cluster description with cluster.worker and task "
                              f"type/index ({type(exc).__name__}: {exc})") from exc
    if config["cluster"].get("ps"):
        raise DistributeError("TF_CONFIG names parameter servers (cluster.ps): parameter-server training is "
                              "not supported; use workers only (--strategy multiworker)")
    if not isinstance(workers, list) or not workers:
        raise DistributeError(f"TF_CONFIG cluster.worker must be a non-empty list; received {workers!r}")
    return config


def make_strategy(name: str, cluster: str | Path | None = None, cpu_devices: int | None = None):
    """Create the strategy ``name`` and return it with this process's :class:`WorkerRole`.

    Args:
        name: "default", "mirrored" or "multiworker".
        cluster: multiworker only: a cluster file (see the module docstring); default ``TF_CONFIG``.
        cpu_devices: split the CPU into this many logical devices first (default ``IMGCLF_CPU_DEVICES``).

    Raises:
        DistributeError: an unknown strategy, a cluster file without multiworker, a bad cluster,
            or devices that can no longer be configured.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise DistributeError(f"strategy must be one of {', '.join(STRATEGIES)}; received {name!r}")
    if cluster is not None and name != "multiworker":
        raise DistributeError(f"--cluster describes a multi-worker cluster; it needs --strategy multiworker "
                              f"(received --strategy {name})")
    count = cpu_devices_from_env(cpu_devices)
    if count is not None:
        split_cpu(count)
    if name == "default":
        return tf.distribute.get_strategy(), WorkerRole()
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return strategy, WorkerRole()
    config = read_cluster(cluster) if cluster is not None else _tf_config_from_env()
    spec = tf.train.ClusterSpec(config["cluster"])
    task_type, task_id = config["task"]["type"], int(config["task"]["index"])
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=task_type, task_id=task_id, rpc_layer="grpc")
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    jobs = config["cluster"]
    role = WorkerRole(task_type, task_id, sum(len(jobs.get(j, [])) for j in ("chief", "worker")),
                      has_chief_job=bool(jobs.get("chief")))
    log.info("multi-worker training: %s %d of %d workers%s", task_type, task_id, role.num_workers,
             " (chief)" if role.is_chief else "")
    return strategy, role
