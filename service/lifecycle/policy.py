"""Which versions of a model to serve: TF Serving's model version policy (latest N, all, specific).

``IMGCLF_VERSION_POLICY`` names one policy for every model: ``latest`` (the
newest version; the default), ``latest:N`` (the N newest), ``all``, or
``specific:1,3``. A model config file (:mod:`imgclf.service.lifecycle.config_file`)
gives each model its own. The registry applies :meth:`VersionPolicy.select`
to the complete versions on disk at every poll.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.errors import UsageError

LATEST, ALL, SPECIFIC = "latest", "all", "specific"
SYNTAX = "latest, latest:N, all or specific:V1,V2,..."
MAX_VERSION = 10**18 - 1  # 18 digits, as the routes parse versions


@dataclass(frozen=True)
class VersionPolicy:
    """A model version policy: ``kind`` latest (the ``count`` newest), all, or specific (``versions``)."""

    kind: str = LATEST
    count: int = 1  # latest: how many of the newest versions
    versions: tuple[int, ...] = ()  # specific: exactly these, when on disk

    def __post_init__(self):
        if self.kind not in (LATEST, ALL, SPECIFIC):
            raise ValueError(f"version policy must be {LATEST}, {ALL} or {SPECIFIC}; received {self.kind!r}")
        if self.kind == LATEST and self.count < 1:
            raise ValueError(f"latest needs at least 1 version; received {self.count}")
        if self.kind == SPECIFIC and not self.versions:
            raise ValueError("specific needs at least one version")

    def select(self, available: list[int]) -> list[int]:
        """Return the versions of ``available`` (complete versions on disk) this policy serves, oldest first."""
        ordered = sorted(set(available))
        if self.kind == ALL:
            return ordered
        if self.kind == LATEST:
            return ordered[-self.count:]
        wanted = set(self.versions)
        return [v for v in ordered if v in wanted]

    def describe(self) -> str:
        """Return the policy in the syntax of ``IMGCLF_VERSION_POLICY``."""
        if self.kind == LATEST:
            return LATEST if self.count == 1 else f"{LATEST}:{self.count}"
        if self.kind == ALL:
            return ALL
        return f"{SPECIFIC}:{','.join(map(str, self.versions))}"


def parse_policy(raw: str, name: str = "IMGCLF_VERSION_POLICY") -> VersionPolicy:
    """Return the policy ``raw`` spells (``latest``, ``latest:N``, ``all``, ``specific:1,3``), or raise UsageError."""
    text = raw.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    try:
        if kind == LATEST:
            return VersionPolicy(LATEST, count=_version_number(rest) if sep else 1)
        if kind == ALL and not sep:
            return VersionPolicy(ALL)
        if kind == SPECIFIC and sep:
            versions = tuple(sorted({_version_number(item) for item in rest.split(",")}))
            return VersionPolicy(SPECIFIC, versions=versions)
    except ValueError as exc:
        raise UsageError(f"{name}={raw!r} is not a version policy ({SYNTAX}): {exc}") from None
    raise UsageError(f"{name}={raw!r} is not a version policy; use {SYNTAX}")


def _version_number(text: str) -> int:
    """Return a positive version number (or count) written in ``text``, else raise ValueError."""
    item = text.strip()
    if not item.isdigit() or len(item) > 18 or int(item) < 1:
        raise ValueError(f"{item!r} is not a positive whole number")
    return int(item)


def policies_for(names: list[str], default: VersionPolicy, pinned: dict[str, int]) -> dict[str, VersionPolicy]:
    """Return each model's policy: ``default``, or specific:V for a model pinned in ``IMGCLF_MODEL_VERSIONS``."""
    return {name: VersionPolicy(SPECIFIC, versions=(int(pinned[name]),)) if name in pinned else default
            for name in names}
