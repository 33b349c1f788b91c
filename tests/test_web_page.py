"""The upload page, driven in a real headless Chromium against the app on a loopback server.

The browser is Debian's ``chromium`` (``make test`` installs it when it can),
driven by Playwright without Playwright's own browser downloads. Without
either, the browser tests skip and say why; the static-file test still runs.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
from pathlib import Path

import pytest

from service import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]  # the page is on 127.0.0.1: never route it through a proxy
TIMEOUT_MS = 15_000
# Labels that would become markup if the page ever inserted them as HTML.
HOSTILE_LABELS = ["<script>alert(1)</script>", "<b>bold</b>", '<img src=x onerror="window.pwned=1">']
# Set to keep the screenshots (web_page.png, web_page_phone.png) for a look; else they go to tmp_path.
SCREENSHOT_DIR = os.environ.get("IMGCLF_SCREENSHOT_DIR", "")


@pytest.fixture(scope="module")
def repo(model_repo, legacy_graph_path, tmp_path_factory):
    """A repository with "shapes" and "hostile": labels made of markup, built on a graph named "random"."""
    from featurizer.extractor import Featurizer, FeaturizerConfig
    from tests.test_export import make_head
    from training.export import export_model

    root = tmp_path_factory.mktemp("web_repo")
    shutil.copytree(model_repo / "shapes", root / "models" / "shapes")
    # The page tells the demo's stand-in graph by its file name, as the model card records it.
    graph = shutil.copyfile(legacy_graph_path, root / "tiny_random.pb")
    featurizer = Featurizer(FeaturizerConfig(graph, precision="fp32"))
    try:
        head = make_head(featurizer.dim, len(HOSTILE_LABELS), seed=3)
        export_model(root / "models", "hostile", head, featurizer, HOSTILE_LABELS, {})
    finally:
        featurizer.close()
    return root / "models"


@pytest.fixture(scope="module")
def app(repo):
    app = create_app({"model_repository": repo, "load_in_background": False})
    yield app
    app.extensions["imgclf.registry"].close()


@pytest.fixture(scope="module")
def base_url(app):
    """Serve the app on 127.0.0.1 (a free port) in a thread; return its URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="web-page-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root with apt-get")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url):
    """A fresh page in its own context; fails the test on a script error, a CSP refusal or a dialog."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []

    def on_console(message):
        if "Content Security Policy" in message.text:  # the page broke its own policy
            problems.append(f"console: {message.text}")

    def on_dialog(dialog):  # an alert() would mean markup from the server ran as script
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", on_console)
    page.on("dialog", on_dialog)
    yield page
    context.close()
    assert not problems


def screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(Path(SCREENSHOT_DIR or tmp_path) / name), full_page=True)


def open_page(page, base_url: str):
    page.goto(base_url + "/")
    # A function, not an expression string: Playwright evals expressions in the page, which its CSP forbids.
    page.wait_for_function("() => !document.getElementById('model-select').disabled")
    return page


def sunset(model_repo) -> Path:
    return sorted((model_repo.parent / "images" / "sunsets").glob("*.jpg"))[0]


def wait_for_result(page) -> list[tuple[str, str]]:
    """Wait for the predictions and the annotated image; return [(label, percentage text)] as shown."""
    page.locator("#predictions li").first.wait_for(state="visible")
    page.wait_for_function("() => { const img = document.getElementById('annotated-image');"
                           " return img.complete && img.naturalWidth > 0; }")
    rows = page.locator("#predictions li")
    return [(rows.nth(i).locator(".prediction-label").text_content(),
             rows.nth(i).locator(".prediction-score").text_content()) for i in range(rows.count())]


def served_predictions(app, data: bytes, model: str, top_k: int) -> list[dict]:
    response = app.test_client().post(f"/predict?model={model}&top_k={top_k}",
                                      data={"image": (io.BytesIO(data), "photo.jpg")})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["predictions"]


def test_page_and_static_files_are_served_from_the_app(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})  # no model needed
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html
    assert "http://" not in html and "https://" not in html  # no CDN: the page works offline
    for path, mimetype in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == mimetype, path
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/static/missing.js").status_code == 404


def test_models_are_listed_in_a_labelled_selector(page, base_url):
    open_page(page, base_url)
    select = page.get_by_label("Served model")
    assert select.locator("option").all_text_contents() == ["hostile (version 1)", "shapes (version 1)"]
    select.select_option("shapes")
    assert "image-classifier" in page.locator("#model-info").text_content()
    assert "bubbles, checkers, stripes, sunsets" in page.locator("#model-info").text_content()
    assert page.locator("#model-notice").is_hidden()  # built on the legacy graph, not a random one


def test_a_chosen_photo_shows_the_annotated_image_and_the_top_labels(page, base_url, app, model_repo, tmp_path):
    image = sunset(model_repo)
    expected = served_predictions(app, image.read_bytes(), "shapes", 4)
    open_page(page, base_url)
    page.get_by_label("Served model").select_option("shapes")
    page.get_by_label("Labels to show").fill("4")
    page.get_by_label("Choose a photo").set_input_files(image)
    shown = wait_for_result(page)
    assert [label for label, _ in shown] == [p["label"] for p in expected]
    assert shown[0][0] == expected[0]["label"]
    for (_, text), p in zip(shown, expected):
        assert text.endswith("%") and abs(float(text[:-1]) - 100 * p["score"]) <= 0.051
    widths = page.eval_on_selector_all("#predictions .bar", "bars => bars.map(b => parseFloat(b.style.width))")
    assert widths == pytest.approx([100 * p["score"] for p in expected], abs=1e-3)
    assert expected[0]["label"] in page.get_by_role("img").get_attribute("alt")
    assert page.locator("#error").is_hidden()
    screenshot(page, tmp_path, "web_page.png")


def test_a_dropped_photo_is_classified(page, base_url, app, model_repo):
    data = sunset(model_repo).read_bytes()
    expected = served_predictions(app, data, "shapes", 4)
    open_page(page, base_url)
    page.get_by_label("Served model").select_option("shapes")
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
        const zone = document.getElementById("drop-zone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
        }
    }""", base64.b64encode(data).decode("ascii"))
    shown = wait_for_result(page)
    assert shown[0][0] == expected[0]["label"]
    assert "dropped.jpg" in page.locator("#annotated-image").get_attribute("alt")


