"""`imgclf doctor`: its facts against the machine read another way, its paths against the default rules."""

import importlib.util
import json
import platform
from importlib import metadata

from imgclf.service.cli.main import main


def _cpuinfo_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo", encoding="ascii", errors="replace").read()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_doctor_json_reports_this_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", str(tmp_path / "repo"))
    monkeypatch.setenv("IMGCLF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMGCLF_BACKEND", "tensorflow")
    monkeypatch.delenv("IMGCLF_PRECISION", raising=False)
    assert main(["doctor", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)

    versions = found["versions"]
    assert versions["imgclf"] == metadata.version("imgclf") and versions["python"] == platform.python_version()
    assert versions["numpy"] == metadata.version("numpy")
    assert found["backends"]["openvino"] == (importlib.util.find_spec("openvino") is not None)
    flags = _cpuinfo_flags()
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo", encoding="ascii", errors="replace")
             if line.startswith("model name")] if flags else []
    assert found["cpu"]["model"] == (names[0] if names else platform.processor() or "unknown")
    features = found["cpu"]["features"]
    assert set(features["bf16"]) == flags & {"amx_bf16", "avx512_bf16"}
    assert set(features["vnni"]) == flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    assert set(features["amx"]) == flags & {"amx_tile", "amx_bf16", "amx_int8"}

    paths = found["paths"]
    assert paths["model_repository"] == {"path": str(tmp_path / "repo"), "exists": False, "models": {}}
    assert paths["inception_graph"]["path"] == str(tmp_path / "home" / "inception" / "tensorflow_inception_graph.pb")
    assert found["serving"] == {"backend": "tensorflow", "precision": "auto"}

    auto = found["auto"]
    if not found["gpus"]["tensorflow"]["gpus"]:  # a CPU: bf16 exactly where the CPU has it natively
        expected = "bf16" if features["bf16"] and found["gpus"]["tensorflow"]["onednn"] else "fp32"
        assert auto["device"] == "/device:CPU:0" and auto["tensorflow_precision"] == expected
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        assert auto["backend"] == ("openvino" if x86 and found["backends"]["openvino"] else "tensorflow")


def test_doctor_text_names_each_section(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", str(tmp_path))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for heading in ("versions:", "cpu:", "gpus:", "backends:", "paths:", "auto picks:"):
        assert f"\n{heading}" in f"\n{out}", heading
    assert f"model_repository {tmp_path}\n" in out  # it exists: no "(missing)"
