"""TensorFlow's start-up lines: what its import writes to fd 2 is kept back, and printed only if the command fails.

A stand-in package plays TensorFlow: its ``__init__`` writes to file descriptor 2 with ``os.write``, as
TensorFlow's C++ logging does, below Python's ``sys.stderr``.
"""

import argparse
import os
import sys

import pytest

from imgclf.core import tf_startup
from imgclf.core.cli import run_command

LINES = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n" \
        "I0000 00:00:1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"


@pytest.fixture
def fake_tensorflow(tmp_path, monkeypatch):
    """A package ``fake_tf_<n>`` that writes LINES to fd 2 when imported, standing in for ``tensorflow``."""
    name = f"fake_tf_{os.getpid()}_{len(sys.modules)}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(f"import os\nos.write(2, {LINES.encode()!r})\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tf_startup, "MODULE", name)
    yield name
    tf_startup.uninstall()
    tf_startup.captured()
    sys.modules.pop(name, None)


def test_the_import_writes_into_the_buffer_and_fd_2_is_restored(fake_tensorflow, capfd):
    assert tf_startup.capture_import() is True
    module = __import__(fake_tensorflow)
    assert module.VALUE == 42 and module.__spec__.name == fake_tensorflow
    os.write(2, b"after\n")  # fd 2 is the terminal's again
    assert tf_startup.captured() == LINES
    assert capfd.readouterr().err == "after\n"
    assert tf_startup.captured() == ""  # handed over once
    assert tf_startup._finder not in sys.meta_path  # only the first import is captured


def test_an_imported_module_is_not_captured_again(fake_tensorflow, capfd):
    __import__(fake_tensorflow)
    assert capfd.readouterr().err == LINES
    assert tf_startup.capture_import() is False


def _command(fail: bool):
    def handler(args):
        __import__(tf_startup.MODULE)
        if fail:
            raise ValueError("the graph is corrupt")
        print("done")
        return 0
    return handler


@pytest.mark.parametrize("fail", [False, True])
def test_a_command_shows_the_lines_only_when_it_fails(fake_tensorflow, capfd, fail):
    parser = argparse.ArgumentParser(prog="imgclf")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.set_defaults(func=_command(fail))
    status = run_command(parser, [], lambda args: "imgclf job")
    out, err = capfd.readouterr()
    if fail:
        assert status == 1 and err == LINES + "imgclf job: error: the graph is corrupt\n"
    else:
        assert (status, out, err) == (0, "done\n", "")


def test_vv_lets_the_lines_through(fake_tensorflow, capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    parser = argparse.ArgumentParser(prog="imgclf")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.set_defaults(func=_command(False))
    assert run_command(parser, ["-vv"], lambda args: "imgclf job") == 0
    assert capfd.readouterr().err == LINES
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
