"""Choosing the featurizer's runtime: auto, a missing OpenVINO, and the precisions each backend runs."""

import sys
from dataclasses import dataclass

import pytest

from imgclf.core.errors import UsageError
from imgclf.featurizer.runtime import backend
from imgclf.featurizer.runtime.backend import (
    INSTALL_HINT,
    check_backend_precision,
    requested_backend,
    require_openvino,
    resolve_backend,
)
from imgclf.service.cli.main import main


@dataclass
class _Target:
    kind: str

    def describe(self) -> str:
        return self.kind


@pytest.mark.parametrize("kind, x86, installed, expected", [
    ("cpu", True, True, "openvino"),
    ("cpu", True, False, "tensorflow"),  # no extra: TensorFlow, not an error
    ("cpu", False, True, "tensorflow"),  # an Arm CPU
    ("gpu", True, True, "tensorflow"),  # TensorFlow's fp16 on the GPU
])
def test_auto_picks_openvino_only_on_x86_cpus_with_the_extra(monkeypatch, kind, x86, installed, expected):
    monkeypatch.setattr(backend, "is_x86", lambda: x86)
    monkeypatch.setattr(backend, "openvino_installed", lambda: installed)
    assert resolve_backend("auto", _Target(kind)) == expected


def test_auto_is_openvino_for_int8_wherever_it_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", object())  # installed, as far as require_openvino sees
    monkeypatch.setattr(backend, "openvino_installed", lambda: True)
    monkeypatch.setattr(backend, "is_x86", lambda: False)
    assert resolve_backend("auto", _Target("gpu"), precision="int8") == "openvino"  # fp32 on a GPU: TensorFlow
    assert resolve_backend("auto", _Target("gpu"), precision="fp32") == "tensorflow"
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(UsageError, match=r"^--precision int8 \(OpenVINO's post-training quantization\) needs "
                                         r"OpenVINO, which is not installed"):
        resolve_backend("auto", _Target("cpu"), precision="int8")


@pytest.mark.parametrize("precision, given, expected", [
    ("int8", None, "openvino"),  # int8 alone implies OpenVINO
    ("int8", "auto", "auto"), ("int8", "openvino", "openvino"),
    ("auto", None, "tensorflow"), ("fp32", None, "tensorflow"), ("bf16", "openvino", "openvino"),
])
def test_the_backend_a_precision_implies_when_none_is_given(precision, given, expected):
    assert requested_backend(precision, given) == expected


def test_int8_on_tensorflow_is_refused_in_one_line():
    with pytest.raises(UsageError) as info:
        requested_backend("int8", "tensorflow")
    assert str(info.value).startswith("--precision int8 runs on OpenVINO only") and "\n" not in str(info.value)


def test_explicit_backends_and_a_bad_name(monkeypatch):
    assert resolve_backend("tensorflow", _Target("gpu")) == "tensorflow"
    with pytest.raises(UsageError, match="backend must be one of tensorflow, openvino, auto; received 'onnx'"):
        resolve_backend("onnx")


def test_openvino_without_the_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(UsageError) as info:
        require_openvino()
    assert INSTALL_HINT in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match="imgclf\\[openvino\\]"):
        resolve_backend("openvino")


def test_featurize_with_openvino_missing_exits_2_with_one_line(monkeypatch, capsys, tmp_path, legacy_graph_path):
    from imgclf.featurizer.images.demo import write_demo_images

    images = write_demo_images(tmp_path / "images", per_class=1)
    monkeypatch.setitem(sys.modules, "openvino", None)
    status = main(["featurize", str(images), "--graph", str(legacy_graph_path), "--cache",
                   str(tmp_path / "c.sqlite"), "--backend", "openvino", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and INSTALL_HINT in err[0], err
    assert not (tmp_path / "c.sqlite").exists()  # refused before any work


@pytest.mark.parametrize("name, precision, message", [
    ("tensorflow", "int8", "int8 precision is OpenVINO's post-training quantization"),
    ("openvino", "fp16", "fp16 is TensorFlow's GPU precision"),
    ("openvino", "fp64", "precision must be one of"),
])
def test_precisions_a_backend_cannot_run(name, precision, message):
    with pytest.raises(UsageError, match=message):
        check_backend_precision(name, precision)


@pytest.mark.parametrize("name, precision", [("tensorflow", "bf16"), ("tensorflow", "auto"), ("openvino", "int8"),
                                             ("openvino", "bf16"), ("openvino", "auto")])
def test_precisions_a_backend_runs(name, precision):
    check_backend_precision(name, precision)


def test_the_cli_offers_backend_and_calibration_options(capsys):
    with pytest.raises(SystemExit):
        main(["featurize", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--backend", "--calibration-images", "--openvino-cache", "int8"):
        assert option in help_text
    with pytest.raises(SystemExit) as info:
        main(["featurize", "imgs", "--graph", "g.pb", "--cache", "c", "--backend", "onnx"])
    assert info.value.code == 2
