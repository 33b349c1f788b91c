"""Rules the whole source tree keeps, checked by reading the code (no test can forget to call them)."""

from __future__ import annotations

import ast
from pathlib import Path

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
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Call) and _is_np_load(node):
                value = {k.arg: k.value for k in node.keywords}.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offending, f"np.load without allow_pickle=False: {offending}"


def test_the_scan_sees_the_calls_it_checks():
    sources = "\n".join(p.read_text(encoding="utf-8") for p in _python_files())
    assert sources.count("np.load(") >= 5  # the loaders of mnist.npz and the tests' .npz files are seen
    bad = ast.parse("np.load('x.npz')").body[0].value
    assert _is_np_load(bad) and not bad.keywords
