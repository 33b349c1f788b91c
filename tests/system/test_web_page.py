"""The page, driven in a real headless Chromium against the app on a loopback server.

Image classifiers get the photo upload; digit classifiers a canvas to draw on; the
regression model a form for x. The secondary models are the briefly trained ones of
``secondary_repo``: the tests check that the page shows what the API answers for
the same input, not that the models are right.

The browser is Debian's ``chromium`` (``make test`` installs it when it can),
driven by Playwright without Playwright's own browser downloads. Without
either, the browser tests skip and say why; the static-file test still runs.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import shutil
import threading
from pathlib import Path

import pytest

from imgclf.service import create_app

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
    from imgclf.featurizer.runtime.featurizer import Featurizer, FeaturizerConfig
    from imgclf.training.export import export_model
    from tests.unit.training.test_export import make_head

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
    app.extensions["imgclf.models"].close()


@contextlib.contextmanager
def serving(app):
    """Serve the app on 127.0.0.1 (a free port) in a thread; yield its URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="web-page-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


@pytest.fixture(scope="module")
def base_url(app):
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium when run as root with apt-get")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (test extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def checked_page(browser, **context_options):
    """Yield a fresh page in its own context; fail on a script error, a CSP refusal or a dialog."""
    context = browser.new_context(**{"viewport": {"width": 1100, "height": 900}, **context_options})
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
    try:
        yield page
    finally:
        context.close()
    assert not problems


@pytest.fixture
def page(browser):
    """A fresh desktop-sized page; the test fails on a script error, a CSP refusal or a dialog."""
    with checked_page(browser) as page:
        yield page


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


def test_an_unfamiliar_photo_gets_a_notice_and_the_model_shows_its_calibration(page, base_url, app, model_repo,
                                                                              tmp_path):
    from imgclf.featurizer.images.unfamiliar import unfamiliar_pictures

    client = app.test_client()
    noise = []  # pictures of none of the classes, beside the model's own photos
    for index, data in enumerate(unfamiliar_pictures("noise", 3) + unfamiliar_pictures("textures", 3)):
        noise.append(tmp_path / f"unfamiliar-{index}.jpg")
        noise[-1].write_bytes(data)
    answers = {path: client.post("/predict?model=shapes", data=path.read_bytes(),
                                 content_type="application/octet-stream").get_json()
               for path in [*sorted((model_repo.parent / "images").glob("*/*.jpg")), *noise]}
    flagged = [path for path, answer in answers.items() if answer["unfamiliar"]]
    familiar = [path for path, answer in answers.items() if not answer["unfamiliar"]]
    if not flagged or not familiar:
        pytest.skip(f"the test model flags {len(flagged)} of its {len(answers)} photos: no pair to compare")
    card = client.get("/v1/models/shapes/metadata").get_json()["model_card"]["calibration"]
    open_page(page, base_url)
    page.get_by_label("Served model").select_option("shapes")
    text = page.locator("#calibration-text")
    text.wait_for(state="visible")
    assert f"{card['test']['ece_before']:.3f} before, {card['test']['ece_after']:.3f} after" in text.text_content()
    page.locator("#reliability-details summary").click()
    page.wait_for_function("() => { const img = document.querySelector('#reliability img');"
                           " return img && img.complete && img.naturalWidth > 0; }")
    assert "Reliability diagram of shapes version 1" in page.locator("#reliability img").get_attribute("alt")
    page.get_by_label("Choose a photo").set_input_files(flagged[0])
    wait_for_result(page)
    notice = page.locator("#unfamiliar-notice")
    notice.wait_for(state="visible")
    score = answers[flagged[0]]["unfamiliar_score"]
    assert "none of the 4 labels fits well" in notice.text_content() and f"{score:.3f}" in notice.text_content()
    page.get_by_label("Choose a photo").set_input_files(familiar[0])
    page.wait_for_function("() => document.getElementById('annotated-image').alt.includes("
                           + repr(familiar[0].name) + ")")
    assert notice.is_hidden()


