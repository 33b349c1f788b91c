"""Where TensorFlow runs: GPU memory, device pinning and placement logging, set once per process.

:func:`configure_tensorflow` must run before the process builds its first
graph, session or eager tensor: GPU memory options can only be set before
TensorFlow initialises its devices. :mod:`imgclf.featurizer.graph.load` calls it before
every session it creates and :mod:`imgclf.service.servables.runtime` before loading models;
calling it again is free and returns the same :class:`DeviceSettings`.

The ``IMGCLF_*`` variables of :class:`DeviceSettings` (read here, by the featurizer and by the service,
whose settings tree hands its device section over with :func:`use_settings`):

* ``IMGCLF_GPU_MEMORY_LIMIT_MB`` — unset: *memory growth* on every visible GPU,
  so a process takes GPU memory as it needs it and several gunicorn workers
  share one card. Set: each GPU of this process becomes one logical device of
  at most that many MiB (a hard cap, useful to size workers per card).
* ``IMGCLF_DEVICE`` — unset: TensorFlow's own placement (the first GPU when
  one is visible, else the CPU). ``/gpu:N`` or ``/cpu:0``: every op of the
  featurizer graphs and of the served SavedModels is pinned there; ops without
  a kernel on that device (``DecodeJpeg`` on a GPU) fall back to the CPU
  (soft placement stays on). A device the process does not have is an error
  at startup that lists the devices it does have.
* ``IMGCLF_LOG_DEVICE_PLACEMENT=1`` — TensorFlow prints the device of every op
  (``name: (Op): /job:localhost/replica:0/task:0/device:GPU:0`` on stdout)
  of the featurizer's v1 sessions, and of eager ops and ``tf.function`` s
  (the served SavedModels) — those only when this runs before TensorFlow's
  first op, as it does in the service and the CLI.
* ``IMGCLF_CPU_DEVICES=N`` — the secondary models' ``tf.distribute`` setup
  splits the CPU into N logical devices (:mod:`imgclf.training.distribute`).

TensorFlow itself is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass

from imgclf.core import tf_private
from imgclf.core.errors import UsageError
from imgclf.core.settings import ENV_CPU_DEVICES, Env, Section, env_str, parsed, read_values, setting

log = logging.getLogger(__name__)

ENV_DEVICE = "IMGCLF_DEVICE"
ENV_GPU_MEMORY_LIMIT_MB = "IMGCLF_GPU_MEMORY_LIMIT_MB"
ENV_LOG_DEVICE_PLACEMENT = "IMGCLF_LOG_DEVICE_PLACEMENT"

_DEVICE_SPEC = re.compile(r"/?(?:device:)?(cpu|gpu)(?::(\d+))?", re.IGNORECASE)


class DeviceError(UsageError):
    """A device setting is malformed, names a device this process lacks, or came too late (exit status 2)."""


def _parse_device(name: str, raw: str) -> str:
    return canonical_device(raw)


@dataclass(frozen=True)
class DeviceSettings(Section):
    """The device settings of this process (see the module docstring)."""

    device: str = setting("", "pin the featurizer and served models to /gpu:N or /cpu:0 (unset: TensorFlow's "
                              "placement, the first GPU, else the CPU)", env=ENV_DEVICE, parse=_parse_device)
    gpu_memory_limit_mb: int = setting(0, "cap each process at this many MiB per GPU (unset: memory growth, "
                                          "taken as needed)", minimum=1)
    log_device_placement: bool = setting(False, "print the device of every op on stdout")
    cpu_devices: int = setting(0, "split the CPU into this many logical devices for the secondary models' "
                                  "tf.distribute setup (unset: not split)", env=ENV_CPU_DEVICES, minimum=1)
    device_spec: str = parsed("")  # IMGCLF_DEVICE as written, for messages

    @classmethod
    def from_env(cls, env: Env | None = None, **overrides) -> DeviceSettings:
        """Read and check the ``IMGCLF_*`` device variables of ``env`` (default: the process environment).

        Raises:
            DeviceError: a variable is malformed (the settings' own message).
        """
        try:
            values = read_values(cls, env, overrides)
        except DeviceError:
            raise
        except UsageError as exc:  # the settings' own message, as the device error callers catch
            raise DeviceError(str(exc)) from None
        values.setdefault("device_spec", env_str(ENV_DEVICE, env=env))
        return cls(**values)

    @property
    def device_type(self) -> str:
        """Return "CPU" or "GPU" for a pinned device, "" when placement is TensorFlow's."""
        return self.device.split(":")[1] if self.device else ""

    @property
    def device_index(self) -> int:
        """Return N of a pinned /device:TYPE:N (0 when none is pinned)."""
        return int(self.device.rsplit(":", 1)[1]) if self.device else 0


@dataclass(frozen=True)
class ComputeTarget:
    """The device the models of this process compute on, as far as precision is concerned."""

    kind: str  # "cpu" | "gpu"
    device: str  # "/device:GPU:0", "/device:CPU:0"
    compute_capability: tuple[int, int] | None = None  # GPUs only, e.g. (8, 6); None where TF does not say
    name: str = ""  # the GPU's name where TensorFlow reports it, e.g. "NVIDIA H100 80GB HBM3"

    def describe(self) -> str:
        """Return e.g. "/device:GPU:0 (NVIDIA A10, compute capability 8.6)"."""
        if self.kind != "gpu":
            return self.device
        cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "unknown"
        return f"{self.device} ({self.name + ', ' if self.name else ''}compute capability {cc})"


def canonical_device(spec: str) -> str:
    """Return ``spec`` ("/gpu:0", "GPU", "/device:CPU:0", ...) as TensorFlow's "/device:GPU:0" form.

    Raises:
        DeviceError: ``spec`` is not a CPU or GPU device name.
    """
    match = _DEVICE_SPEC.fullmatch(spec.strip())
    if not match:
        raise DeviceError(f"{ENV_DEVICE}={spec!r} is not a device; use /gpu:N or /cpu:0")
    return f"/device:{match.group(1).upper()}:{int(match.group(2) or 0)}"


_lock = threading.Lock()
_settings: DeviceSettings | None = None
_handed: DeviceSettings | None = None  # what use_settings() gave, for the first configure_tensorflow()


def use_settings(settings: DeviceSettings) -> None:
    """Hand this process's device settings over, read once (the service's settings tree reads them).

    The first :func:`configure_tensorflow` applies them instead of reading the environment
    again; once TensorFlow is configured this changes nothing.
    """
    global _handed
    _handed = settings


def configure_tensorflow(env=None) -> DeviceSettings:
    """Apply the device settings to this process once, before TensorFlow initialises its devices; return them.

    The settings are those of ``env`` when given, else those :func:`use_settings` handed
    over, else the process environment's. Later calls return the settings of the first
    successful one (``env`` is then ignored). A call that fails (unknown device, bad variable) leaves the process
    unconfigured, so the next call fails the same way.

    Raises:
        DeviceError: a variable is malformed, ``IMGCLF_DEVICE`` names a device this
            process lacks (the message lists those it has), or a GPU memory limit
            was asked for after TensorFlow had already initialised the GPUs.
    """
    global _settings
    if _settings is not None:
        return _settings
    with _lock:
        if _settings is not None:
            return _settings
        settings = DeviceSettings.from_env(env) if env is not None or _handed is None else _handed
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")  # does not initialise the devices
        _configure_gpu_memory(tf, gpus, settings.gpu_memory_limit_mb)  # setting it again as it is: a no-op
        # Soft placement is TensorFlow's eager default; said explicitly because a pinned GPU needs it:
        # DecodeJpeg and friends have CPU kernels only.
        tf.config.set_soft_device_placement(True)
        if settings.log_device_placement:
            if _runtime_started():
                log.warning("%s=1 comes after TensorFlow started: eager ops and tf.functions of this process "
                            "will not be logged (featurizer sessions still are); configure_tensorflow() must "
                            "run first", ENV_LOG_DEVICE_PLACEMENT)
            tf.debugging.set_log_device_placement(True)
        if settings.device:
            _check_device(tf, settings)
        _settings = settings
        memory = (f"memory limit {settings.gpu_memory_limit_mb} MiB each" if settings.gpu_memory_limit_mb
                  else "memory growth") if gpus else "none"
        log.info("TensorFlow devices: GPUs %s (%s); placement %s%s", ", ".join(g.name for g in gpus) or "-",
                 memory, f"pinned to {settings.device}" if settings.device else "by TensorFlow",
                 ", logged" if settings.log_device_placement else "")
        return settings


def _configure_gpu_memory(tf, gpus: list, limit_mb: int) -> None:
    for gpu in gpus:
        try:
            if limit_mb:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # TensorFlow initialised (or split) its GPUs before this call
            if limit_mb:
                raise DeviceError(f"{ENV_GPU_MEMORY_LIMIT_MB}={limit_mb} cannot be applied to {gpu.name}: "
                                  f"TensorFlow had already initialised the GPUs of this process ({exc}); "
                                  "imgclf.core.devices.configure_tensorflow() must run first") from exc
            log.warning("GPU memory growth not set on %s: TensorFlow had already initialised it (%s); this "
                        "process may hold the whole card", gpu.name, exc)


def _runtime_started() -> bool:
    """Return whether TensorFlow's eager runtime already exists (its first op or device listing has run)."""
    return tf_private.eager_runtime_started()


def available_devices() -> list[str]:
    """Return the logical devices of this process ("/device:CPU:0", "/device:GPU:0", ...)."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices()]


def _check_device(tf, settings: DeviceSettings) -> None:
    names = [d.name for d in tf.config.list_logical_devices()]  # initialises the devices: after the memory setup
    if settings.device not in names:
        hint = ""
        if settings.device_type == "GPU" and os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            hint = f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
        raise DeviceError(f"{ENV_DEVICE}={settings.device_spec or settings.device!r} ({settings.device}) names no "
                          f"device of this process{hint}; available: {', '.join(names) or 'none'}")


def settings() -> DeviceSettings:
    """Return this process's settings, configuring TensorFlow first if that has not happened yet."""
    return configure_tensorflow()


def compute_target() -> ComputeTarget:
    """Return the device the featurizer and served models compute on: the pinned one, else TensorFlow's choice.

    TensorFlow's choice is the first GPU when one is visible, else the CPU.
    """
    current = configure_tensorflow()
    if current.device_type == "CPU":
        return ComputeTarget("cpu", current.device)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return ComputeTarget("cpu", "/device:CPU:0")
    index = min(current.device_index, len(gpus) - 1)  # one logical device per visible GPU, in order
    details = tf.config.experimental.get_device_details(gpus[index]) or {}
    capability = details.get("compute_capability")
    return ComputeTarget("gpu", f"/device:GPU:{index}",
                         tuple(int(v) for v in capability) if capability else None,
                         str(details.get("device_name", "")))


def device_scope(device: str | None = None):
    """Return ``tf.device(device)`` (default: the pinned device), or a no-op when none is pinned.

    ``tf.device`` is thread-local: enter it in the thread that builds the graph or calls the model.
    """
    device = settings().device if device is None else device
    if not device:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.device(device)


def session_gpu_options():
    """Return the GPUOptions TensorFlow's own context uses (memory growth, memory limits, visible GPUs).

    A v1 session given its own ConfigProto ignores the context's settings, and
    whichever initialises a GPU first fixes its allocator: featurizer sessions
    copy these so that both agree.
    """
    return tf_private.eager_gpu_options()


def reset_for_tests() -> None:
    """Forget the settings so the next :func:`configure_tensorflow` reads the environment again (tests only).

    Placement logging is switched off again; GPU memory options, once applied, stay.
    """
    global _settings, _handed
    with _lock:
        if _settings is not None and _settings.log_device_placement:
            import tensorflow as tf

            tf.debugging.set_log_device_placement(False)
        _settings = _handed = None


__all__ = [
    "ComputeTarget", "DeviceError", "DeviceSettings", "ENV_DEVICE", "ENV_GPU_MEMORY_LIMIT_MB",
    "ENV_LOG_DEVICE_PLACEMENT", "available_devices", "canonical_device", "compute_target",
    "configure_tensorflow", "device_scope", "reset_for_tests", "session_gpu_options", "settings", "use_settings",
]
