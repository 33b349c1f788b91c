"""The client's section of the settings: what `imgclf predict --url` sends to a service."""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.core.settings import Section, setting


@dataclass(frozen=True)
class ClientSettings(Section):
    """Settings of imgclf as a client of a service (an environment variable, not an option: ps shows those)."""

    api_key: str = setting("", "the API key `imgclf predict --url` sends (Authorization: Bearer), for a service "
                               "with a keys file", secret=True)