def test_models_of_another_kind_get_a_note_instead_of_the_upload_form(page, base_url):
    listed = {"models": [{"name": "boxes", "version": 2, "labels": [], "kind": "object-detector"},
                         {"name": "prices", "version": 1, "labels": [], "kind": "regression"},
                         {"name": "shapes", "version": 1, "labels": ["sunsets"], "kind": "image-classifier"}]}
    page.route("**/v1/models", lambda route: route.fulfill(json=listed))
    open_page(page, base_url)
    assert page.get_by_label("Served model").input_value() == "shapes"  # a photo classifier comes first
    page.get_by_label("Served model").select_option("boxes")
    note = page.locator("#other-note")
    assert note.is_visible() and "object-detector" in note.text_content()
    assert "POST /v1/models/boxes:predict" in note.text_content()
    assert page.locator("#section-image-classifier").is_hidden()
    # A regression model the page knows no curve for still gets the form, without the curve.
    page.get_by_label("Served model").select_option("prices")
    assert page.locator("#section-regression").is_visible() and note.is_hidden()
    assert page.locator("#regression-hint").text_content() == "prices answers y for a number x."
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


# --- the secondary models: the digit canvas and the regression form -----------------------------------------------

DIGIT_MODELS = ["lenet5", "mnist-mlp"]
SECTIONS = ["image-classifier", "digit-classifier", "regression"]
SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]  # stroke points as fractions of the canvas


@pytest.fixture(scope="module")
def secondary_app(secondary_repo, model_repo, tmp_path_factory):
    """An app serving the three secondary models and the "shapes" image classifier."""
    combined = tmp_path_factory.mktemp("web_combined") / "models"
    shutil.copytree(secondary_repo, combined)
    shutil.copytree(model_repo / "shapes", combined / "shapes")
    app = create_app({"model_repository": combined, "load_in_background": False})
    yield app
    app.extensions["imgclf.models"].close()


@pytest.fixture(scope="module")
def secondary_url(secondary_app):
    with serving(secondary_app) as url:
        yield url


def predict_requests(page) -> list:
    """Collect the page's requests to the TF-Serving predict route, from now on."""
    requests: list = []
    page.on("request", lambda request: requests.append(request) if ":predict" in request.url else None)
    return requests


