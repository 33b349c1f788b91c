"""`imgclf serve`'s options: --backend and --precision reach the workers' settings; arguments before the repository.

``os.execve`` is replaced, so nothing starts: the test reads the environment the front would get.
"""

import pytest

from imgclf.core import export_names as names
from imgclf.core.paths import model_repository
from imgclf.service.cli import serve as serve_cli
from imgclf.service.cli.main import main
from imgclf.service.settings import Settings


@pytest.fixture
def repo(tmp_path):
    """A repository whose one version has the files that make it complete (never loaded here)."""
    version = tmp_path / "repo" / "shapes" / "1"
    version.mkdir(parents=True)
    for required in names.REQUIRED_FILES:
        (version / required).write_bytes(b"{}")
    return tmp_path / "repo"


@pytest.fixture
def execs(monkeypatch):
    calls = []
    monkeypatch.setattr(serve_cli.os, "execve", lambda path, argv, env: calls.append(env))
    for variable in ("IMGCLF_BACKEND", "IMGCLF_PRECISION", "IMGCLF_MODEL_REPOSITORY"):
        monkeypatch.setenv(variable, "")  # recorded, so what serve sets is undone after the test
    return calls


@pytest.mark.parametrize("argv, backend, precision", [
    ([], "card", "auto"),
    (["--backend", "tensorflow", "--precision", "fp32"], "tensorflow", "fp32"),
    (["--backend", "openvino"], "openvino", "auto"),
    (["--precision", "bf16"], "card", "bf16"),
])
def test_backend_and_precision_become_the_workers_settings(repo, execs, argv, backend, precision):
    assert main(["serve", "--model-dir", str(repo), *argv]) == 0
    env, = execs
    serving = Settings.from_env(env).serving  # what each worker reads
    assert (serving.backend, serving.precision) == (backend, precision)
    assert env["IMGCLF_MODEL_REPOSITORY"] == str(repo.resolve())


def test_a_bad_choice_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--precision", "int8"])
    assert info.value.code == 2 and "--precision: invalid choice: 'int8'" in capsys.readouterr().err


def test_a_bad_worker_count_is_named_before_the_missing_repository(tmp_path, execs, capsys):
    assert main(["serve", "--model-dir", str(tmp_path / "nonexistent"), "--workers", "0"]) == 2
    assert capsys.readouterr().err == "imgclf serve: error: --workers must be at least 1; received 0\n"
    assert execs == []


def test_the_repository_is_the_flag_then_the_variable_then_models(repo, execs, monkeypatch, tmp_path):
    assert model_repository(None, {}) == model_repository("", {}) == model_repository() and str(model_repository()) \
        == "models"
    assert model_repository(None, {"IMGCLF_MODEL_REPOSITORY": "~/r"}).is_absolute()  # ~ expanded
    assert model_repository(tmp_path / "flag", {"IMGCLF_MODEL_REPOSITORY": "/env"}) == tmp_path / "flag"
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", str(repo))
    assert main(["serve"]) == 0  # no --model-dir: the variable's
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", "")
    monkeypatch.chdir(repo.parent)
    (repo.parent / "repo").rename(repo.parent / "models")
    assert main(["serve"]) == 0  # neither: ./models
    assert [env["IMGCLF_MODEL_REPOSITORY"] for env in execs] == [str(repo.resolve()),
                                                                  str((repo.parent / "models").resolve())]
