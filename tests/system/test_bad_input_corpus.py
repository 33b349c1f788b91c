"""Bad input never hurts the service or a batch job: the corpus of tests/bad_inputs.py through every route.

Each kind of input goes to ``POST /predict`` and the TF-Serving route of an
app in this process and of a real gunicorn server on 127.0.0.1 (byte-level
requests — chunked bodies, lying Content-Lengths — only to the latter), and
each file through ``imgclf featurize`` over one folder and ``imgclf predict``.
Every answer is the expected 4xx with a JSON ``{"error": ...}`` naming the
problem, or a prediction equal to the model's on the image decoded by the
reference path. Afterwards both servers still answer (gunicorn with the same
worker), and the model repository is byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import resource
import socket
import subprocess
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.errors import ImageTooLarge
from imgclf.featurizer.images.decode import decode_to_input
from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
from imgclf.featurizer.store.cache import FeatureCache
from imgclf.service import create_app
from imgclf.service.cli import serve as serve_cli
from imgclf.service.cli.main import main
from imgclf.training.classifier import load_model
from tests.support.bad_inputs import (
    FEATURIZE,
    IMAGE_CASES,
    MAX_PIXELS,
    MODEL,
    PREDICT,
    PREDICT_CLI,
    REQUEST_CASES,
    SERVICE_CONFIG,
    TFSERVING,
    WIRE_CASES,
    ImageCase,
    all_kinds,
    b64,
    good_jpeg,
)
from tests.support.processes import children_of, free_port

READY_WITHIN_S = 90
HTTP_TIMEOUT_S = 30
LABELS = 4  # the model_repo fixture's model has four labels; top_k=4 answers every probability
BOMB_SECONDS = 0.5  # a bomb is refused from its header: far less than this, and nothing decoded
BOMB_PYTHON_BYTES = 1 << 20  # tracemalloc peak while refusing one
BOMB_RSS_BYTES = 64 << 20  # growth of the process's peak resident memory while refusing one

VALID = [case for case in IMAGE_CASES if case.expect.ok]
BOMBS = [case for case in IMAGE_CASES if "bomb" in case.name]  # over any sane limit; nothing to decode


def _ids(cases) -> list[str]:
    return [case.name for case in cases]


# --- fixtures: one app, one gunicorn, one featurize run, one predict run ---------------------------------------


def tree_snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Return {relative path: (is a folder, size, mtime in ns)} of everything under ``root``."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        snapshot[path.relative_to(root).as_posix()] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return snapshot


@pytest.fixture(scope="module")
def repo_snapshot(model_repo):
    """The model repository and its training data (feature cache, images), as they were before any request."""
    return tree_snapshot(model_repo.parent)


@pytest.fixture(scope="module")
def reference(model_repo):
    """The exported model loaded on its own: probabilities of an image decoded by the reference path."""
    model = load_model(model_repo / MODEL / "1", max_pixels=10**12)

    def probabilities(data: bytes) -> np.ndarray:
        return model.predict_rgb([model.decode(data)])[0]  # decode_rgb, then the numpy resize

    probabilities.labels = model.labels
    return probabilities


@pytest.fixture(scope="module")
def app(model_repo, repo_snapshot):
    app = create_app({"model_repository": model_repo, "load_in_background": False, **SERVICE_CONFIG})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()






@dataclass
class Gunicorn:
    process: subprocess.Popen
    port: int
    log: Path
    worker: int  # the pid of its one worker

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def gunicorn(model_repo, repo_snapshot, tmp_path_factory):
    """The real server (`imgclf serve`'s gunicorn command), one worker, configured as the corpus expects."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    env = serve_cli.serve_env(model_repo, bind=f"127.0.0.1:{port}", workers=1, threads=4)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the conf makes a fresh one, under TMPDIR
    env.update({f"IMGCLF_{name.upper()}": str(value) for name, value in SERVICE_CONFIG.items()})
    env.update(TMPDIR=str(tmp), IMGCLF_GRACEFUL_TIMEOUT="5", IMGCLF_BATCH_MAX_WAIT_MS="1")
    log = tmp / "gunicorn.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(serve_cli.gunicorn_argv(), env=env, cwd=tmp, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            assert process.poll() is None, f"gunicorn exited early:\n{log.read_text(errors='replace')}"
            with contextlib.suppress(OSError):
                if get(port, "/readyz")[0] == 200:
                    break
            assert time.monotonic() < deadline, f"not ready in {READY_WITHIN_S} s:\n{log.read_text(errors='replace')}"
            time.sleep(0.25)
        workers = children_of(process.pid)
        assert len(workers) == 1, workers
        yield Gunicorn(process, port, log, workers[0])
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)


