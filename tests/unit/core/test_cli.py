"""The command runner: one error line and the exit status of core.errors, never a traceback for a user's error."""

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.core.cli import run_command
from imgclf.core.errors import TrainingDiverged, UsageError
from imgclf.featurizer.images.demo import write_demo_images
from imgclf.service.cli.main import build_parser, main
from tests.support import images

REPO_ROOT = Path(__file__).resolve().parents[3]


def _run(handler, capsys, argv=None):
    parser = argparse.ArgumentParser(prog="imgclf")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--n", type=int, default=1)
    parser.set_defaults(func=handler)
    status = run_command(parser, argv or [], lambda args: "imgclf job")
    return status, capsys.readouterr().err


def _raise(exc):
    def handler(args):
        raise exc
    return handler


@pytest.mark.parametrize("exc, status, line", [
    (UsageError("--n must be at least 1; received 0"), 2, "imgclf job: error: --n must be at least 1; received 0"),
    (ValueError("class b has 2 images, too few"), 1, "imgclf job: error: class b has 2 images, too few"),
    (TrainingDiverged("training diverged"), 1, "imgclf job: error: training diverged"),
    (FloatingPointError("loss is nan"), 1, "imgclf job: error: loss is nan"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/m"), 1,
     "imgclf job: error: Permission denied: '/srv/m'"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "g.pb"), 1,
     "imgclf job: error: No such file or directory: 'g.pb'"),
    (ValueError(), 1, "imgclf job: error: ValueError"),  # no message: its kind
])
def test_a_users_error_is_one_line_and_its_status(capsys, exc, status, line):
    assert _run(_raise(exc), capsys) == (status, line + "\n")


def test_ctrl_c_exits_130_with_one_line(capsys):
    status, err = _run(_raise(KeyboardInterrupt()), capsys)
    assert status == 130 and err == "imgclf job: interrupted; work committed so far is kept, run again to resume\n"


def test_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        _run(_raise(RuntimeError("a bug")), capsys)


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        _run(lambda args: 0, capsys, ["--n", "many"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "x"])
    assert info.value.code == 2


def test_tensorflow_file_errors_are_one_readable_line(capsys):
    tf_errors = pytest.importorskip("tensorflow").errors
    message = ("{{function_node __wrapped__CreateSummaryFileWriter}} /srv/runs; Operation not permitted "
               "[Op:CreateSummaryFileWriter] name: ")
    expected = "imgclf job: error: PermissionDeniedError: /srv/runs; Operation not permitted\n"
    assert _run(_raise(tf_errors.PermissionDeniedError(None, None, message)), capsys) == (1, expected)


def test_every_subcommand_is_registered():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"featurize", "train", "predict", "serve", "models"} <= set(sub.choices)


# --- `imgclf train` end to end: each way it can fail --------------------------------------------------------

@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return write_demo_images(tmp_path_factory.mktemp("cli") / "images", per_class=10)


def _train_args(image_dir, graph, tmp_path, *extra, model_dir=None):
    return ["train", str(image_dir), "--graph", str(graph), "--cache", str(tmp_path / "c.sqlite"),
            "--model-dir", str(model_dir or tmp_path / "models"), "--name", "demo", "--precision", "fp32",
            "--quiet", *extra]


