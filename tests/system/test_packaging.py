"""The wheel: one import root (``imgclf``), importable without TensorFlow, immune to a user's own modules.

A folder that holds its own ``models.py``, ``service.py``, ... (each raising ImportError) stands for
a user's project: ``imgclf`` run from there must still find its own packages, never those files.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import venv
import zipfile
from pathlib import Path

import pytest
import requests

from tests.support import images
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
OLD_ROOTS = ("models", "service", "featurizer", "training", "core")
# What `import imgclf.service` and the command-line parser need, without TensorFlow (pyproject's dependencies).
LIGHT_DEPS = ["numpy", "pillow", "flask", "gunicorn", "requests", "tqdm", "prometheus-client", "pyyaml"]
# Not the sources: build outputs, virtualenvs and data a developer may have lying around.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".import_linter_cache", "demo-data", "out", "model-repository")
READY_WITHIN_S = 120


def user_folder(path: Path, *, with_imgclf_py: bool = False) -> Path:
    """Make a folder whose own modules are named like imgclf's packages; importing any of them fails."""
    path.mkdir(parents=True, exist_ok=True)
    names = OLD_ROOTS + (("imgclf",) if with_imgclf_py else ())
    for name in names:
        (path / f"{name}.py").write_text(f"raise ImportError('the user folder\\'s own {name}.py was imported')\n")
    return path


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build imgclf's wheel from a copy of the sources (the checkout gets no build/ or egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", tmp / "dist", source], timeout=300)
    (built,) = (tmp / "dist").glob("imgclf-*.whl")
    return built


def test_the_wheel_installs_only_imgclf_at_the_top_level(wheel):
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
    top = {name.split("/")[0] for name in files}
    (dist_info,) = [t for t in top if t.endswith(".dist-info")]
    assert top == {"imgclf", dist_info}, top
    assert "imgclf/__init__.py" not in files  # a namespace: each folder is its own portion
    for package in ("core", "featurizer", "training", "models", "service"):
        assert f"imgclf/{package}/__init__.py" in files
    assert any(name.startswith("imgclf/service/web/") and name.endswith(".html") for name in files)
    # Each protocol's OpenAPI schemas are package data (pyproject's package-data), read when /openapi.json answers.
    schemas = [path.relative_to(ROOT).as_posix() for path in (ROOT / "service" / "protocols").rglob("*.yaml")]
    assert len(schemas) >= 4 and all(f"imgclf/{path}" in files for path in schemas), schemas
    # The gRPC messages: the descriptor set the server loads, and the .proto files it is compiled from.
    assert "imgclf/service/protocols/grpc/protos/descriptors.binpb" in files
    assert "imgclf/service/protocols/grpc/protos/tensorflow_serving.proto" in files
    assert not any(name.startswith("imgclf/tests/") or "/tests/" in name for name in files)


@pytest.fixture(scope="module")
def light_venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel (no dependencies) and the light ones only: no TensorFlow."""
    env = tmp_path_factory.mktemp("light") / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env)
    python = env / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", wheel], timeout=300)
    result = subprocess.run([python, "-m", "pip", "install", "--quiet", *LIGHT_DEPS],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        if any(s in result.stderr for s in ("NewConnectionError", "Network is unreachable", "No matching dist",
                                            "Temporary failure in name resolution")):
            pytest.skip(f"the package index is unreachable, so the light dependencies cannot be installed: "
                        f"{result.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install {' '.join(LIGHT_DEPS)} failed:\n{result.stderr[-3000:]}")
    return env


CHECK_IMPORTS = textwrap.dedent("""
    import importlib.util, json, sys
    import imgclf.service
    import imgclf.service.cli.main as cli
    parser = cli.build_parser()
    commands = sorted(parser._subparsers._group_actions[0].choices)
    print(json.dumps({
        "service": imgclf.service.__file__,
        "commands": commands,
        "shadowed": sorted(n for n in sys.modules if n in {OLD_ROOTS!r}),
        "tensorflow": importlib.util.find_spec("tensorflow") is not None,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }))
""").replace("{OLD_ROOTS!r}", repr(set(OLD_ROOTS)))


def test_the_wheel_imports_without_tensorflow_beside_a_users_own_modules(light_venv, tmp_path):
    folder = user_folder(tmp_path / "project")
    result = run([light_venv / "bin" / "python", "-c", CHECK_IMPORTS], cwd=folder, timeout=120,
                 env={"PATH": f"{light_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    found = json.loads(result.stdout.strip().splitlines()[-1])

    assert found["tensorflow"] is False  # the point: the light venv really has no TensorFlow
    assert Path(found["service"]).is_relative_to(light_venv), found["service"]  # the installed copy
    assert found["shadowed"] == [] and found["tensorflow_imported"] is False
    assert {"featurize", "train", "serve", "predict", "models"} <= set(found["commands"]), found["commands"]


def test_the_installed_command_runs_from_a_users_folder(light_venv, tmp_path):
    folder = user_folder(tmp_path / "project", with_imgclf_py=True)  # a script's bin/ dir comes first
    result = run([light_venv / "bin" / "imgclf", "--help"], cwd=folder, timeout=120,
                 env={"PATH": f"{light_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.stdout.startswith("usage: imgclf")
    assert "featurize" in result.stdout and "serve" in result.stdout


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _serve_from(folder: Path, model_repo: Path, tmp: Path) -> tuple[int, str, str]:
    """Run `imgclf serve` (this venv, with TensorFlow) from ``folder``; return /readyz's and /predict's answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "serve.log"
    imgclf = Path(sys.executable).parent / "imgclf"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp),
           "TF_CPP_MIN_LOG_LEVEL": "2", "IMGCLF_PRECISION": "fp32", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as out:
        process = subprocess.Popen([imgclf, "serve", "--model-dir", model_repo, "--bind", f"127.0.0.1:{port}",
                                    "--workers", "1", "--threads", "2"], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            return -1, log.read_text(errors="replace"), ""
        response = requests.post(url + "/predict", files={"image": ("a.jpg", images.jpeg(1), "image/jpeg")},
                                 timeout=60)
        return response.status_code, log.read_text(errors="replace"), response.text
    finally:
        _stop(process)


@pytest.mark.parametrize("with_imgclf_py", [
    False,
    True,
], ids=["own-modules", "own-imgclf-py"])
def test_serve_from_a_users_folder_still_serves(model_repo, tmp_path, with_imgclf_py):
    folder = user_folder(tmp_path / "project", with_imgclf_py=with_imgclf_py)
    status, log, body = _serve_from(folder, model_repo, tmp_path)
    assert status == 200, f"not served (status {status}); log:\n{log[-4000:]}\n{body}"
    labels = {p["label"] for p in json.loads(body)["predictions"]}
    assert labels <= {"bubbles", "checkers", "stripes", "sunsets"} and labels, body  # the model_repo's classes
    assert "was imported" not in log
