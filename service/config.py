"""The service's settings: defaults, then ``IMGCLF_*`` environment variables, then explicit overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from imgclf.core.errors import UsageError
from imgclf.core.precision import PRECISIONS
from imgclf.featurizer.image_io import DEFAULT_MAX_PIXELS

ENV_PREFIX = "IMGCLF_"


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
    load_in_background: bool = True  # load models in a thread: /healthz answers at once, /readyz when loaded
    # Load models whose SavedModel holds ops outside imgclf's inference allow-list (file, process, network
    # ops; imgclf.core.op_policy). A model is a program: only for repositories whose every model you trust.
    # Off: such a model fails the worker's loading, and /readyz says which ops and where.
    allow_unsafe_ops: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> ServiceConfig:
        """Build a config from defaults, then ``IMGCLF_*`` variables of ``env``, then ``overrides``."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update(overrides)
        config = cls(**values)
        config.model_repository = Path(config.model_repository)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError on a setting out of range, naming the variable."""
        for name in ("max_upload_bytes", "max_pixels", "max_instances", "top_k", "batch_max_size"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{ENV_PREFIX}{name.upper()} must be at least 1; received {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"{ENV_PREFIX}PRECISION must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}; "
                             f"received {self.precision!r}")
        if self.font and not os.path.isfile(self.font):
            raise UsageError(f"{ENV_PREFIX}FONT={self.font!r} is not a font file")
        if not 0 <= float(self.batch_max_wait_ms) <= 10_000:
            raise UsageError(f"{ENV_PREFIX}BATCH_MAX_WAIT_MS must be between 0 and 10000; "
                             f"received {self.batch_max_wait_ms!r}")


def _parse(name: str, kind, raw: str):
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise UsageError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "dict":
            pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
            return {key.strip(): int(value) for key, value in pairs}
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError as exc:
        raise UsageError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from exc