def _cli_subprocess(args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "imgclf.service.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _assert_one_error_line(done, status, start):
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(start), done.stderr
    assert done.stderr.rstrip("\n").splitlines()[-1] == errors[0]


def test_a_diverging_train_prints_one_error_line_and_exits_1(image_dir, legacy_graph_path, tmp_path):
    # 1e38 overflows float32 weights at the first step: no epoch ever has a finite validation loss.
    # (1e30 keeps epoch 1 finite on these features and diverges at epoch 2: that fails the run too, see
    # tests/unit/training/test_train_job.py.)
    done = _cli_subprocess(_train_args(image_dir, legacy_graph_path, tmp_path, "--learning-rate", "1e38"), tmp_path)
    _assert_one_error_line(done, 1, "imgclf train: error: ")
    assert "training diverged" in done.stderr and "--learning-rate" in done.stderr
    assert not any((tmp_path / "models").rglob("saved_model.pb"))


@pytest.fixture
def unwritable(tmp_path):
    """A folder in which creating anything raises PermissionError (root ignores modes: /sys then)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    candidates = [folder, Path("/sys")]
    try:
        for candidate in candidates:
            try:
                (candidate / "imgclf-probe").mkdir()
            except PermissionError:
                yield candidate
                return
            except OSError:
                continue
            (candidate / "imgclf-probe").rmdir()
        pytest.skip("no folder here refuses writes with PermissionError (root, and no /sys)")
    finally:
        folder.chmod(0o700)


def test_an_unwritable_model_dir_prints_one_line_and_exits_1(image_dir, legacy_graph_path, tmp_path, unwritable):
    done = _cli_subprocess(_train_args(image_dir, legacy_graph_path, tmp_path,
                                       model_dir=unwritable / "imgclf-models"), tmp_path)
    _assert_one_error_line(done, 1, "imgclf train: error: ")
    assert str(unwritable) in done.stderr


def test_an_unwritable_cache_prints_one_line_and_exits_1(image_dir, legacy_graph_path, tmp_path, unwritable, capsys):
    code = main(["featurize", str(image_dir), "--graph", str(legacy_graph_path), "--cache",
                 str(unwritable / "imgclf-cache" / "c.sqlite"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("imgclf featurize: error: ") and err.count("\n") == 1
    assert str(unwritable) in err


def test_a_data_fault_exits_1(tmp_path, legacy_graph_path, capsys):
    for label, count in (("a", 5), ("b", 2)):
        (tmp_path / "p" / label).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "p" / label / f"{i}.jpg").write_bytes(images.jpeg(i, (40, 30)))
    assert main(_train_args(tmp_path / "p", legacy_graph_path, tmp_path)) == 1
    err = capsys.readouterr().err
    assert "too few in: b (2)" in err and err.count("\n") == 1


def test_a_corrupt_cache_exits_1(image_dir, legacy_graph_path, tmp_path, capsys):
    (tmp_path / "c.sqlite").write_bytes(b"not a database" * 100)
    assert main(_train_args(image_dir, legacy_graph_path, tmp_path)) == 1
    assert "is not a usable imgclf feature cache" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--name", "../evil"], "name"),
    (["--train-percent", "90"], "sum to 100"),
    (["--decode-threads", "-1"], "--decode-threads must be 0"),
    (["--epochs", "0"], "epochs"),
    (["--min-accuracy", "1.5"], "--min-accuracy must be a number between 0 and 1; received 1.5"),
    (["--min-accuracy", "-0.1"], "--min-accuracy must be"),
    (["--min-accuracy", "nan"], "--min-accuracy must be a number between 0 and 1; received nan"),
    (["--max-regression", "nan"], "--max-regression must be a number between 0 and 1; received nan"),
    (["--max-regression", "1.01"], "--max-regression must be a number between 0 and 1; received 1.01"),
    (["--max-regression", "inf"], "--max-regression must be a number between 0 and 1; received inf"),
])
def test_a_bad_argument_exits_2(image_dir, legacy_graph_path, tmp_path, capsys, extra, message):
    args = _train_args(image_dir, legacy_graph_path, tmp_path, *extra)
    if extra[0] == "--name":
        args[args.index("--name") + 1] = extra[1]
        args = args[:-2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf train: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "models").exists() and not (tmp_path / "c.sqlite").exists()  # nothing was written


# --- the conventions every command shares (issue 26) --------------------------------------------------------

def _parse(argv):
    from imgclf.core.cli import parse

    return parse(build_parser(), argv)


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["-v", "featurize", "d", "--graph", "g.pb"], 1, False),
    (["featurize", "d", "--graph", "g.pb", "-vv"], 2, False),
    (["-v", "featurize", "d", "--graph", "g.pb", "-v"], 2, False),  # before and after add up
    (["featurize", "d", "--graph", "g.pb", "--quiet"], 0, True),
    (["-q", "inspect", "g.pb"], 0, True),
    (["models", "train", "quadratic", "-q"], 0, True),  # a nested subcommand too
    (["serve", "-v"], 1, False),
    (["predict", "x.jpg", "--model", "m"], 0, False),
])
def test_v_and_q_work_before_or_after_the_subcommand(argv, verbose, quiet):
    args = _parse(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)
    assert not hasattr(args, "sub_verbose") and not hasattr(args, "sub_quiet")


def test_every_subcommand_takes_v_and_q_and_q_with_v_is_exit_2(capsys):
    from imgclf.core.cli import _subparsers

    for parser in _subparsers(build_parser()):
        options = set(parser._option_string_actions)
        assert {"-v", "--verbose", "-q", "--quiet"} <= options, parser.prog
    with pytest.raises(SystemExit) as info:
        _parse(["-q", "serve", "-v"])
    assert info.value.code == 2 and "exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("argv, old, new, dest, value", [
    (["export-inception", "--out", "g.pb"], "--out", "--output", "output", Path("g.pb")),
    (["fetch-inception", "--dest", "d"], "--dest", "--output", "output", Path("d")),
    (["models", "fetch-mnist", "--dest", "m.npz"], "--dest", "--output", "output", Path("m.npz")),
    (["models", "train", "quadratic", "--batch-size", "64"], "--batch-size", "--train-batch-size",
     "train_batch_size", 64),
])
def test_old_option_names_still_work_with_one_warning_line(capsys, argv, old, new, dest, value):
    args = _parse(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"warning: {old} is deprecated" in err and f"use {new}" in err
    assert getattr(_parse([a if a != old else new for a in argv]), dest) == value  # the new name, silently
    assert capsys.readouterr().err == ""


def test_deprecated_names_are_hidden_from_help_and_options_have_typed_metavars():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "--dest" not in sub.choices["fetch-inception"].format_help()
    featurize = sub.choices["featurize"].format_help()
    assert "--batch-size N" in featurize and "--cache PATH" in featurize and "--cpus-per-actor NUMBER" in featurize
    train = sub.choices["models"]._subparsers._group_actions[0].choices["train"].format_help()
    assert "--train-batch-size N" in train and "--decay-steps N" in train and "--batch-size" not in train


def test_version_prints_the_installed_version(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"imgclf {metadata.version('imgclf')}\n"


@pytest.mark.parametrize("shell, check", [
    ("bash", ["bash", "-n"]),
    ("zsh", ["zsh", "-n"]),
    ("fish", ["fish", "--no-execute"]),
])
def test_completion_scripts_name_every_command_and_parse_in_their_shell(shell, check, capsys, tmp_path):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("featurize", "doctor", "--train-batch-size", "--model-dir"):
        assert word in script, word
    assert "--dest" not in script  # a deprecated name is not offered
    import shutil

    if shutil.which(check[0]) is None:
        pytest.skip(f"{check[0]} is not installed here, so the script's syntax cannot be checked")
    (tmp_path / "script").write_text(script)
    done = subprocess.run([*check, str(tmp_path / "script")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# Runs in a fresh interpreter, as a user's shell would: --version, then each bad command, which must be refused
# (exit 2, one line) before TensorFlow is imported; TF_CPP_MIN_LOG_LEVEL=0 would let any TensorFlow line through.
_BAD_ARGUMENTS = """
import contextlib, io, json, sys
from imgclf.service.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    results.append({"status": status, "err": err.getvalue(), "out": out.getvalue()})
print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_version_and_bad_arguments_are_answered_before_tensorflow_loads(tmp_path):
    import json

    (tmp_path / "g.pb").write_bytes(b"not read")
    (tmp_path / "dir").mkdir()
    commands = {
        "IMAGE_DIR needs --cache": ["train", "dir", "--graph", "g.pb", "--model-dir", "m", "--name", "n"],
        "--batch-size must be at least 1; received -3": ["featurize", "--batch-size", "-3", "dir", "--graph", "g.pb",
                                                         "--cache", "c.sqlite"],
        "--graph 'missing.pb' does not exist": ["featurize", "dir", "--graph", "missing.pb", "--cache", "c.sqlite"],
        "received 'localhost:1' (http://localhost:1?)": ["predict", "--url", "localhost:1", "x.jpg"],
        "--per-class must be at least 3; received -3": ["demo", "--per-class", "-3", "--workdir", "demo"],
        "--workers must be at least 1; received 0": ["serve", "--model-dir", "/nonexistent", "--workers", "0"],
        "epochs must be an integer >= 1; received 0": ["models", "train", "quadratic", "--epochs", "0",
                                                       "--model-dir", "m"],
        "sum to 100": ["train", "dir", "--graph", "g.pb", "--cache", "c.sqlite", "--name", "n",
                            "--train-percent", "90"],
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("IMGCLF_MODEL_REPOSITORY", None)
    done = subprocess.run([sys.executable, "-c", _BAD_ARGUMENTS, json.dumps([["--version"], *commands.values()])],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] is False
    from importlib import metadata

    version, *results = report["results"]
    assert version == {"status": 0, "err": "", "out": f"imgclf {metadata.version('imgclf')}\n"}
    for message, result in zip(commands, results):
        assert result["status"] == 2, (message, result)
        assert result["err"].count("\n") == 1 and ": error: " in result["err"] and message in result["err"], result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "g.pb"]  # nothing was written
