"""The access section: checked together at start, the keys file read once, each error naming its variable."""

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.access.api_keys import key_line
from imgclf.service.access.settings import AccessSettings, parse_origins
from imgclf.service.settings import Settings


@pytest.fixture()
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(key_line("ci", "k1") + "\n" + key_line("prom", "k2") + "\n")
    return str(path)


def test_the_section_keeps_what_the_settings_name_parsed(keys_file):
    access = Settings.from_env({"IMGCLF_API_KEYS_FILE": keys_file, "IMGCLF_METRICS_KEYS": "prom",
                                "IMGCLF_RATE_LIMIT": "5/s", "IMGCLF_CORS_ORIGINS": "https://A.example/"}).access
    assert set(access.keys) == {"ci", "prom"} and access.metrics_key_names == {"prom"} and access.keys_required
    assert (access.rate.count, access.rate.seconds, access.rate.burst) == (5, 1.0, 5)
    assert access.origins == {"https://a.example"}
    assert not AccessSettings.from_env({}).keys_required and AccessSettings.from_env({}).rate is None


def test_the_keys_file_is_read_once(keys_file, monkeypatch):
    from imgclf.service.access import settings as access_settings

    reads = []
    real = access_settings.read_keys_file
    monkeypatch.setattr(access_settings, "read_keys_file", lambda path: reads.append(path) or real(path))
    Settings.from_env({"IMGCLF_API_KEYS_FILE": keys_file})
    assert reads == [keys_file]


@pytest.mark.parametrize("env, message", [
    ({"IMGCLF_METRICS_KEYS": "prom"}, "IMGCLF_METRICS_KEYS names keys but IMGCLF_API_KEYS_FILE is not set"),
    ({"IMGCLF_RATE_LIMIT": "5/s"}, "IMGCLF_RATE_LIMIT is per API key: set IMGCLF_API_KEYS_FILE too"),
    ({"IMGCLF_CORS_ORIGINS": "https://a.example/path"}, "IMGCLF_CORS_ORIGINS entries are origins"),
    ({"IMGCLF_CORS_ORIGINS": "*, https://a.example"}, "either \\* or a list"),
    ({"IMGCLF_MAX_REQUEST_PIXELS": "-1"}, "IMGCLF_MAX_REQUEST_PIXELS must be at least 0"),
    ({"IMGCLF_DECODE_WAIT_SECONDS": "-1"}, "IMGCLF_DECODE_WAIT_SECONDS must be between 0 and 3600"),
])
def test_bad_settings_are_one_error_naming_the_variable(env, message):
    with pytest.raises(UsageError, match=message):
        Settings.from_env(env)


def test_metrics_keys_must_be_in_the_file(keys_file):
    with pytest.raises(UsageError, match="names 'scraper', not in the keys file; its keys: ci, prom"):
        AccessSettings.from_env({"IMGCLF_API_KEYS_FILE": keys_file, "IMGCLF_METRICS_KEYS": "scraper"})


def test_origins():
    assert parse_origins("http://localhost:3000, https://[::1]:8443,") == {"http://localhost:3000",
                                                                          "https://[::1]:8443"}
    assert parse_origins("*") == {"*"} and parse_origins("") == frozenset()
