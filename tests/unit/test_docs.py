"""The docs site: its generated reference parts, and its runnable examples against a live server.

The reference pages' generated parts (docs/hooks/reference.py) are checked against
the code another way: the CLI reference against each parser's own ``--help``, the
configuration reference against the defaults the settings tree reads from an empty
environment, the HTTP reference against the ``/openapi.json`` the app serves.

Every fenced block preceded by ``<!-- run -->`` in docs/ is run here: curl blocks in
bash, Python blocks in a fresh interpreter, against the app on a loopback server
(127.0.0.1, a free port) serving "flowers" (the tests' trained image classifier)
and "quadratic" (exported untrained: the examples check the API, not the fit),
with a ``rose.jpg`` in the working folder. ``127.0.0.1:8000`` in a block becomes
the server's address.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- run -->"
RUNNABLE = re.compile(r"^<!-- run -->\n```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
EXAMPLE_TIMEOUT_S = 60
README_MAX_BYTES = 10_000  # issue 26: "README.md of at most 10 KB"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def load_reference():
    """Import docs/hooks/reference.py (mkdocs loads it by path; it is no package)."""
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_reference()


def sections(markdown: str) -> dict[str, str]:
    """Return the generated CLI reference's text by command (``imgclf models train`` -> its section)."""
    parts = re.split(r"^#{2,4} (imgclf[\w -]*)$", markdown, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def option_strings(help_text: str) -> set[str]:
    """Return the option strings a parser's --help lists (its own rendering, not the parsers' internals)."""
    flags = set()
    for line in help_text.splitlines():
        if re.match(r"^  -", line):  # an option's line: its flags, then two spaces and its help
            flags |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", re.split(r"\s{2,}", line.strip())[0]))
    return flags


# --- the generated parts ------------------------------------------------------------------------------------

def test_the_cli_reference_has_every_command_and_every_option_its_help_shows():
    from imgclf.service.cli.main import build_parser

    markdown = reference.cli_markdown()
    found = sections(markdown)
    parser = build_parser()
    pending, seen = [parser], 0
    while pending:
        current = pending.pop()
        assert current.prog in found, f"no section for {current.prog}"
        missing = {flag for flag in option_strings(current.format_help())
                   if f"`{flag}" not in found[current.prog]} - {"-h", "--help"}
        assert not missing, f"{current.prog}: options in --help but not in the reference: {sorted(missing)}"
        assert current.format_usage().strip() in found[current.prog]
        seen += 1
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += action.choices.values()
    assert seen == len(found) >= 12  # imgclf, its commands, and models' own subcommands


def test_a_new_subcommand_and_option_appear_without_touching_the_docs():
    parser = argparse.ArgumentParser(prog="tool", description="A tool.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    alpha = commands.add_parser("alpha", help="do alpha things")
    alpha.add_argument("--new-option", type=int, default=3, metavar="N", help="how many (default: %(default)s)")
    alpha.add_argument("--mode", choices=["a|b", "c"], default="c", help="which <mode> to use_it_*")
    inner = alpha.add_subparsers(dest="inner").add_parser("beta", help="nested")
    inner.add_argument("path", help="where")

    found = sections(reference.cli_markdown(parser).replace("## tool", "## imgclf").replace("# tool", "# imgclf"))
    assert set(found) == {"imgclf", "imgclf alpha", "imgclf alpha beta"}
    assert "do alpha things" in found["imgclf alpha"]
    assert "| `--new-option N` | how many (default: 3) |" in found["imgclf alpha"]
    # a default the help leaves out is added; markup in help is text, a pipe in code keeps the row whole
    assert "| `--mode {a|b,c}` | which &lt;mode&gt; to use_it_\\* (default: `c`) |" in found["imgclf alpha"]
    assert "| `path` | where |" in found["imgclf alpha beta"]


def test_the_configuration_reference_shows_every_setting_with_the_default_the_tree_reads():
    from imgclf.service.settings import Settings, iter_settings

    rows = {}
    for line in reference.configuration_markdown().splitlines():
        match = re.match(r"^\| `(IMGCLF_\w+)` \| (\w+) \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = match.groups()[1:]
    read = Settings.from_env({})
    infos = list(iter_settings())
    assert set(rows) == {info.env for info in infos} and len(rows) == len(infos)
    assert rows["IMGCLF_LOAD_IN_BACKGROUND"][:2] == ("bool", "`1`")  # undocumented before the generated page
    for info in infos:
        value = getattr(getattr(read, info.section), info.name)
        assert rows[info.env][1] == reference._setting_default(value), info.env
    assert rows["IMGCLF_API_KEYS_FILE"][1] == "(unset)" and rows["IMGCLF_BATCH_MAX_WAIT_MS"][1] == "`5`"


def test_an_unknown_generated_part_fails_the_build():
    with pytest.raises(KeyError, match="no generated part is called 'nope'"):
        reference.expand("text\n<!-- generated: nope -->\n")
    assert reference.expand("no marker here\n") == "no marker here\n"


def test_every_runnable_marker_is_followed_by_a_fenced_block():
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert text.count(RUN_MARKER) == len(RUNNABLE.findall(text)), f"{page}: a run marker without a block"


# --- the README ---------------------------------------------------------------------------------------------

def anchors(page: Path) -> set[str]:
    """Return the heading ids mkdocs gives ``page`` (its generated parts expanded), from Markdown's own toc."""
    import markdown

    md = markdown.Markdown(extensions=["toc", "tables", "attr_list"])
    md.convert(reference.expand(page.read_text(encoding="utf-8")) if page.is_relative_to(DOCS) else
               page.read_text(encoding="utf-8"))

    def ids(tokens):
        for token in tokens:
            yield token["id"]
            yield from ids(token["children"])

    return set(ids(md.toc_tokens))


def test_the_readme_is_short_and_every_link_in_it_resolves():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= README_MAX_BYTES
    links = LINK.findall(readme.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"^[a-z]+:", link)]
    assert len(local) >= 15 and any(link.endswith(".svg") for link in local)
    for link in local:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else readme
        assert target.exists() and target.is_relative_to(ROOT), f"README links to {link}: no such file"
        if anchor:
            assert anchor in anchors(target), f"README links to {link}: {path} has no heading {anchor!r}"


def test_the_readme_link_check_knows_each_pages_headings():
    assert anchors(DOCS / "index.md") == {"imgclf"}
    assert {"quick-start", "your-own-photos", "install"} <= anchors(DOCS / "getting-started.md")
    assert "nope" not in anchors(DOCS / "getting-started.md")
    assert "imgclf-featurize" in anchors(DOCS / "reference" / "cli.md")  # a generated heading


# --- the runnable examples ----------------------------------------------------------------------------------

def runnable_examples() -> list:
    """Return a pytest.param per runnable block: values (language, code), id PAGE:LINE."""
    params = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text[:match.start()].count("\n") + 2
            params.append(pytest.param(match.group(1), match.group(2),
                                       id=f"{page.relative_to(DOCS).as_posix()}:{line}"))
    return params


EXAMPLES = runnable_examples()


def test_the_clients_guide_has_runnable_curl_and_python_examples():
    ids = [param.id for param in EXAMPLES]
    assert sum(i.startswith("guides/clients.md") for i in ids) >= 6
    assert {param.values[0] for param in EXAMPLES} == {"sh", "python"}


@pytest.fixture(scope="module")
def docs_server(model_repo, tmp_path_factory):
    """The app on 127.0.0.1 (a free port) with "flowers" and "quadratic"; yield (address, working folder)."""
    from werkzeug.serving import make_server

    from imgclf.models.config import spec_for
    from imgclf.models.data import quadratic_data
    from imgclf.models.export import export_secondary
    from imgclf.models.networks import build_network
    from imgclf.service import create_app

    root = tmp_path_factory.mktemp("docs_examples")
    repo = root / "models"
    shutil.copytree(model_repo / "shapes", repo / "flowers")
    spec = spec_for("quadratic")
    export_secondary(repo, "quadratic", spec, build_network(spec.net), quadratic_data(), {})
    work = root / "work"
    work.mkdir()
    shutil.copyfile(sorted((model_repo.parent / "images" / "sunsets").glob("*.jpg"))[0], work / "rose.jpg")

    app = create_app({"model_repository": repo, "load_in_background": False})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="docs-server", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_port}", work
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["imgclf.models"].close()


def example_env() -> dict[str, str]:
    """The environment of an example: no proxy may route 127.0.0.1 elsewhere."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


# curl fails the example on any 4xx/5xx (printing the body) and never waits long.
CURL_PRELUDE = ('curl() { command curl --silent --show-error --fail-with-body --noproxy "*" --max-time 30 "$@"; '
                "echo; }\n")


def test_the_documented_examples_run_against_a_live_server(docs_server):
    """Run every runnable block (one server for all); report each failing block by its page and line."""
    address, work = docs_server
    failures = []
    for example in EXAMPLES:
        language, code = example.values
        if language == "sh" and shutil.which("curl") is None:
            pytest.skip("curl is not installed: the docs' curl examples need it")
        code = code.replace(DOCUMENTED_ADDRESS, address)
        command = (["bash", "-euo", "pipefail", "-c", CURL_PRELUDE + code] if language == "sh"
                   else [sys.executable, "-c", code])
        done = subprocess.run(command, cwd=work, env=example_env(), capture_output=True, text=True,
                              timeout=EXAMPLE_TIMEOUT_S)
        if done.returncode != 0:
            failures.append(f"{example.id}: exit {done.returncode}\nstdout: {done.stdout[-1500:]}\n"
                            f"stderr: {done.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert (work / "rose.annotated.jpg").read_bytes()[:2] == b"\xff\xd8"  # curl -o wrote the annotated JPEG


def test_the_http_reference_covers_every_operation_the_app_serves(tmp_path):
    from imgclf.service import create_app

    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    try:
        served = app.test_client().get("/openapi.json").get_json()
    finally:
        app.extensions["imgclf.models"].close()
    operations = {f"### `{method.upper()} {path}`" for path, item in served["paths"].items()
                  for method in item if method != "parameters"}
    headings = set(re.findall(r"^### `.*`$", reference.http_api_markdown(), flags=re.MULTILINE))
    assert headings == operations
