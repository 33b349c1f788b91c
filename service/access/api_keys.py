"""API keys: the keys file (one hashed key per line, with a name) and ``imgclf api-key NAME`` to make one.

The file holds no key itself, only its SHA-256, one per line::

    # name:sha256:<hex of the key's SHA-256>
    ci-runner:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

Names (letters, digits, ``_ . -``; at most 64) label the per-key metrics and
rate limits; a request never learns them. Keys are compared in constant time:
the SHA-256 of what a request presents against every stored digest with
:func:`hmac.compare_digest`, all of them, whichever matches.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from pathlib import Path

from imgclf.core.errors import UsageError

ALGORITHM = "sha256"
KEY_PREFIX = "imgclf_"  # makes a leaked key easy to find with a secret scanner
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")


def new_key() -> str:
    """Return a new random key (256 bits, URL-safe)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """Return the hex SHA-256 of ``key`` as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_line(name: str, key: str) -> str:
    """Return the keys-file line of ``key`` named ``name``.

    Raises:
        UsageError: a name that is not letters, digits, ``_ . -`` (at most 64).
    """
    check_name(name)
    return f"{name}:{ALGORITHM}:{digest(key)}"


def check_name(name: str) -> str:
    """Return ``name`` if it can name a key, else raise UsageError."""
    if not NAME.fullmatch(name):
        raise UsageError(f"a key name is 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit); "
                         f"received {name[:80]!r}")
    return name


def parse_keys(text: str, source: str = "the keys file") -> dict[str, str]:
    """Return {name: hex digest} of a keys file's text; blank lines and ``#`` comments are skipped.

    Raises:
        UsageError: a malformed line or a name given twice (the message names the line, never its digest).
    """
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        algorithm, _, hexdigest = rest.partition(":")
        if not NAME.fullmatch(name) or algorithm != ALGORITHM or not _HEX.fullmatch(hexdigest.lower()):
            raise UsageError(f"{source}, line {number}: expected name:{ALGORITHM}:<64 hex digits> "
                             f"(as `imgclf api-key NAME` prints)")
        if name in keys:
            raise UsageError(f"{source}, line {number}: the key name {name!r} is given twice")
        keys[name] = hexdigest.lower()
    return keys


def read_keys_file(path: str | os.PathLike, given_by: str = "IMGCLF_API_KEYS_FILE") -> dict[str, str]:
    """Return {name: hex digest} of the keys file at ``path``.

    Args:
        given_by: where the path came from, as the errors name it (the variable, or ``--check``).

    Raises:
        UsageError: unreadable, malformed, or holding no key (every request would be refused).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{given_by}={str(path)!r} cannot be read: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    keys = parse_keys(text, f"{given_by} {str(path)!r}")
    if not keys:
        raise UsageError(f"{given_by} {str(path)!r} holds no key: add one with `imgclf api-key NAME`")
    return keys


def match(keys: dict[str, str], presented: str) -> str | None:
    """Return the name of the key ``presented`` is, or None; every stored digest is compared, in constant time."""
    wanted = digest(presented).encode("ascii")
    found = None
    for name, stored in keys.items():
        if hmac.compare_digest(wanted, stored.encode("ascii")):
            found = name
    return found


# --- imgclf api-key ---------------------------------------------------------------------------------------------


def presented_key(authorization: str, api_key: str) -> str | None:
    """Return the key a request presents in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    None for no key, and for two different keys (refused rather than picking one).
    """
    presented = []
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        presented.append(token.strip())
    if (api_key or "").strip():
        presented.append(api_key.strip())
    if not presented or len(set(presented)) > 1:
        return None
    return presented[0]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `imgclf api-key`."""
    p = sub.add_parser("api-key", help="make an API key: print its keys-file line (and the key, once)",
                       description="Make a new random API key named NAME. Without --append: the line for "
                                   "IMGCLF_API_KEYS_FILE goes to stdout and the key to stderr. With --append "
                                   "FILE: the line is appended to FILE (created with mode 600) and only the key "
                                   "is printed. The key is not stored anywhere: keep it now. --check FILE reads a "
                                   "keys file as the service will (do it before `kill -HUP`: workers that cannot "
                                   "read it do not start).")
    p.add_argument("name", nargs="?", default=None,
                   help="the key's name (letters, digits, _ . -): labels its metrics, never shown to clients")
    p.add_argument("--append", type=Path, default=None, metavar="FILE",
                   help="append the line to this keys file instead of printing it")
    p.add_argument("--check", type=Path, default=None, metavar="FILE",
                   help="check a keys file and list its key names (exit 2 if the service would refuse it)")
    p.add_argument("--json", action="store_true",
                   help="with --check: print {\"file\", \"keys\": [names]} as JSON (never a digest)")
    p.set_defaults(func=cmd_api_key)


def cmd_api_key(args: argparse.Namespace) -> int:
    """Run `imgclf api-key`."""
    if args.check is not None:
        if args.name is not None or args.append is not None:
            raise UsageError("--check FILE takes no NAME and no --append")
        keys = read_keys_file(args.check.expanduser(), given_by="--check")
        if args.json:
            print(json.dumps({"file": str(args.check), "keys": list(keys)}))
        else:
            print(f"{len(keys)} key(s): {', '.join(keys)}")
        return 0
    if args.json:
        raise UsageError("--json goes with --check FILE (a new key is printed as a keys-file line)")
    if args.name is None:
        raise UsageError("give the new key's NAME (or --check FILE)")
    key = new_key()
    line = key_line(args.name, key)
    if args.append is None:
        print(line)
        print(f"API key {args.name!r} (shown once; send it as Authorization: Bearer <key>): {key}", file=sys.stderr)
        return 0
    path = args.append.expanduser()
    existing = read_existing(path)
    if args.name in existing:
        raise UsageError(f"{str(path)!r} already has a key named {args.name!r}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            out.write("\n")
        out.write(line + "\n")
    print(key)
    return 0


def read_existing(path: Path) -> dict[str, str]:
    """Return the keys of the file at ``path`` ({} when it does not exist yet)."""
    if not path.exists():
        return {}
    return parse_keys(path.read_text(encoding="utf-8"), repr(str(path)))
