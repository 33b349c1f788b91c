"""mkdocs hook: the reference pages' generated parts, made from the code at build time.

A page asks for a part with a marker line, ``<!-- generated: NAME -->``, which
this hook replaces with NAME's Markdown before the page is rendered:

    cli            every parser of ``imgclf.service.cli.main.build_parser()``, walked recursively:
                   a new subcommand or option appears without touching the docs
    configuration  every setting of the typed tree (``imgclf.service.settings.iter_settings()``)
    http-api       every operation of the service's OpenAPI document (``/openapi.json``)

The OpenAPI document itself is added to the site as ``reference/openapi.json``.
``mkdocs build --strict`` fails on a marker that names no part. The functions are
plain (no mkdocs import), so ``tests/unit/test_docs.py`` calls them too.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
OPENAPI_PATH = "reference/openapi.json"


def cell(text: object) -> str:
    """Return ``text`` fit for one Markdown table cell: one line, no pipe, no HTML tag, no emphasis."""
    text = " ".join(str(text).split())
    # help lines say <dir>/<name>, a|b and x_nohash_*: text, not tags, cell breaks or emphasis
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("*", "\\*"))


def code(text: object) -> str:
    """Return ``text`` as inline code on one line (a pipe inside backticks does not break a table row)."""
    text = " ".join(str(text).split())
    return f"`{text}`" if text else ""


# --- the command line ---------------------------------------------------------------------------------------

def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, list[str]]]:
    """Yield ``parser`` and every subparser below it, depth first, with the subcommands' help lines."""
    yield parser, []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                for inner, _ in walk_parsers(sub):
                    yield inner, [helps.get(name) or ""] if inner is sub else []


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return code(action.metavar or action.dest)
    metavar = ""
    if action.nargs != 0:
        formatter = argparse.HelpFormatter("imgclf")
        metavar = " " + formatter._format_args(action, action.metavar or action.dest.upper())
    return ", ".join(code(flag + metavar) for flag in action.option_strings)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    # argparse's own expansion of %(default)s, %(choices)s, ... so the page says what --help says
    formatter = parser._get_formatter()
    return cell(formatter._expand_help(action)) if action.help else ""


def _meaning(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """Return the help line, with the default added where the help does not state it."""
    text = _help(parser, action)
    shown = action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS, "")
    if shown and "default" not in text:
        text += f" (default: {code(action.default)})"
    return text


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """Return the command-line reference: one section per command, its usage and a table of its arguments."""
    if parser is None:
        from imgclf.service.cli.main import build_parser

        parser = build_parser()
    out = []
    for sub, summary in walk_parsers(parser):
        level = "#" * (2 + max(0, sub.prog.count(" ") - 1))  # imgclf, imgclf train: ##; imgclf models train: ###
        out += [f"{level} {sub.prog}", ""]
        text = (summary[0] if summary else "") or (sub.description or "")
        if text:
            out += [" ".join(text.split()), ""]
        out += ["```text", sub.format_usage().strip(), "```", ""]
        rows = [a for a in sub._actions if a.help != argparse.SUPPRESS
                and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if rows:
            out += ["| argument | meaning |", "|---|---|"]
            out += [f"| {_flags(a)} | {_meaning(sub, a)} |" for a in rows]
            out.append("")
        if sub.epilog:
            out += [" ".join(sub.epilog.split()), ""]
    return "\n".join(out)


# --- the settings tree --------------------------------------------------------------------------------------

SECTION_TITLES = {
    "serving": "Serving: models, limits, batching, precision, versions",
    "access": "Access: API keys, rate limits, other origins",
    "server": "Server: gunicorn",
    "front": "Front: the slow-client front's deadlines and limits",
    "device": "Device",
    "paths": "Paths",
    "client": "Client: imgclf predict --url",
}


def _setting_default(value: object) -> str:
    if value in ("", {}, None):
        return "(unset)"
    if isinstance(value, bool):
        return code("1" if value else "0")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return code(value)


def configuration_markdown(settings: Iterator | None = None) -> str:
    """Return the configuration reference: one table per section of the settings tree, in the tree's order."""
    if settings is None:
        from imgclf.service.settings import iter_settings

        settings = iter_settings()
    out, section = [], None
    for info in settings:
        if info.section != section:
            section = info.section
            out += ["", f"### {SECTION_TITLES.get(section, section)}", "",
                    "| variable | type | default | meaning |", "|---|---|---|---|"]
        out.append(f"| {code(info.env)} | {info.type} | {_setting_default(info.default)} | {cell(info.help)} |")
    return "\n".join(out).strip() + "\n"


# --- the HTTP API -------------------------------------------------------------------------------------------

def openapi_document() -> dict:
    """Return the service's OpenAPI document, as ``GET /openapi.json`` serves it."""
    from imgclf.service.protocols.openapi import document

    return document()


def _schema_type(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    kind = schema.get("type", "")
    return f"{kind}[]" if kind == "array" else kind


def http_api_markdown(doc: dict | None = None) -> str:
    """Return the HTTP reference: per tag, each operation with its parameters, bodies and answers."""
    doc = doc if doc is not None else openapi_document()
    described = {tag["name"]: tag.get("description", "") for tag in doc.get("tags", [])}
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                by_tag.setdefault((op.get("tags") or ["other"])[0], []).append((method.upper(), path, op))
    out = []
    for tag, operations in by_tag.items():
        out += [f"## {tag}", ""]
        if described.get(tag):
            out += [described[tag][:1].upper() + described[tag][1:] + ".", ""]
        for method, path, op in operations:
            out += [f"### `{method} {path}`", "", op.get("summary", "")]
            if op.get("description"):
                out += ["", " ".join(op["description"].split())]
            params = [p for p in op.get("parameters", []) if "$ref" not in p]
            if params:
                out += ["", "| parameter | in | type | meaning |", "|---|---|---|---|"]
                out += [f"| {code(p['name'])} | {p['in']} | {_schema_type(p.get('schema', {}))} | "
                        f"{cell(p.get('description', ''))} |" for p in params]
            body = op.get("requestBody", {}).get("content", {})
            if body:
                out += ["", "Request body: " + ", ".join(code(kind) for kind in body) + "."]
            out += ["", "| status | answer |", "|---|---|"]
            out += [f"| {status} | {cell(answer.get('description', ''))} |"
                    for status, answer in sorted(op["responses"].items())]
            out.append("")
    return "\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli_markdown, "configuration": configuration_markdown, "http-api": http_api_markdown,
}


def expand(markdown: str) -> str:
    """Return ``markdown`` with every generated-part marker replaced by its part (KeyError: an unknown part)."""
    def part(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise KeyError(f"no generated part is called {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(part, markdown)


# --- mkdocs events ------------------------------------------------------------------------------------------

def on_files(files, config):
    """Add the OpenAPI document to the site, so pages can link to it and the link is checked."""
    from mkdocs.structure.files import File

    content = json.dumps(openapi_document(), indent=2) + "\n"
    files.append(File.generated(config, OPENAPI_PATH, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Expand the generated parts a page asks for."""
    return expand(markdown)
