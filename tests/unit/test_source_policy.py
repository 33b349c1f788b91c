"""Rules the whole source tree keeps, checked by reading the code (no test can forget to call them)."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

from tests.support.source_ast import parse_source

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "featurizer", "training", "models", "service", "bench", "tests")


def _python_files():
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _is_np_load(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name) \
        and func.value.id in ("np", "numpy")


def test_np_load_never_allows_pickles():
    """An .npz or .npy with object arrays runs pickle: every np.load in the tree says allow_pickle=False."""
    offending = []
    for path in _python_files():
        for node in ast.walk(parse_source(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and _is_np_load(node):
                value = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offending, f"np.load without allow_pickle=False: {offending}"


def test_the_scan_sees_the_calls_it_checks():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in _python_files())
    assert sources.count("np.load(") >= 5  # the loaders of mnist.npz and the tests' .npz files are seen
    bad = parse_source("np.load('x.npz')").body[0].value
    assert _is_np_load(bad) and not bad.keywords


# The folders that install as imgclf.<name>: as a first import component they would find another
# distribution's package (or a user's models.py) instead of ours.
OLD_ROOTS = ("core", "featurizer", "training", "models", "service")
_MODULE_STRING = re.compile(rf"(?:python:)?((?:{'|'.join(OLD_ROOTS)})(?:\.\w+)*)(?::\w+(?:\(\))?)?")
# Files outside the Python tree that name modules to run (gunicorn app strings, python -m, CMD).
COMMAND_FILES = ("Dockerfile", "compose.yaml", "Makefile", ".ci/run", "README.md", "CONTRIBUTING.md",
                 *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")))
_RUN_OLD_ROOT = re.compile(rf"(?:python3? -m |python:|[\"'])(?:{'|'.join(OLD_ROOTS)})(?:\.\w+)*(?::\w+|[\"' ])")


def _names_a_module_here(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _old_root_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Return (line, module) for each import, import_module/__import__ call or module string of an old root."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in OLD_ROOTS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in OLD_ROOTS:
            found.append((node.lineno, node.module))
        elif isinstance(node, (ast.List, ast.Tuple)):  # [sys.executable, "-m", "models", ...]
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            found += [(node.lineno, f"-m {module}") for flag, module in zip(items, items[1:])
                      if flag == "-m" and isinstance(module, str) and module.split(".")[0] in OLD_ROOTS]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # importlib.import_module("featurizer.cli"), "service:create_app()", "python:service.gunicorn_conf"
            # (a bare word such as "models" is not a module path; "models.json" names no module here)
            match = _MODULE_STRING.fullmatch(node.value)
            if match and ("." in match.group(1) or match.group(1) != node.value) \
                    and _names_a_module_here(match.group(1)):
                found.append((node.lineno, node.value))
    return found


def test_no_file_imports_the_old_top_level_names():
    """Every import says imgclf.<package>: ``import models`` would load whatever ``models`` comes first on sys.path."""
    offending = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in _python_files()
                 for line, name in _old_root_imports(parse_source(path.read_text(encoding="utf-8"), str(path)))]
    assert not offending, f"imports of the old top-level names: {offending}"


def test_no_command_runs_an_old_top_level_name():
    """Dockerfile, compose, Makefile, CI, README and docs run ``python -m imgclf...`` and ``imgclf.service:...``."""
    offending = []
    for name in COMMAND_FILES:
        path = ROOT / name
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            offending += [f"{name}:{number}: {line.strip()}" for _ in _RUN_OLD_ROOT.finditer(line)][:1]
    assert not offending, f"commands naming the old top-level packages: {offending}"


@pytest.mark.parametrize("source, flagged", [
    ("import models", True),
    ("import models.networks as n", True),
    ("from featurizer.graph import load_graph", True),
    ("from service import create_app", True),
    ("import_module('featurizer.cli')", True),
    ("APP = 'service:create_app()'", True),
    ("CONF = 'python:service.server.gunicorn_conf'", True),
    ("from imgclf.models import networks", False),
    ("from . import networks", False),
    ("import coreutils", False),
    ("name = 'models'", False),  # a word, not a module path
    ("path = 'models.json'", False),  # no module of that name
    ("APP = 'imgclf.service:create_app()'", False),
    ("subprocess.run([sys.executable, '-m', 'models', 'train'])", True),
    ("subprocess.run([sys.executable, '-m', 'imgclf.models', 'train'])", False),
    ("argv = ('-m', 'service.cli.serve')", True),
])
def test_the_import_scan_flags_old_roots_only(source, flagged):
    assert bool(_old_root_imports(parse_source(source))) is flagged


@pytest.mark.parametrize("line, flagged", [
    ('CMD ["python", "-m", "gunicorn", "-c", "python:service.gunicorn_conf", "service:create_app()"]', True),
    ("\t$(BIN)/python -m models train lenet5", True),
    ('CMD ["python", "-m", "gunicorn", "-c", "python:imgclf.service.server.gunicorn_conf", '
     '"imgclf.service:create_app()"]', False),
    ("\t$(BIN)/python -m imgclf.models train lenet5", False),
    ("The service serves models from the repository.", False),
])
def test_the_command_scan_flags_old_roots_only(line, flagged):
    assert bool(_RUN_OLD_ROOT.search(line)) is flagged


def _test_modules() -> list[Path]:
    return sorted((ROOT / "tests").rglob("test_*.py"))


def test_every_test_folder_is_a_package():
    """Without __init__.py, two test_app.py files in two folders import as the same module and clash."""
    folders = {path.parent for path in _test_modules()} | {p.parent for p in (ROOT / "tests").rglob("conftest.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"test folders without __init__.py: {missing}"


def test_unit_test_modules_mirror_the_code():
    """tests/unit/<package>/test_<module>.py tests <package>/<module>.py; tests/unit/test_*.py span the tree."""
    strays = []
    for path in sorted((ROOT / "tests" / "unit").rglob("test_*.py")):
        relative = path.relative_to(ROOT / "tests" / "unit")
        if len(relative.parts) == 1:
            continue  # whole-tree checks such as this file
        module = ROOT.joinpath(*relative.parts[:-1], relative.name.removeprefix("test_"))
        if relative.parts[0] not in OLD_ROOTS or not module.is_file():
            strays.append(f"{path.relative_to(ROOT)} (no {module.relative_to(ROOT)})")
    assert not strays, f"unit test modules that mirror no module: {strays}"


def test_test_module_names_are_unique():
    """Each test module has one dotted name (tests.unit.core.test_atomic); none is imported twice under two."""
    dotted = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _test_modules()]
    assert len(dotted) == len(set(dotted))
    assert all(name.startswith(("tests.unit.", "tests.system.")) for name in dotted), dotted


def test_deprecations_from_imgclf_modules_are_errors():
    """pyproject's filterwarnings: a DeprecationWarning attributed to an imgclf module fails the test."""
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old", DeprecationWarning, "core/x.py", 1, module="imgclf.core.x")
    with warnings.catch_warnings(record=True) as caught:  # record=True keeps pytest's filters
        warnings.warn_explicit("old", DeprecationWarning, "site-packages/keras/x.py", 1, module="keras.src.x")
    assert caught == []  # third-party deprecations stay ignored, as before
