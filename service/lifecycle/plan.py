"""What a worker should serve: each model's directory, version policy and labels, from the config or the disk.

With a model config file (:mod:`imgclf.service.lifecycle.config_file`) the models
are the ones it lists; without one, every model of the repository, each with
``IMGCLF_VERSION_POLICY`` (or ``specific:V`` where ``IMGCLF_MODEL_VERSIONS``
pins V). The registry plans again at every poll without a config file, so a
model published later is served too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.core.errors import ModelNotFound
from imgclf.core.repository import integer_dirs, is_complete, list_models
from imgclf.service.lifecycle.policy import SPECIFIC, VersionPolicy, parse_policy, policies_for

if TYPE_CHECKING:  # the settings tree imports the parsers of this layer: a type only, no cycle
    from imgclf.service.settings import ServingSettings


@dataclass
class ModelPlan:
    """What to serve of one model: where its versions are, which of them, and its version labels."""

    model_dir: Path
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: dict[str, int] = field(default_factory=dict)

    def on_disk(self) -> list[int]:
        """Return the complete versions in the model's directory, oldest first."""
        return sorted(v for v, path in integer_dirs(self.model_dir).items() if is_complete(path))

    def selected(self) -> list[int]:
        """Return the versions on disk the policy serves, oldest first."""
        return self.policy.select(self.on_disk())

    def why_none(self, name: str) -> str:
        """Say why the policy of model ``name`` selects no version on disk."""
        on_disk = self.on_disk()
        if self.policy.kind == SPECIFIC:
            missing = ", ".join(str(v) for v in self.policy.versions if v not in on_disk)
            return (f"model {name!r} has no version {missing} in {self.model_dir}; "
                    f"versions: {', '.join(map(str, on_disk)) or 'none'}")
        return f"model {name!r} has no complete version in {self.model_dir}"


def plan_models(config: ServingSettings, old: dict[str, ModelPlan] | None = None) -> dict[str, ModelPlan]:
    """Return the models to serve, by name: the config file's (read with the settings), else the repository's."""
    repo = config.model_repository
    if config.model_config_file:
        return {m.name: ModelPlan(m.model_dir(repo), m.policy, dict(m.labels))
                for m in config.model_config}  # read once, by the settings
    available = list_models(repo) if repo.is_dir() else {}
    policies = policies_for(sorted(available), parse_policy(config.version_policy), config.model_versions)
    old = old or {}
    return {name: old.get(name) or ModelPlan(repo / name, policy) for name, policy in policies.items()}


def check_plan(config: ServingSettings, plans: dict[str, ModelPlan]) -> None:
    """Refuse pinned versions of models that are not there, and a default model that is not served.

    Raises:
        ModelNotFound: saying which models there are.
    """
    repo = config.model_repository
    unknown = sorted(set(config.model_versions) - set(plans))
    if unknown:
        raise ModelNotFound(f"pinned model(s) {', '.join(unknown)} not in {repo}")
    default = config.default_model
    if default and default not in plans:  # else every /predict without a model name would 404
        raise ModelNotFound(f"the default model {default!r} (IMGCLF_DEFAULT_MODEL) is not in {repo}; "
                            f"served models: {', '.join(sorted(plans)) or 'none'}")