def canvas_points(page, points) -> list[tuple[float, float]]:
    """Return the points (fractions of the canvas) in viewport pixels, the canvas scrolled into view."""
    canvas = page.locator("#digit-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    return [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]


def draw_with_mouse(page, points) -> None:
    """Draw one stroke through the points (fractions of the canvas) with the mouse button held."""
    xy = canvas_points(page, points)
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def draw_with_finger(page, points, steps: int = 8) -> None:
    """Draw one stroke with a finger: real touch input through the DevTools protocol (pointerType touch)."""
    xy = canvas_points(page, points)
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": xy[0][0], "y": xy[0][1]}]})
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
            for i in range(1, steps + 1):
                x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    finally:
        cdp.detach()


def canvas_png_b64(page) -> str:
    data_url = page.evaluate("() => document.getElementById('digit-canvas').toDataURL('image/png')")
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return data_url[len(prefix):]


def served_digit(app, png_b64: str, model: str) -> dict:
    response = app.test_client().post(f"/v1/models/{model}:predict", json={"instances": [{"b64": png_b64}]})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["predictions"][0]


def shown_digits(page) -> dict[str, tuple[str, list[str]]]:
    """Wait for every digit model's card; return {model: (digit shown, [10 probability texts])}."""
    for name in DIGIT_MODELS:
        page.locator(f'.digit-result[data-model="{name}"] .digit-class').wait_for()
    shown = {}
    for card in page.locator(".digit-result").all():
        values = card.locator(".digit-probability .digit-value").all_text_contents()
        shown[card.get_attribute("data-model")] = (card.locator(".digit-class").text_content(), values)
    return shown


def assert_shows_the_api_answer(page, app) -> None:
    png = canvas_png_b64(page)
    shown = shown_digits(page)
    assert sorted(shown) == DIGIT_MODELS
    for name, (digit, values) in shown.items():
        served = served_digit(app, png, name)
        assert digit == str(served["classes"]), name
        assert values == [f"{100 * p:.1f}%" for p in served["probabilities"]], name
        labels = page.locator(f'.digit-result[data-model="{name}"] .digit-label').all_text_contents()
        assert labels == [str(d) for d in range(10)]


def canvas_is_blank(page) -> bool:
    return page.evaluate("""() => {
        const canvas = document.getElementById('digit-canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        return pixels.every((v) => v === 255);
    }""")


def test_the_selector_lists_every_model_and_shows_its_section(page, secondary_url):
    open_page(page, secondary_url)
    select = page.get_by_label("Served model")
    assert select.locator("option").all_text_contents() == [
        "lenet5 (version 1)", "mnist-mlp (version 1)", "quadratic (version 1)", "shapes (version 1)"]
    assert select.input_value() == "shapes"  # the page opens on the photo classifier
    for name, kind in (("lenet5", "digit-classifier"), ("quadratic", "regression"), ("mnist-mlp", "digit-classifier"),
                       ("shapes", "image-classifier")):
        select.select_option(name)
        assert kind in page.locator("#model-info").text_content()
        assert page.locator(f"#section-{kind}").is_visible(), name
        assert all(page.locator(f"#section-{other}").is_hidden() for other in SECTIONS if other != kind), name
        assert page.locator("#section-other").is_hidden()


def test_a_drawn_digit_is_read_by_every_digit_model_as_the_api_reads_its_png(page, secondary_url, secondary_app,
                                                                           tmp_path):
    open_page(page, secondary_url)
    page.get_by_label("Served model").select_option("mnist-mlp")
    requests = predict_requests(page)
    draw_with_mouse(page, SEVEN)  # recognised by itself shortly after the stroke ends
    assert_shows_the_api_answer(page, secondary_app)
    # The chosen model comes first; each model was asked once, with the PNG without its data: prefix.
    assert page.locator(".digit-result").evaluate_all("cards => cards.map(c => c.dataset.model)") == [
        "mnist-mlp", "lenet5"]
    assert sorted(r.url.rsplit("/", 1)[1] for r in requests) == ["lenet5:predict", "mnist-mlp:predict"]
    assert all(r.post_data_json == {"instances": [{"b64": canvas_png_b64(page)}]} for r in requests)
    bars = page.locator('.digit-result[data-model="lenet5"] .bar')
    assert bars.count() == 10
    widths = bars.evaluate_all("bars => bars.map(b => parseFloat(b.style.width))")
    assert sum(widths) == pytest.approx(100, abs=0.01) and max(widths) > 10
    assert page.locator("#digit-error").is_hidden()
    screenshot(page, tmp_path, "web_page_digits.png")


def test_clear_empties_the_canvas_and_a_blank_canvas_sends_nothing(page, secondary_url):
    open_page(page, secondary_url)
    page.get_by_label("Served model").select_option("lenet5")
    requests = predict_requests(page)
    page.get_by_role("button", name="Recognise").click()  # nothing drawn yet
    assert page.locator("#digit-status").text_content() == "Draw a digit first."
    draw_with_mouse(page, [(0.5, 0.15), (0.5, 0.85)])  # a "1", recognised by itself
    shown_digits(page)
    assert len(requests) == 2 and not canvas_is_blank(page)
    page.get_by_role("button", name="Recognise").click()  # asks again at once
    page.wait_for_function("() => document.getElementById('digit-status').textContent === 'Recognised.'")
    assert len(requests) == 4 and page.locator(".digit-result .digit-class").count() == 2
    page.get_by_role("button", name="Clear").click()
    assert canvas_is_blank(page)
    assert page.locator(".digit-result").count() == 0 and page.locator("#digit-status").text_content() == ""
    page.get_by_role("button", name="Recognise").click()
    assert page.locator("#digit-status").text_content() == "Draw a digit first."
    page.wait_for_timeout(800)  # longer than the automatic recognition's delay
    assert len(requests) == 4 and page.locator(".digit-result").count() == 0


def test_a_digit_model_error_is_shown_as_text_beside_the_other_models_answer(page, secondary_url):
    page.route("**/v1/models/lenet5:predict",
               lambda route: route.fulfill(status=503, json={"error": "<b>still loading</b>"}))
    open_page(page, secondary_url)
    page.get_by_label("Served model").select_option("lenet5")
    draw_with_mouse(page, SEVEN)
    error = page.get_by_role("alert")
    error.wait_for(state="visible")
    assert error.text_content() == "lenet5: <b>still loading</b>"
    assert page.locator("b").count() == 0
    page.locator('.digit-result[data-model="mnist-mlp"] .digit-class').wait_for()
    assert page.locator('.digit-result[data-model="lenet5"] .digit-class').count() == 0


def test_the_quadratic_form_shows_y_beside_the_curve(page, secondary_url, secondary_app, tmp_path):
    served = secondary_app.test_client().post("/v1/models/quadratic:predict", json={"instances": [[3]]})
    y = served.get_json()["predictions"][0][0]
    open_page(page, secondary_url)
    page.get_by_label("Served model").select_option("quadratic")
    assert "-20 to 20" in page.locator("#regression-hint").text_content()
    requests = predict_requests(page)
    x = page.get_by_label("x", exact=True)
    button = page.get_by_role("button", name="Predict y")
    error = page.locator("#regression-error")

    button.click()  # empty
    assert error.text_content() == "Enter a number for x." and x.get_attribute("aria-invalid") == "true"
    x.focus()
    page.keyboard.type("abc")  # a number field keeps no letters but "e"
    x.press("Enter")
    assert error.is_visible() and "number" in error.text_content()
    x.fill("")
    page.keyboard.type("1e")  # not a number yet: the field reports bad input
    button.click()
    assert error.text_content() == "x must be a number, such as 3, -2.5 or 1e3."
    assert requests == [] and page.locator("#regression-result").is_hidden()

    x.fill("3")
    x.press("Enter")
    page.locator("#regression-result").wait_for()
    assert page.locator("#regression-y").text_content() == f"{y:.3f}"
    assert page.locator("#regression-curve-label").text_content() == "curve 0.2x² − x + 1"
    assert page.locator("#regression-curve").text_content() == "-0.200"
    assert page.locator("#regression-diff").text_content() == f"{y - (0.2 * 9 - 3 + 1):.3f}"
    assert error.is_hidden() and page.locator("#regression-range-note").is_hidden()
    assert [r.post_data_json for r in requests] == [{"instances": [[3]]}]

    x.fill("25")  # outside the training range: allowed, with a note
    button.click()
    page.locator("#regression-range-note").wait_for()
    assert "outside the range" in page.locator("#regression-range-note").text_content()
    assert page.locator("#regression-curve").text_content() == "101.000"
    screenshot(page, tmp_path, "web_page_quadratic.png")

    page.route("**/v1/models/quadratic:predict",
               lambda route: route.fulfill(status=400, json={"error": "<b>bad</b>"}))
    button.click()
    error.wait_for(state="visible")
    assert error.text_content() == "<b>bad</b>" and page.locator("b").count() == 0
    assert page.locator("#regression-result").is_hidden()


def test_a_phone_draws_with_a_finger_on_a_canvas_that_fits(browser, secondary_url, secondary_app, tmp_path):
    # A small phone: the canvas is narrower than its 280 drawing units, so positions are scaled twice
    # (CSS size and pixel ratio).
    with checked_page(browser, viewport={"width": 320, "height": 640}, device_scale_factor=3, is_mobile=True,
                      has_touch=True) as page:
        open_page(page, secondary_url)
        page.get_by_label("Served model").select_option("lenet5")
        box = page.locator("#digit-canvas").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 320 and box["width"] == pytest.approx(box["height"])
        assert box["width"] < 280
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.evaluate("""() => { window.pointerTypes = [];
            document.getElementById('digit-canvas').addEventListener(
                'pointerdown', (e) => window.pointerTypes.push(e.pointerType)); }""")
        draw_with_finger(page, [(0.3, 0.2), (0.7, 0.2), (0.7, 0.8), (0.3, 0.8), (0.3, 0.2)])  # a "0"
        assert page.evaluate("window.pointerTypes") == ["touch"]
        # The drawing has the screen's pixel density, and the finger drew where it touched.
        assert page.evaluate("document.getElementById('digit-canvas').width") == 840
        assert_shows_the_api_answer(page, secondary_app)
        ink = page.evaluate("""() => {  // the box around the ink, in fractions of the canvas
            const c = document.getElementById('digit-canvas');
            const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let [left, top, right, bottom] = [c.width, c.height, -1, -1];
            for (let i = 0; i < pixels.length; i += 4) {
                if (pixels[i] > 127) continue;
                const x = (i / 4) % c.width, y = Math.floor(i / 4 / c.width);
                [left, right] = [Math.min(left, x), Math.max(right, x)];
                [top, bottom] = [Math.min(top, y), Math.max(bottom, y)];
            }
            return [left / c.width, top / c.height, (right + 1) / c.width, (bottom + 1) / c.height]; }""")
        pen = 11 / 280  # half the line width, in drawing units
        assert ink == pytest.approx([0.3 - pen, 0.2 - pen, 0.7 + pen, 0.8 + pen], abs=0.015)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, tmp_path, "web_page_phone_digits.png")


