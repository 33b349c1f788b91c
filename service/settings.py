"""The service's settings: defaults, then ``IMGCLF_*`` environment variables, then explicit overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from imgclf.core import settings
from imgclf.core.errors import UsageError
from imgclf.core.precision import PRECISIONS
from imgclf.featurizer.images.decode import DEFAULT_MAX_PIXELS
from imgclf.service.access.settings import AccessSettings
from imgclf.service.lifecycle.config_file import read_model_config
from imgclf.service.lifecycle.policy import parse_policy
from imgclf.training.serving_backend import SERVING_BACKENDS

ENV_PREFIX = settings.PREFIX


@dataclass
class ServiceConfig:
    """Everything `create_app` needs; each field can be set by the env variable IMGCLF_<FIELD NAME>."""

    model_repository: Path = Path("models")  # TF-Serving layout: <repo>/<name>/<version>/
    # Model for POST /predict without ?model= ("" = the first image classifier by name, else the first model).
    default_model: str = ""
    model_versions: dict = field(default_factory=dict)  # pinned versions, env "flowers=3,pets=1"
    max_upload_bytes: int = 20 * 1024 * 1024  # request bodies above this get 413
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above this get 413, checked before decoding
    max_instances: int = 64  # images or rows in one TF-Serving request (64 images ≈ 70 MB of inputs)
    top_k: int = 5  # labels returned when the request does not say
    batching: bool = True  # gather concurrent requests of a worker into one model call
    batch_max_size: int = 32  # images per model call at most
    batch_max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    font: str = ""  # font file for annotated images ("" = IMGCLF_FONT or a system font)
    # Serving precision: auto = on a GPU of compute capability >= 7.0 fp16 (grappler's auto mixed
    # precision), else on a CPU with AMX/AVX512_BF16 bf16 (oneDNN rewrites the models' graphs; ~5x faster
    # on such CPUs, probabilities within ~1e-2), else fp32. Process-wide. The device itself, GPU memory
    # and placement logging: IMGCLF_DEVICE etc., read by imgclf.core.devices.
    precision: str = "auto"
    # What runs the image classifiers' featurizer (imgclf.training.serving_backend): card = the backend and
    # precision the model card names (TensorFlow for cards older than backends), tensorflow, openvino, auto.
    backend: str = "card"
    load_in_background: bool = True  # load models in a thread: /healthz answers at once, /readyz when loaded
    # Load models whose SavedModel holds ops outside imgclf's inference allow-list (file, process, network
    # ops; imgclf.core.op_policy). A model is a program: only for repositories whose every model you trust.
    # Off: such a model fails the worker's loading, and /readyz says which ops and where.
    allow_unsafe_ops: bool = False
    # --- hostile clients (issue 15): work budgets, access control, cross-site requests --------------------
    # Decoded pixels of all the images of one request, read from their headers before any decoding (0 = off).
    # 150 MP is about 1-4 s of decoding on one core for PNG, 0.4-1.2 s for JPEG (README, Security).
    max_request_pixels: int = 150_000_000
    # Decoded pixels in flight in one worker (0 = off): a request's decode waits while others hold the rest.
    # A decode holds about 11 bytes per pixel at its peak (README, Security): 100 MP ~ 1.2 GB above idle.
    max_decode_pixels_in_flight: int = 100_000_000
    decode_wait_seconds: float = 30.0  # a decode waiting longer than this for the gate answers 503
    api_keys_file: str = ""  # "" = no keys needed; else lines "name:sha256:<hex>" (`imgclf api-key NAME`)
    metrics_keys: str = ""  # names of keys (of the keys file) that alone may read /metrics; "" = any key
    rate_limit: str = ""  # per key and worker, e.g. "10/s", "600/min" ("" = none); needs api_keys_file
    rate_burst: int = 0  # requests a key may send at once (0 = the rate's count: "600/min" -> 600)
    cors_origins: str = ""  # other origins whose browser pages may call the API: "https://a.example,..." or "*"
    # Model lifecycle (imgclf.service.lifecycle.manager): look for new and removed versions this often (0: never; as TF
    # Serving's file_system_poll_wait_seconds); which versions to serve: latest, latest:N, all, specific:1,3;
    # or a model config file (TF Serving's model_config_list text format) naming the models, their policies
    # and labels (only the models it lists are served; IMGCLF_VERSION_POLICY and IMGCLF_MODEL_VERSIONS
    # must then stay unset).
    poll_seconds: float = 30.0
    version_policy: str = "latest"
    model_config_file: str = ""

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> ServiceConfig:
        """Build a config from defaults, then ``IMGCLF_*`` variables of ``env``, then ``overrides``.

        Raises:
            UsageError: a variable is not of its field's type (a boolean not a yes or a no, ...) or out of range.
        """
        values = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = settings.raw_value(name, env)  # unset or empty: the default
            if raw is not None:
                values[f.name] = _PARSERS.get(str(f.type), _as_str)(name, raw)
        values.update(overrides)
        config = cls(**values)
        config.model_repository = Path(config.model_repository)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise UsageError on a setting out of range (overrides included), naming the variable."""
        for name in ("max_upload_bytes", "max_pixels", "max_instances", "top_k", "batch_max_size"):
            settings.check_range(f"{ENV_PREFIX}{name.upper()}", int(getattr(self, name)), minimum=1)
        if self.precision not in PRECISIONS:
            raise UsageError(f"{ENV_PREFIX}PRECISION must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}; "
                             f"received {self.precision!r}")
        if self.backend not in SERVING_BACKENDS:
            raise UsageError(f"{ENV_PREFIX}BACKEND must be one of {', '.join(SERVING_BACKENDS)}; "
                             f"received {self.backend!r}")
        if self.font and not os.path.isfile(self.font):
            raise UsageError(f"{ENV_PREFIX}FONT={self.font!r} is not a font file")
        settings.check_range(f"{ENV_PREFIX}BATCH_MAX_WAIT_MS", float(self.batch_max_wait_ms), 0, 10_000)
        for name in ("max_request_pixels", "max_decode_pixels_in_flight", "rate_burst"):
            settings.check_range(f"{ENV_PREFIX}{name.upper()}", int(getattr(self, name)), minimum=0)
        settings.check_range(f"{ENV_PREFIX}DECODE_WAIT_SECONDS", float(self.decode_wait_seconds), 0, 3600)
        AccessSettings.from_config(self)  # the keys file is read: a bad one is one clear error at start
        self.validate_lifecycle()

    def validate_lifecycle(self) -> None:
        """Raise UsageError on a bad poll interval, version policy or model config file (with its line)."""
        settings.check_range(f"{ENV_PREFIX}POLL_SECONDS", float(self.poll_seconds), 0, 86_400)
        parse_policy(str(self.version_policy), f"{ENV_PREFIX}VERSION_POLICY")
        if self.model_config_file:
            if self.version_policy.strip().lower() != "latest" or self.model_versions:
                raise UsageError(f"{ENV_PREFIX}MODEL_CONFIG_FILE names each model's versions; leave "
                                 f"{ENV_PREFIX}VERSION_POLICY and {ENV_PREFIX}MODEL_VERSIONS unset with it")
            read_model_config(os.path.expanduser(self.model_config_file))


def _as_str(name: str, raw: str) -> str:
    return raw


# Field type (as annotated) -> the settings parser for its variable; any other type is a string.
_PARSERS = {"bool": settings.parse_bool, "int": settings.parse_int, "float": settings.parse_float,
            "dict": settings.parse_versions, "Path": settings.parse_path}
