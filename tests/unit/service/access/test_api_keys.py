"""The keys file (parse, errors naming the line) and `imgclf api-key` (through the real dispatcher)."""

import hashlib
import json
import stat

import pytest

from imgclf.core.errors import UsageError
from imgclf.service.access import api_keys
from imgclf.service.cli.main import main
from imgclf.service.settings import Settings


def test_line_holds_the_sha256_of_the_key_never_the_key():
    key = api_keys.new_key()
    line = api_keys.key_line("ci", key)
    assert line == "ci:sha256:" + hashlib.sha256(key.encode()).hexdigest() and key not in line
    assert key.startswith("imgclf_") and len(key) > 40 and api_keys.new_key() != key


def test_match_finds_the_key_by_comparing_every_digest():
    keys = api_keys.parse_keys("\n".join(api_keys.key_line(n, f"k-{n}") for n in ("a", "b", "c")))
    assert [api_keys.match(keys, f"k-{n}") for n in "abc"] == ["a", "b", "c"]
    assert api_keys.match(keys, "k-d") is None and api_keys.match(keys, "") is None


@pytest.mark.parametrize("text, message", [
    ("ci:sha256:abc", "line 1: expected name:sha256:<64 hex digits>"),
    ("# c\n\nci sha256 " + "a" * 64, "line 3: expected"),
    ("c i:sha256:" + "a" * 64, "line 1: expected"),
    ("ci:md5:" + "a" * 64, "line 1: expected"),
    (f"ci:sha256:{'a' * 64}\nci:sha256:{'b' * 64}", "line 2: the key name 'ci' is given twice"),
])
def test_malformed_lines_are_named_without_showing_them(text, message):
    with pytest.raises(UsageError, match=message) as raised:
        api_keys.parse_keys(text)
    assert "aaaa" not in str(raised.value)


def test_a_bad_keys_file_is_one_error_at_start(tmp_path):
    with pytest.raises(UsageError, match="cannot be read: No such file or directory"):
        Settings.from_env({"IMGCLF_API_KEYS_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(UsageError, match="holds no key: add one with `imgclf api-key NAME`"):
        Settings.from_env({"IMGCLF_API_KEYS_FILE": str(tmp_path / "empty")})


def test_cli_prints_the_line_and_the_key_once(capsys):
    assert main(["api-key", "ci-runner"]) == 0
    out, err = capsys.readouterr()
    key = err.strip().rsplit(" ", 1)[1]
    assert api_keys.match(api_keys.parse_keys(out), key) == "ci-runner"


def test_cli_appends_to_a_private_file_and_refuses_a_name_twice(tmp_path, capsys):
    path = tmp_path / "keys.txt"
    assert main(["api-key", "a", "--append", str(path)]) == 0
    key_a = capsys.readouterr().out.strip()
    path.write_text(path.read_text().rstrip("\n"))  # a file edited by hand, without a final newline
    assert main(["api-key", "b", "--append", str(path)]) == 0
    key_b = capsys.readouterr().out.strip()
    keys = api_keys.read_keys_file(path)
    assert (api_keys.match(keys, key_a), api_keys.match(keys, key_b)) == ("a", "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["api-key", "a", "--append", str(path)]) == 2
    assert "already has a key named 'a'" in capsys.readouterr().err
    assert main(["api-key", "bad name"]) == 2


def test_cli_checks_a_file_as_the_service_reads_it(tmp_path, capsys):
    path = tmp_path / "keys.txt"
    path.write_text(api_keys.key_line("a", "k1") + "\n" + api_keys.key_line("b", "k2") + "\n")
    assert main(["api-key", "--check", str(path)]) == 0
    assert capsys.readouterr().out == "2 key(s): a, b\n"
    path.write_text("a:sha256:1234\n")
    assert main(["api-key", "--check", str(path)]) == 2
    assert "line 1: expected name:sha256:<64 hex digits>" in capsys.readouterr().err
    assert main(["api-key"]) == 2


@pytest.mark.parametrize("content, message", [
    (None, "--check={!r} cannot be read: No such file or directory"),
    ("# nothing yet\n", "--check {!r} holds no key"),
    ("a:sha256:1234\n", "--check {!r}, line 1: expected name:sha256:"),
])
def test_check_blames_the_file_from_check_not_the_variable(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.setenv("IMGCLF_API_KEYS_FILE", str(tmp_path / "served.txt"))  # set, but not what --check names
    path = tmp_path / "F"
    if content is not None:
        path.write_text(content)
    assert main(["api-key", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"imgclf api-key: error: {message.format(str(path))}")
    assert err.count("\n") == 1 and "IMGCLF_API_KEYS_FILE" not in err


def test_check_json_lists_the_names_the_service_would_read(tmp_path, capsys):
    path = tmp_path / "keys.txt"
    path.write_text(api_keys.key_line("ci", "k1") + "\n# a comment\n" + api_keys.key_line("prom", "k2") + "\n")
    assert main(["api-key", "--check", str(path), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found == {"file": str(path), "keys": list(Settings.from_env({"IMGCLF_API_KEYS_FILE": str(path)})
                                                     .access.keys)}
    assert found["keys"] == ["ci", "prom"] and "k1" not in json.dumps(found)
    assert main(["api-key", "ci", "--json"]) == 2  # --json is --check's


def test_serve_refuses_a_bad_keys_file_in_one_line_before_starting(model_repo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_API_KEYS_FILE", str(tmp_path / "missing.txt"))
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("gunicorn started"))
    assert main(["serve", "--model-dir", str(model_repo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imgclf serve: error: IMGCLF_API_KEYS_FILE=") and "cannot be read" in err[-1]