def test_a_file_that_is_not_an_image_shows_the_service_error(page, base_url, app):
    notes = b"shopping list: eggs, milk\n"
    served = app.test_client().post("/predict?model=shapes", data={"image": (io.BytesIO(notes),
                                                                              "notes.txt", "text/plain")})
    assert served.status_code in (400, 415)
    open_page(page, base_url)
    page.get_by_label("Served model").select_option("shapes")
    page.get_by_label("Choose a photo").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": notes})
    error = page.get_by_role("alert")
    error.wait_for(state="visible")
    assert error.text_content() == served.get_json()["error"]
    assert page.locator("#result").is_hidden()


def test_labels_from_the_model_are_shown_as_text_never_as_markup(page, base_url, model_repo):
    open_page(page, base_url)
    page.get_by_label("Served model").select_option("hostile")
    page.get_by_label("Labels to show").fill(str(len(HOSTILE_LABELS)))
    page.get_by_label("Choose a photo").set_input_files(sunset(model_repo))
    shown = wait_for_result(page)
    assert sorted(label for label, _ in shown) == sorted(HOSTILE_LABELS)
    assert all(label in page.locator("#model-info").text_content() for label in HOSTILE_LABELS)
    # Markup in a label made no element: no <b>, and no <script> or <img> beyond the page's own.
    assert page.locator("b").count() == 0
    assert page.locator("script").count() == 1 and page.locator("img").count() == 1
    assert page.evaluate("window.pwned") is None
    # The model card says it was built on "tiny_random.pb": the page warns that its predictions mean nothing.
    notice = page.locator("#model-notice")
    notice.wait_for(state="visible")
    assert "random-weight" in notice.text_content()


def test_models_of_another_kind_get_a_note_instead_of_the_upload_form(page, base_url):
    listed = {"models": [{"name": "prices", "version": 2, "labels": [], "kind": "regression"},
                         {"name": "shapes", "version": 1, "labels": ["sunsets"], "kind": "image-classifier"}]}
    page.route("**/v1/models", lambda route: route.fulfill(json=listed))
    open_page(page, base_url)
    assert page.get_by_label("Served model").input_value() == "prices"
    note = page.locator("#other-note")
    assert note.is_visible() and "regression" in note.text_content()
    assert "POST /v1/models/prices:predict" in note.text_content()
    assert page.locator("#section-image-classifier").is_hidden()
    page.get_by_label("Served model").select_option("shapes")
    assert page.locator("#section-image-classifier").is_visible() and note.is_hidden()


def test_page_fits_a_phone_and_works_from_the_keyboard(browser, base_url, model_repo, tmp_path):
    context = browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # Intercepting file choosers is switched on by the first listener, asynchronously: switch it on
    # before the page can open one, or the picker opened by Enter may go by unseen.
    page.on("filechooser", lambda chooser: None)
    try:
        open_page(page, base_url)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "model-select"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "top-k"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "image-input"
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")  # opens the picker, as Space and a click on the drop zone do
        chooser.value.set_files(sunset(model_repo))
        wait_for_result(page)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        image_width = page.evaluate("document.getElementById('annotated-image').getBoundingClientRect().width")
        assert 0 < image_width <= 360
        screenshot(page, tmp_path, "web_page_phone.png")
    finally:
        context.close()
