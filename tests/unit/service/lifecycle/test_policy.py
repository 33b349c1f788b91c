"""Version policies: the IMGCLF_VERSION_POLICY syntax, and which versions each one selects."""

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.lifecycle.policy import ALL, LATEST, SPECIFIC, VersionPolicy, parse_policy, policies_for
from imgclf.service.settings import ServingSettings


@pytest.mark.parametrize("raw, policy", [
    ("latest", VersionPolicy(LATEST, 1)),
    (" LATEST ", VersionPolicy(LATEST, 1)),
    ("latest:3", VersionPolicy(LATEST, 3)),
    ("latest: 2", VersionPolicy(LATEST, 2)),
    ("all", VersionPolicy(ALL)),
    ("specific:3,1", VersionPolicy(SPECIFIC, versions=(1, 3))),
    ("specific: 7 , 7", VersionPolicy(SPECIFIC, versions=(7,))),
])
def test_policies_parse(raw, policy):
    assert parse_policy(raw) == policy
    assert parse_policy(policy.describe()) == policy  # describe() writes what parse_policy reads


@pytest.mark.parametrize("raw, message", [
    ("newest", "is not a version policy; use latest, latest:N, all or specific"),
    ("latest:0", "'0' is not a positive whole number"),
    ("latest:-1", "'-1' is not a positive whole number"),
    ("latest:two", "'two' is not a positive whole number"),
    ("all:2", "is not a version policy; use"),
    ("specific", "is not a version policy; use"),
    ("specific:", "'' is not a positive whole number"),
    ("specific:1,,3", "'' is not a positive whole number"),
    ("specific:1.5", "'1.5' is not a positive whole number"),
    ("specific:" + "9" * 19, "is not a positive whole number"),
])
def test_bad_policies_are_named(raw, message):
    with pytest.raises(UsageError, match="IMGCLF_VERSION_POLICY=") as caught:
        parse_policy(raw)
    assert message in str(caught.value)


@pytest.mark.parametrize("policy, available, selected", [
    (VersionPolicy(), [1, 2, 3], [3]),
    (VersionPolicy(LATEST, 2), [3, 1, 2], [2, 3]),
    (VersionPolicy(LATEST, 5), [1, 2], [1, 2]),
    (VersionPolicy(ALL), [2, 1], [1, 2]),
    (VersionPolicy(SPECIFIC, versions=(1, 3)), [1, 2, 3, 4], [1, 3]),
    (VersionPolicy(SPECIFIC, versions=(1, 3)), [2, 3], [3]),  # what is on disk of what it names
    (VersionPolicy(), [], []),
])
def test_select(policy, available, selected):
    assert policy.select(available) == selected


def test_pinned_versions_are_specific_policies():
    policies = policies_for(["a", "b"], VersionPolicy(LATEST, 2), {"b": 3})
    assert policies == {"a": VersionPolicy(LATEST, 2), "b": VersionPolicy(SPECIFIC, versions=(3,))}


def test_the_service_config_checks_the_policy_and_the_poll_interval():
    config = ServingSettings.from_env({"IMGCLF_VERSION_POLICY": "latest:2", "IMGCLF_POLL_SECONDS": "0"})
    assert (config.version_policy, config.poll_seconds) == ("latest:2", 0.0)
    assert ServingSettings.from_env({}).poll_seconds == 30.0
    with pytest.raises(UsageError, match="IMGCLF_VERSION_POLICY='sometimes' is not a version policy"):
        ServingSettings.from_env({"IMGCLF_VERSION_POLICY": "sometimes"})
    with pytest.raises(UsageError, match="IMGCLF_POLL_SECONDS must be between 0 and 86400; received -1.0"):
        ServingSettings.from_env({"IMGCLF_POLL_SECONDS": "-1"})
