"""`imgclf predict --url`: the same output as a local model, through a real loopback server."""

import json
import socket
import threading
import time

import pytest
from PIL import Image
from werkzeug.serving import make_server

from imgclf.service import create_app
from imgclf.service.cli.client import PredictClient, ServiceError, predict_endpoint
from imgclf.service.cli.main import main


@pytest.fixture(scope="module")
def server_url(model_repo):
    app = create_app({"model_repository": model_repo, "load_in_background": False})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def files(model_repo, tmp_path_factory) -> list[str]:
    """Two good images per label, then a file that is not an image and one that does not exist."""
    root = model_repo.parent / "images"
    good = [str(p) for label in ("bubbles", "checkers", "stripes", "sunsets")
            for p in sorted((root / label).glob("*.jpg"))[:2]]
    bad = tmp_path_factory.mktemp("bad") / "not_an_image.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    return good + [str(bad), str(bad.parent / "missing.jpg")]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("extra", [[], ["--json"], ["--json", "--top-k", "2"], ["--unfamiliar-threshold", "-3.5"],
                                   ["--json", "--unfamiliar-threshold", "-3.5"]])
def test_output_equals_the_local_model_output(server_url, model_repo, files, capsys, extra):
    # Batches of one locally: the service predicts each request alone, so the floats are bit-identical.
    local = _run(capsys, "--model", str(model_repo / "shapes"), "--batch-size", "1", *extra, *files)
    remote = _run(capsys, "--url", server_url, *extra, *files)
    assert remote[:2] == local[:2]
    assert local[0] == 0 and "not an image Pillow can identify" in local[1] and "missing.jpg" in local[1]


def test_model_name_is_sent_and_annotations_come_from_the_server(server_url, files, tmp_path, capsys):
    code, out, _ = _run(capsys, "--url", server_url + "/", "--model", "shapes", "--json", "--annotate",
                        str(tmp_path / "ann"), *files[:2])
    assert code == 0 and [json.loads(line)["path"] for line in out.splitlines()] == files[:2]
    written = sorted((tmp_path / "ann").iterdir())
    assert [p.name for p in written] == sorted(f"{p.rsplit('/', 1)[1][:-4]}.annotated.jpg" for p in files[:2])
    assert all(Image.open(p).format == "JPEG" for p in written)


@pytest.mark.parametrize("argv, code, message", [
    (["--model", "nope"], 1, "answered 404: unknown model 'nope'"),
    (["--model", "models/shapes"], 2, "with --url, --model names a model on the service"),
    (["--font", "/no/such.ttf"], 2, "--font cannot be used with --url"),
    (["--top-k", "0"], 2, "--top-k must be at least 1"),
    (["--unfamiliar-threshold", "nan"], 2, "--unfamiliar-threshold must be a finite number; received nan"),
])
def test_bad_remote_arguments_are_errors(server_url, files, capsys, argv, code, message):
    result = _run(capsys, "--url", server_url, *argv, files[0])
    assert result[0] == code and message in result[2]


def test_each_image_says_whether_it_is_unfamiliar_in_json_and_in_a_table_column(model_repo, files, capsys):
    local = ["--model", str(model_repo / "shapes")]
    code, out, _ = _run(capsys, *local, "--json", *files[:4])
    answers = [json.loads(line) for line in out.splitlines()]
    threshold = json.loads((model_repo / "shapes" / "1" / "calibration.json").read_text())["unfamiliar"]["threshold"]
    for answer in answers:
        assert answer["unfamiliar_threshold"] == threshold
        assert answer["unfamiliar"] == (answer["unfamiliar_score"] > threshold)
        assert abs(sum(p["score"] for p in answer["predictions"]) - 1) <= 1e-6  # full float32, every label
    # A threshold between the scores flags exactly the images above it, in JSON and in the table's column.
    scores = sorted(a["unfamiliar_score"] for a in answers)
    middle = (scores[1] + scores[2]) / 2
    code, out, _ = _run(capsys, *local, "--json", "--unfamiliar-threshold", repr(middle), *files[:4])
    flags = {a["path"]: a["unfamiliar"] for a in map(json.loads, out.splitlines())}
    assert flags == {a["path"]: a["unfamiliar_score"] > middle for a in answers}
    code, out, _ = _run(capsys, *local, "--unfamiliar-threshold", repr(middle), *files[:4])
    lines = out.splitlines()
    for answer in answers:
        line = next(line for line in lines if line.startswith(answer["path"]))
        assert ("unfamiliar" in line.split("score")[0]) == flags[answer["path"]]
        assert f"score {answer['unfamiliar_score']:.3f} (threshold {middle:.3f})" in line
        rows = lines[lines.index(line) + 1:lines.index(line) + 5]
        shown = [(row.split()[1], row.split()[2]) for row in rows]
        assert shown == [(p["label"], f"{100 * p['score']:.1f}%") for p in answer["predictions"]]


