"""The service's settings: one typed tree, read once per process, each part handed its section.

:meth:`Settings.from_env` reads every ``IMGCLF_*`` variable (defaults, then the
environment, then the caller's overrides), checks them (a :class:`UsageError` naming
the variable), reads the API-keys file and the model config file once, and keeps
what they hold in the tree. ``create_app`` builds it (or is given it) and hands each
part its section; `imgclf serve` builds it to check everything before it execs
gunicorn. The sections and where they live (each a :class:`imgclf.core.settings.Section`;
a field's variable is ``IMGCLF_<FIELD NAME>`` unless the field states another):

    serving   ServingSettings   here                          models, limits, batching, precision, life cycle
    access    AccessSettings    imgclf.service.access.settings  API keys, rate limit, allowed origins
    server    ServerSettings    imgclf.service.server.settings  gunicorn: bind, workers, threads, ...; upload limit
    front     FrontSettings     imgclf.service.front.settings   the slow-client front's deadlines and limits
    device    DeviceSettings    imgclf.core.devices             device pinning, GPU memory, placement logging
    paths     PathSettings      imgclf.core.paths               IMGCLF_HOME
    client    ClientSettings    imgclf.service.settings         the key `imgclf predict --url` sends

:func:`iter_settings` lists every setting (section, name, variable, type, default,
help): the configuration reference is generated from it.

Standard-library dataclasses, no new dependency, and no Flask: the gunicorn master and
the front import their sections (``server``, ``front``) and must stay light, and the
tree as a whole is imported by `imgclf serve` before it execs them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.core import settings
from imgclf.core.devices import DeviceSettings
from imgclf.core.errors import UsageError
from imgclf.core.paths import DEFAULT_MODEL_REPOSITORY, PathSettings
from imgclf.core.precision import PRECISIONS
from imgclf.core.repository import DEFAULT_MAX_CARD_BYTES, DEFAULT_MAX_MODEL_BYTES
from imgclf.core.settings import Env, Section, SettingInfo, parse_versions, parsed, setting
from imgclf.featurizer.images.decode import DEFAULT_MAX_JPEG_SCAN_PIXELS, DEFAULT_MAX_JPEG_SCANS, DEFAULT_MAX_PIXELS
from imgclf.service.access.settings import AccessSettings
from imgclf.service.front.settings import FrontSettings
from imgclf.service.lifecycle.config_file import ConfigFileError, read_model_config
from imgclf.service.lifecycle.policy import parse_policy
from imgclf.service.server.settings import ServerSettings
from imgclf.training.serving_backend import SERVING_BACKENDS

ENV_PREFIX = settings.PREFIX


@dataclass
class ServingSettings(Section):
    """What the workers serve and how: the section the data plane, the servables and the life cycle read.

    ``current_config()`` (:mod:`imgclf.service.app_settings`) returns it.
    """

    model_repository: Path = setting(DEFAULT_MODEL_REPOSITORY, "the model repository served, <repo>/<name>/<version>/ "
                                                     "(TF Serving's layout)")
    default_model: str = setting("", "model of POST /predict without a model parameter (unset: the first image "
                                     "classifier by name, else the first model)")
    model_versions: dict = setting({}, "pinned versions, e.g. flowers=3,pets=1: the policy specific:3 for flowers "
                                       "only (prefer IMGCLF_VERSION_POLICY or a model config file)",
                                   parse=parse_versions)
    max_pixels: int = setting(DEFAULT_MAX_PIXELS, "images with more pixels get 413, checked from the header "
                                                  "before decoding", minimum=1)
    # 64 images are about 70 MB of inputs.
    max_instances: int = setting(64, "images or rows in one TF-Serving or v2 request at most", minimum=1)
    max_tensors: int = setting(16, "inputs, and requested outputs, one v2 request may name at most (checked before "
                                   "any is read)", minimum=1)
    top_k: int = setting(5, "labels returned when the request does not say", minimum=1)
    batching: bool = setting(True, "gather concurrent requests of a worker into one model call")
    batch_max_size: int = setting(32, "images per model call at most", minimum=1)
    batch_max_wait_ms: float = setting(5.0, "milliseconds the first request of a batch waits for others",
                                       minimum=0, maximum=10_000)
    font: str = setting("", "font file for annotated images (unset: a system font)")
    # Image classifiers flag an input unfamiliar when its unfamiliar_score is above a threshold, which training
    # sets at a 95% true-positive rate on the validation split; another rate moves it, per loaded version,
    # from the validation scores the export keeps (imgclf.training.detector.Detector.threshold_at).
    unfamiliar_tpr: float = setting(0.0, "validation true-positive rate (0-1] that sets each image classifier's "
                                         "unfamiliar threshold; 0: the export's own (set at 0.95)",
                                    minimum=0.0, maximum=1.0)
    # auto = on a GPU of compute capability >= 7.0 fp16 (grappler's auto mixed precision), else on a CPU with
    # AMX/AVX512_BF16 bf16 (oneDNN rewrites the models' graphs; ~5x faster on such CPUs, probabilities within
    # ~1e-2), else fp32. Process-wide.
    precision: str = setting("auto", "serving precision: auto (fp16 on a GPU of compute capability >= 7.0, else "
                                     "bf16 on a CPU with AMX/AVX512_BF16, else fp32), fp32, bf16 or fp16")
    # card = the backend and precision the model card names (TensorFlow for cards older than backends).
    backend: str = setting("card", "what runs the image classifiers' featurizer: card (as the model card says), "
                                   "tensorflow, openvino or auto")
    load_in_background: bool = setting(True, "load models in a thread: /healthz answers at once, /readyz once "
                                             "they are loaded")
    # A model is a program: only for repositories whose every model you trust (imgclf.core.op_policy). Off: such
    # a model fails the worker's loading, and /readyz says which ops and where.
    allow_unsafe_ops: bool = setting(False, "load models whose graphs hold ops outside the inference allow-list "
                                            "(file, process, network ops): only models you trust")
    # --- hostile clients (issue 15): work budgets. 150 MP is about 1-4 s of decoding on one core for PNG,
    # 0.4-1.2 s for JPEG; a decode holds about 11 bytes per pixel at its peak (docs/guides/security.md).
    max_request_pixels: int = setting(150_000_000, "decoded pixels of all the images of one request, from their "
                                                   "headers: more is a 413 before any decoding (0: off)", minimum=0)
    max_decode_pixels_in_flight: int = setting(100_000_000, "pixels a worker decodes at once; a request's decode "
                                                            "waits for room (0: off)", minimum=0)
    decode_wait_seconds: float = setting(30.0, "a decode that waits longer than this for room answers 503",
                                         minimum=0, maximum=3600)
    max_jpeg_scans: int = setting(DEFAULT_MAX_JPEG_SCANS, "scans (SOS markers) a JPEG may hold, counted before "
                                                          "decoding: each one is a pass over every pixel of a "
                                                          "progressive JPEG; more is a 413 (0: off)", minimum=0)
    max_jpeg_scan_pixels: int = setting(DEFAULT_MAX_JPEG_SCAN_PIXELS, "scans times pixels of one JPEG, from its "
                                                                      "markers and header: more is a 413 (0: off)",
                                        minimum=0)
    # --- model life cycle (imgclf.service.lifecycle), TF Serving's vocabulary. The sizes are checked by stat before
    # a version is read: a 2 GB sparse saved_model.pb is refused without costing 2 GB of each worker's memory.
    max_model_bytes: int = setting(DEFAULT_MAX_MODEL_BYTES, "bytes of a version's graph and weights "
                                                            "(saved_model.pb, variables/, openvino/) at most, "
                                                            "checked before reading; more fails its load (0: off)",
                                   minimum=0)
    max_model_card_bytes: int = setting(DEFAULT_MAX_CARD_BYTES, "bytes of a version's model card and of its "
                                                                "labels.txt at most, checked before reading "
                                                                "(0: off)", minimum=0)
    poll_seconds: float = setting(30.0, "how often each worker looks for new and removed versions (0: never; "
                                        "TF Serving's file_system_poll_wait_seconds)", minimum=0, maximum=86_400)
    version_policy: str = setting("latest", "versions served of every model: latest, latest:N, all, specific:1,3")
    model_config_file: str = setting("", "a model config file (TF Serving's model_config_list text format): only "
                                         "the models it lists are served, each with its policy and labels")
    model_config: list | None = parsed(None)  # the model config file's models (ModelConfig), read once

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ServingSettings:
        """Return the section with its choices and life cycle checked and the model config file read.

        Raises:
            UsageError: a precision or backend not in its list, a font that is not a file, a bad version
                policy, or a model config file that is unreadable, invalid (naming its line) or set beside
                IMGCLF_VERSION_POLICY or IMGCLF_MODEL_VERSIONS.
        """
        config = cls(**values)
        config.model_repository = Path(config.model_repository)
        if config.precision not in PRECISIONS:
            raise UsageError(f"{ENV_PREFIX}PRECISION must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}; "
                             f"received {config.precision!r}")
        if config.backend not in SERVING_BACKENDS:
            raise UsageError(f"{ENV_PREFIX}BACKEND must be one of {', '.join(SERVING_BACKENDS)}; "
                             f"received {config.backend!r}")
        if config.font and not os.path.isfile(config.font):
            raise UsageError(f"{ENV_PREFIX}FONT={config.font!r} is not a font file")
        parse_policy(str(config.version_policy), f"{ENV_PREFIX}VERSION_POLICY")
        if config.model_config_file:
            if config.version_policy.strip().lower() != "latest" or config.model_versions:
                raise UsageError(f"{ENV_PREFIX}MODEL_CONFIG_FILE names each model's versions; leave "
                                 f"{ENV_PREFIX}VERSION_POLICY and {ENV_PREFIX}MODEL_VERSIONS unset with it")
            try:
                config.model_config = read_model_config(os.path.expanduser(config.model_config_file))
            except ConfigFileError as exc:
                raise ConfigFileError(f"{ENV_PREFIX}MODEL_CONFIG_FILE: {exc}") from None
        return config


@dataclass(frozen=True)
class ClientSettings(Section):
    """Settings of imgclf as a client of a service (an environment variable, not an option: ps shows those)."""

    api_key: str = setting("", "the API key `imgclf predict --url` sends (Authorization: Bearer), for a service "
                               "with a keys file", secret=True)


# The tree's sections: name -> class, in the order the configuration reference lists them.
SECTIONS: dict[str, type[Section]] = {
    "serving": ServingSettings, "access": AccessSettings, "server": ServerSettings, "front": FrontSettings,
    "device": DeviceSettings, "paths": PathSettings, "client": ClientSettings,
}


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, by section (see the module docstring)."""

    serving: ServingSettings = field(default_factory=ServingSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    front: FrontSettings = field(default_factory=FrontSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    client: ClientSettings = field(default_factory=ClientSettings)

    @classmethod
    def from_env(cls, env: Env | None = None, **overrides: Any) -> Settings:
        """Read every section from ``env`` (default: the process environment); ``overrides`` by field name.

        An override names a field of any section (``model_repository=..., poll_seconds=0,
        api_keys_file=...``): the field names are unique across the tree.

        Raises:
            UsageError: a variable or override is malformed, out of range or at odds with another (naming the
                variable), or a file it names (keys, model config) is unreadable or invalid.
            TypeError: an override names no setting.
        """
        by_section = split_overrides(overrides)
        return cls(**{name: section.from_env(env, **by_section[name]) for name, section in SECTIONS.items()})


def split_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return flat overrides (field name -> value) by section name.

    Raises:
        TypeError: a name that is no field of any section.
    """
    owner = {f.name: name for name, section in SECTIONS.items() for f in dataclasses.fields(section) if f.init}
    unknown = sorted(set(overrides) - set(owner))
    if unknown:
        raise TypeError(f"no setting is called {', '.join(map(repr, unknown))}")
    by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in overrides.items():
        by_section[owner[key]][key] = value
    return by_section


def iter_settings() -> Iterator[SettingInfo]:
    """Yield every setting of the tree: section, field name, variable, type, default and one-line help."""
    for name, section in SECTIONS.items():
        yield from settings.describe(section, name)
