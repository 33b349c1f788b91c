"""Parse Python source for the source-policy tests, through a CPython 3.11 bug that other threads can trigger."""

from __future__ import annotations

import ast

# CPython gh-106905: before 3.11.8/3.12, building an AST while another thread of the process builds one
# (a tf.function traced with autograph in a thread some other test left running) can fail with
# "SystemError: AST constructor recursion depth mismatch". The source is fine; parsing it again works.
_ATTEMPTS = 5


def parse_source(source: str, filename: str = "<unknown>") -> ast.Module:
    """Return ``ast.parse(source, filename)``, parsing again when CPython's thread-safety bug interferes."""
    for attempt in range(_ATTEMPTS):
        try:
            return ast.parse(source, filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