# --- the page when the API needs a key ---------------------------------------------------------------------------

PAGE_KEY = "imgclf_page-test-key"


@pytest.fixture(scope="module")
def keyed_url(repo, tmp_path_factory):
    """The page of an app that needs API keys."""
    from imgclf.service.access.api_keys import key_line

    keys = tmp_path_factory.mktemp("page_keys") / "keys.txt"
    keys.write_text(key_line("page", PAGE_KEY) + "\n")
    app = create_app({"model_repository": repo, "load_in_background": False, "api_keys_file": str(keys)})
    try:
        with serving(app) as url:
            yield url
    finally:
        app.extensions["imgclf.models"].close()


def test_the_page_asks_for_a_key_and_sends_it(page, keyed_url, model_repo):
    page.goto(keyed_url + "/")
    page.locator("#key-panel").wait_for(state="visible")
    assert "API key is required" in page.locator("#model-info").text_content()
    page.get_by_label("This service needs an API key").fill("imgclf_wrong")
    page.get_by_role("button", name="Use this key").click()
    page.locator("#key-message").wait_for(state="visible")
    assert "refused that key" in page.locator("#key-message").text_content()
    page.get_by_label("This service needs an API key").fill(PAGE_KEY)
    page.get_by_role("button", name="Use this key").click()
    page.wait_for_function("() => !document.getElementById('model-select').disabled")
    assert page.locator("#key-panel").is_hidden()
    page.get_by_label("Served model").select_option("shapes")
    page.get_by_label("Choose a photo").set_input_files(sunset(model_repo))
    assert wait_for_result(page)  # the prediction went with the key
    page.reload()  # the key is kept for the tab (sessionStorage)
    page.wait_for_function("() => !document.getElementById('model-select').disabled")
    assert page.locator("#key-panel").is_hidden()


def test_the_page_has_a_key_form_that_starts_hidden(tmp_path):
    app = create_app({"model_repository": tmp_path, "load_in_background": False})
    html = app.test_client().get("/").get_data(as_text=True)
    assert '<section class="panel" id="key-panel"' in html and 'type="password"' in html
    assert 'id="key-panel" aria-labelledby="key-heading" hidden' in html