def exchange(port: int, head: str, body: bytes, half_close: bool = False) -> Answer:
    """Write one request byte for byte to 127.0.0.1:``port`` and read the answer until the server closes.

    The server may answer (413) and close before the whole body is sent: sending then stops, and the
    answer already received is read.
    """
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT_S) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                received += chunk
    seconds = time.perf_counter() - started
    header, _, payload = bytes(received).partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), received[:300]
    headers = {key.strip().lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
    if "content-length" in headers:
        payload = payload[:int(headers["content-length"])]
    return Answer(int(lines[0].split()[1]), headers.get("content-type", ""), payload, seconds)


def post(port: int, path: str, body: bytes, content_type: str | None) -> Answer:
    """POST with a Content-Length, and Connection: close."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    return exchange(port, "\r\n".join(head), body)


def in_process(client, path: str, body: bytes, content_type: str | None) -> Answer:
    started = time.perf_counter()
    response = client.post(path, data=body, content_type=content_type)
    return Answer(response.status_code, response.mimetype, response.get_data(), time.perf_counter() - started)


# --- checks -------------------------------------------------------------------------------------------------------


def check_error(answer: Answer, status: int, fragment: str, prefix: str = "") -> str:
    """Assert a JSON error with this status whose message holds ``fragment`` (and starts with ``prefix``)."""
    assert answer.status == status, answer.body[:500]
    assert answer.content_type.startswith("application/json"), answer.content_type
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert body["error"].startswith(prefix) and fragment in body["error"], body["error"]
    return body["error"]


def check_predict_answer(answer: Answer, expected: np.ndarray, labels: list[str]) -> None:
    """Assert a /predict answer (top_k = every label) equals the reference probabilities within 1e-5."""
    assert answer.status == 200, answer.body[:500]
    body = answer.json()
    assert (body["model"], body["version"]) == (MODEL, 1)
    got = {p["label"]: p["score"] for p in body["predictions"]}
    assert sorted(got) == sorted(labels)
    np.testing.assert_allclose([got[label] for label in labels], expected, rtol=0, atol=1e-5)


def check_tfserving_answer(answer: Answer, expected: list[np.ndarray]) -> None:
    """Assert a row-format TF-Serving answer equals the reference probabilities within 1e-5."""
    assert answer.status == 200, answer.body[:500]
    rows = answer.json()["predictions"]
    assert len(rows) == len(expected)
    for row, probabilities in zip(rows, expected):
        np.testing.assert_allclose(row["probabilities"], probabilities, rtol=0, atol=1e-5)
        assert row["classes"] == int(np.argmax(row["probabilities"]))


def tfserving_body(case: ImageCase) -> bytes:
    return json.dumps({"instances": [{"b64": b64(case.data)}]}).encode()


def multipart(case: ImageCase) -> tuple[bytes, str]:
    boundary = "imgclf-corpus-" + hashlib.sha256(case.data).hexdigest()[:16]
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{case.filename}"\r\n'
            f"Content-Type: {case.mimetype}\r\n\r\n").encode() + case.data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def check_image_case(send, case: ImageCase, reference) -> None:
    """Send one file to /predict (raw body and multipart) and the TF-Serving route; check each answer."""
    predict, tfserving = case.expected(PREDICT), case.expected(TFSERVING)
    multipart_body, multipart_type = multipart(case)
    for body, content_type in ((case.data, case.mimetype), (multipart_body, multipart_type)):
        answer = send(f"/predict?top_k={LABELS}", body, content_type)
        if predict.ok:
            check_predict_answer(answer, reference(case.data), reference.labels)
        else:
            check_error(answer, predict.status, predict.message)
        if predict.status == 413:
            assert answer.seconds < 2, f"{case.name}: refused in {answer.seconds:.2f} s"
    answer = send(f"/v1/models/{MODEL}:predict", tfserving_body(case), "application/json")
    if tfserving.ok:
        check_tfserving_answer(answer, [reference(case.data)])
    else:
        check_error(answer, tfserving.status, tfserving.message, prefix="instance 0: ")


def check_request_case(answer: Answer, case, reference) -> None:
    if case.expect.ok:  # the request cases that are valid carry good_jpeg()
        if "/v1/models/" in case.path:
            check_tfserving_answer(answer, [reference(good_jpeg())])
        else:
            check_predict_answer(answer, reference(good_jpeg()), reference.labels)
        return
    assert case.status_ok(answer.status), (answer.status, answer.body[:300])
    check_error(answer, answer.status, case.expect.message)


# --- the corpus ---------------------------------------------------------------------------------------------------


def test_the_corpus_has_at_least_25_kinds():
    kinds = all_kinds()
    assert len(kinds) == len(set(kinds)) >= 25
    assert len({case.filename for case in IMAGE_CASES}) == len(IMAGE_CASES)
    assert VALID and BOMBS


@pytest.mark.parametrize("case", IMAGE_CASES, ids=_ids(IMAGE_CASES))
def test_image_kinds_in_process(client, reference, case):
    check_image_case(lambda path, body, ctype: in_process(client, path, body, ctype), case, reference)


@pytest.mark.parametrize("case", REQUEST_CASES, ids=_ids(REQUEST_CASES))
def test_request_kinds_in_process(client, reference, case):
    check_request_case(in_process(client, case.path, case.body, case.content_type), case, reference)


@pytest.mark.parametrize("case", BOMBS, ids=_ids(BOMBS))
def test_bombs_are_refused_from_the_header_fast_without_allocating(case):
    data = case.data
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    tracemalloc.start()
    try:
        started = time.perf_counter()
        for max_pixels in (MAX_PIXELS, 50_000_000):  # the configured limit and the default one
            with pytest.raises(ImageTooLarge, match="pixels; the limit is"):
                decode_to_input(data, max_pixels=max_pixels, jpeg_dct_method="")
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert seconds < BOMB_SECONDS and peak < BOMB_PYTHON_BYTES and grown < BOMB_RSS_BYTES, (seconds, peak, grown)


def test_the_app_still_answers_after_the_corpus(client, reference):
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    answer = in_process(client, f"/predict?top_k={LABELS}", good_jpeg(), "image/jpeg")
    check_predict_answer(answer, reference(good_jpeg()), reference.labels)


# --- the same corpus against gunicorn, plus byte-level requests ---------------------------------------------------


@pytest.mark.parametrize("case", IMAGE_CASES, ids=_ids(IMAGE_CASES))
def test_image_kinds_on_gunicorn(gunicorn, reference, case):
    check_image_case(lambda path, body, ctype: post(gunicorn.port, path, body, ctype), case, reference)


@pytest.mark.parametrize("case", REQUEST_CASES, ids=_ids(REQUEST_CASES))
def test_request_kinds_on_gunicorn(gunicorn, reference, case):
    check_request_case(post(gunicorn.port, case.path, case.body, case.content_type), case, reference)


@pytest.mark.parametrize("case", WIRE_CASES, ids=_ids(WIRE_CASES))
def test_wire_kinds_on_gunicorn(gunicorn, reference, case):
    answer = exchange(gunicorn.port, case.head, case.body(), case.half_close)
    if case.expect.ok:
        check_predict_answer(answer, reference(good_jpeg()), reference.labels)
    elif case.json:
        check_error(answer, case.expect.status, case.expect.message)
    else:  # gunicorn's own page
        assert answer.status == case.expect.status and case.expect.message in answer.body.decode(errors="replace")
    assert answer.seconds < 10, f"{case.name}: answered in {answer.seconds:.1f} s"


def test_gunicorn_still_answers_with_the_same_worker(gunicorn, reference):
    assert get(gunicorn.port, "/healthz")[0] == 200 and get(gunicorn.port, "/readyz")[0] == 200
    answer = post(gunicorn.port, f"/predict?top_k={LABELS}", good_jpeg(), "image/jpeg")
    check_predict_answer(answer, reference(good_jpeg()), reference.labels)
    assert gunicorn.process.poll() is None
    assert children_of(gunicorn.process.pid) == [gunicorn.worker]
    log = gunicorn.log_text()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    assert log.count("Booting worker") == 1, log[-3000:]


# --- imgclf featurize and imgclf predict over the corpus as files -------------------------------------------------


GOOD_PHOTOS = 4  # one demo image per class of the model_repo fixture, added to the corpus folder


@pytest.fixture(scope="module")
def corpus_dir(model_repo, tmp_path_factory) -> Path:
    """A labelled folder: corpus/<every image kind> and photos/<four good images>."""
    root = tmp_path_factory.mktemp("corpus") / "images"
    (root / "corpus").mkdir(parents=True)
    for case in IMAGE_CASES:
        (root / "corpus" / case.filename).write_bytes(case.data)
    (root / "photos").mkdir()
    for label_dir in sorted((model_repo.parent / "images").iterdir()):
        photo = sorted(label_dir.glob("*.jpg"))[0]
        (root / "photos" / f"{label_dir.name}.jpg").write_bytes(photo.read_bytes())
    return root


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def featurize(image_dir: Path, graph: Path, work: Path) -> tuple[int, str, str, dict]:
    report = work / "report.json"
    code, out, err = run_cli(["featurize", str(image_dir), "--graph", str(graph), "--cache", str(work / "cache.sqlite"),
                              "--report", str(report), "--precision", "fp32", "--max-pixels", str(MAX_PIXELS),
                              "--quiet"])
    return code, out, err, json.loads(report.read_text()) if report.exists() else {}


@pytest.fixture(scope="module")
def featurized(corpus_dir, legacy_graph_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("featurize")
    return (*featurize(corpus_dir, legacy_graph_path, work), work / "cache.sqlite")


def test_featurize_skips_and_reports_each_bad_file_and_caches_the_rest(featurized, corpus_dir, legacy_graph_path):
    code, out, err, report, cache_path = featurized
    bad = [case for case in IMAGE_CASES if not case.expected(FEATURIZE).ok]
    good = [case for case in IMAGE_CASES if case.expected(FEATURIZE).ok]
    assert code == 0, (out, err)  # documented: 0 when any image was featurized
    assert report["images"] == len(IMAGE_CASES) + GOOD_PHOTOS
    assert report["featurized"] == len(good) + GOOD_PHOTOS
    assert report["label_names"] == ["corpus", "photos"]
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert len(skipped) == len(report["skipped"]) == len(bad)
    for case in bad:
        reason = skipped[f"corpus/{case.filename}"]
        assert case.expected(FEATURIZE).message in reason, (case.name, reason)
        assert f"  corpus/{case.filename}: {reason}" in out.splitlines()
    assert f"featurized {len(good) + GOOD_PHOTOS} of {len(IMAGE_CASES) + GOOD_PHOTOS} images" in out
    assert f"skipped {len(bad)} file(s):" in out

    # The cache holds exactly the good files, with the vectors the featurizer computes for them on its own.
    files = [corpus_dir / "corpus" / case.filename for case in good] + sorted((corpus_dir / "photos").iterdir())
    featurizer = Featurizer(FeaturizerConfig(legacy_graph_path, precision="fp32"))
    try:
        with FeatureCache(cache_path, readonly=True) as cache:
            keys = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in files}
            assert cache.keys(featurizer.fingerprint) == set(keys)
            cached = cache.get_many(featurizer.fingerprint, keys)
        for key, path in keys.items():
            expected = featurizer.run(featurizer.to_input(featurizer.decode(path.read_bytes()))[None])[0]
            np.testing.assert_allclose(cached[key], expected, rtol=1e-4, atol=1e-5, err_msg=path.name)
    finally:
        featurizer.close()


def test_featurize_of_only_bad_files_exits_1(legacy_graph_path, tmp_path):
    root = tmp_path / "images" / "corpus"
    root.mkdir(parents=True)
    bad = [case for case in IMAGE_CASES if not case.expected(FEATURIZE).ok]
    for case in bad:
        (root / case.filename).write_bytes(case.data)
    code, out, err, report = featurize(root.parent, legacy_graph_path, tmp_path)
    assert code == 1 and "no image could be featurized" in err
    assert report["featurized"] == 0 and len(report["skipped"]) == len(bad)


def test_predict_cli_prints_each_good_result_and_each_bad_files_error(corpus_dir, model_repo, reference):
    files = sorted((corpus_dir / "corpus").iterdir()) + sorted((corpus_dir / "photos").iterdir())
    code, out, err = run_cli(["predict", "--model", str(model_repo / MODEL), "--max-pixels", str(MAX_PIXELS),
                              "--json", *map(str, files)])
    assert code == 0, err  # documented: 0 when any image was predicted
    lines = [json.loads(line) for line in out.splitlines()]
    by_path = {line["path"]: line for line in lines}
    assert len(lines) == len(by_path) == len(files)
    for path in files:
        case = next((c for c in IMAGE_CASES if c.filename == path.name), None)
        expect = case.expected(PREDICT_CLI) if case is not None else None
        line = by_path[str(path)]
        if expect is None or expect.ok:
            assert set(line) == {"path", "predictions", "unfamiliar", "unfamiliar_score", "unfamiliar_threshold"}, line
            got = {p["label"]: p["score"] for p in line["predictions"]}
            np.testing.assert_allclose([got[label] for label in reference.labels], reference(path.read_bytes()),
                                       rtol=0, atol=1e-5, err_msg=path.name)
        else:
            assert set(line) == {"path", "error"} and expect.message in line["error"], (path.name, line)
    # Predictions first (in input order), then the errors.
    assert [("error" in line) for line in lines] == sorted("error" in line for line in lines)


def test_predict_cli_of_only_bad_files_exits_1_and_names_each(corpus_dir, model_repo):
    bad = [case for case in IMAGE_CASES if not case.expected(PREDICT_CLI).ok]
    paths = [corpus_dir / "corpus" / case.filename for case in bad]
    code, out, err = run_cli(["predict", "--model", str(model_repo / MODEL), "--max-pixels", str(MAX_PIXELS),
                              *map(str, paths)])
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == len(bad)
    for case, path, line in zip(bad, paths, lines):
        assert line.startswith(f"skipped {path}: ") and case.expected(PREDICT_CLI).message in line, line


# --- last: nothing was written ------------------------------------------------------------------------------------


def test_nothing_was_written_to_the_model_repository(model_repo, repo_snapshot):
    assert tree_snapshot(model_repo.parent) == repo_snapshot
    assert not [p for p in model_repo.rglob("*") if p.name.endswith((".tmp", ".lock", "-journal"))]


def test_no_file_is_checked_in_for_the_corpus():
    here = Path(__file__).parent
    assert not [p for p in os.listdir(here) if p.lower().endswith((".jpg", ".png", ".gif", ".tif", ".webp", ".bmp"))]
