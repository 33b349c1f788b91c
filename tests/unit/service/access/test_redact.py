"""No server path in answers: the text rules, then the real answers of a repository that fails to load."""

import json
import shutil
from pathlib import Path

import pytest

from imgclf.service import create_app
from imgclf.service.access.redact import redact_text, repository_roots


@pytest.mark.parametrize("text, expected", [
    ("'/srv/models/flowers/3' is not an exported model version", "'<model repository>/flowers/3' is not an "
                                                                 "exported model version"),
    ("no model 'x' in '/srv/models'; models there: a", "no model 'x' in '<model repository>'; models there: a"),
    ("graph /data/graphs/inception.pb: bad", "graph inception.pb: bad"),
    ("[Errno 13] Permission denied: '/home/u/.cache/k.txt'", "[Errno 13] Permission denied: 'k.txt'"),
    (r"cannot open C:\Users\me\models\a.pb", "cannot open a.pb"),
    ("send it to /v1/models/quadratic:predict", "send it to /v1/models/quadratic:predict"),
    ("use /gpu:N or /cpu:0; ops DecodeJpeg/contents:0", "use /gpu:N or /cpu:0; ops DecodeJpeg/contents:0"),
    ("see https://example.com/a/b/c", "see https://example.com/a/b/c"),
    ("/srv/models-old/x/1", "1"),  # not the repository: a longer name
])
def test_redact_text(text, expected):
    assert redact_text(text, ("/srv/models",)) == expected


def test_repository_roots_are_every_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    roots = repository_roots(Path("models"))
    assert str(tmp_path / "models") in roots and "models" in roots


@pytest.fixture(scope="module")
def broken(model_repo, tmp_path_factory):
    """An app pinned to a version its repository lacks: loading fails with the repository's path in the message."""
    repo = tmp_path_factory.mktemp("broken") / "models"
    shutil.copytree(model_repo / "shapes", repo / "shapes")
    app = create_app({"model_repository": repo, "load_in_background": False, "model_versions": {"shapes": 7}})
    yield app, repo
    app.extensions["imgclf.models"].close()


def test_failed_loading_shows_no_path_in_readyz_or_503s(broken):
    app, repo = broken
    client = app.test_client()
    assert str(repo) in app.extensions["imgclf.models"].error  # the log and the registry keep it
    for path in ("/readyz", "/v2/health/ready", "/v1/models", "/v1/models/shapes/metadata"):
        response = client.get(path)
        assert response.status_code == 503, path
        text = response.get_data(as_text=True)
        assert "/tmp" not in text and str(repo) not in text, (path, text)
        assert "no version 7 in <model repository>" in text, (path, text)
        json.loads(text)


def test_model_metadata_card_shows_file_names_not_paths(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False})
    try:
        body = app.test_client().get("/v1/models/shapes/metadata").get_json()
        card = json.dumps(body["model_card"])
        assert "/tmp" not in card and str(model_repo.parent) not in card
        assert body["model_card"]["featurizer"]["graph"] == "legacy_inception.pb"
        assert body["model_card"]["featurizer"]["contract"]["jpeg_input"] == "DecodeJpeg/contents:0"
    finally:
        app.extensions["imgclf.models"].close()