def test_top_k_over_the_label_count_is_reported_per_image(server_url, files, capsys):
    code, out, _ = _run(capsys, "--url", server_url, "--top-k", "9", files[0])
    assert code == 1 and "top_k must be an integer between 1 and 4" in out


def test_model_or_url_is_required(files, capsys):
    code, _, err = _run(capsys, files[0])
    assert code == 2 and "--model is required unless --url is given" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_is_a_clear_error_at_once(files, capsys):
    started = time.monotonic()
    code, out, err = _run(capsys, "--url", f"http://127.0.0.1:{_free_port()}", *files[:3])
    assert code == 1 and "cannot reach http://127.0.0.1:" in err and "refused" in err.lower()
    assert out == "" and time.monotonic() - started < 5


def test_a_server_that_never_answers_times_out(files, capsys):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        code, _, err = _run(capsys, "--url", f"http://127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5",
                            files[0])
    assert code == 1 and "did not answer within 0.5 s" in err and time.monotonic() - started < 5


@pytest.mark.parametrize("url, expected", [
    ("http://h:1", "http://h:1/predict"), ("http://h:1/", "http://h:1/predict"),
    ("https://h/api/predict/", "https://h/api/predict"), ("http://h:1/api?x=1", "http://h:1/api/predict"),
])
def test_predict_endpoint(url, expected):
    assert predict_endpoint(url) == expected


@pytest.mark.parametrize("url", ["h:1", "ftp://h/", "http://", "/predict"])
def test_predict_endpoint_refuses_what_is_not_an_http_url(url):
    with pytest.raises(ValueError, match="--url must be"):
        predict_endpoint(url)


def test_a_url_without_the_service_is_a_service_error(server_url):
    client = PredictClient(server_url + "/elsewhere", timeout=5)
    with pytest.raises(ServiceError, match=r"/elsewhere/predict answered 404"):
        client.predict(b"x")
    client.close()


def test_the_api_key_comes_from_the_environment(model_repo, files, tmp_path, capsys, monkeypatch):
    from imgclf.service.access.api_keys import key_line

    keys = tmp_path / "keys.txt"
    keys.write_text(key_line("cli", "imgclf_cli-key") + "\n")
    app = create_app({"model_repository": model_repo, "load_in_background": False, "api_keys_file": str(keys)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        code, _, err = _run(capsys, "--url", url, files[0])
        assert code == 1 and "answered 401" in err
        monkeypatch.setenv("IMGCLF_API_KEY", "imgclf_cli-key")
        code, out, _ = _run(capsys, "--url", url, "--json", files[0])
        assert code == 0 and json.loads(out)["predictions"]
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["imgclf.models"].close()


def test_a_model_name_is_looked_up_in_the_repository_by_the_one_rule(model_repo, files, monkeypatch, capsys):
    by_path = _run(capsys, "--model", str(model_repo / "shapes"), "--json", *files[:2])
    assert _run(capsys, "--model", "shapes", "--model-dir", str(model_repo), "--json", *files[:2]) == by_path
    monkeypatch.setenv("IMGCLF_MODEL_REPOSITORY", str(model_repo))
    monkeypatch.chdir(model_repo.parent.parent)  # no ./shapes here
    assert _run(capsys, "--model", "shapes", "--json", *files[:2]) == by_path
    code, out, err = _run(capsys, "--model", "flowers", *files[:2])
    assert (code, out) == (1, "") and f"no model 'flowers' in '{model_repo}'" in err and "shapes (versions 1)" in err
