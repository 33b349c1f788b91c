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
