// The page for every served model: list them, and show the section for the chosen one's kind:
// - image classifiers: send a chosen or dropped photo to POST /predict, show the annotated
//   image and the top-k labels, and a notice when the model finds the photo unfamiliar; the model
//   information shows its calibration and reliability diagram;
// - digit classifiers: a canvas to draw a digit on, sent as a PNG to every digit model's
//   TF-Serving route; each model's digit and its ten probabilities;
// - regression: a number x sent to the chosen model's TF-Serving route; y beside the curve.
//
// Everything that comes from the server (model names, labels, error messages)
// is inserted as text (textContent, Option text, attributes set as properties),
// never as HTML: a label may be any string, "<script>" included.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const RETRY_MS = 1000; // while the service answers 503 (models still loading)
  const DEFAULT_TOP_K = 5;
  const RANDOM_GRAPH_NOTICE =
    "This model was built on a random-weight Inception-v3 graph (the real graph was not fetched): " +
    "its predictions show how the service works, not what the photo shows.";

  const state = {
    models: [], // from GET /v1/models
    current: null, // the chosen model
    file: null, // the last photo, sent again when the model or top-k changes
    request: 0, // counts predictions so that a slow, stale answer is ignored
    key: "", // the API key when sessionStorage is unavailable
    reliability: null, // the model whose reliability diagram the calibration details show when opened
  };

  // ---- talking to the service -------------------------------------------------------------

  // Return {ok, status, body} for a request whose answer is JSON; body.error holds a message
  // for any failure, including a network error or a body that is not JSON.
  // With an API key (asked for on a 401), every request sends it as Authorization: Bearer.
  async function requestJSON(url, options) {
    const key = apiKey();
    options = withKey(options, key);
    let response;
    try {
      response = await fetch(url, options);
    } catch (err) {
      return { ok: false, status: 0, body: { error: `Could not reach the service (${err.message}).` } };
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!body || typeof body !== "object") {
      body = { error: `The service answered ${response.status} ${response.statusText} without a JSON body.` };
    }
    if (!response.ok && typeof body.error !== "string") {
      body.error = `The service answered ${response.status} ${response.statusText}.`;
    }
    if (response.status === 401) {
      askForKey(key ? "The service refused that key: enter another." : "");
    }
    return { ok: response.ok, status: response.status, body };
  }

  // The request options with the API key, when there is one, as Authorization: Bearer.
  function withKey(options, key) {
    if (!key) return options;
    const headers = new Headers((options && options.headers) || {});
    headers.set("Authorization", `Bearer ${key}`);
    return { ...(options || {}), headers };
  }

  // Return a blob: URL of an image the API answers (sent with the key, as every request), or null.
  async function imageURL(url) {
    try {
      const response = await fetch(url, withKey({}, apiKey()));
      if (!response.ok) return null;
      return URL.createObjectURL(await response.blob());
    } catch (_) {
      return null;
    }
  }

  // ---- API key ------------------------------------------------------------------------------

  const KEY_STORAGE = "imgclf.apiKey"; // sessionStorage: this tab only, gone when it closes

  function apiKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (_) {
      return state.key || ""; // storage disabled: keep it in memory
    }
  }

  function askForKey(message) {
    $("key-panel").hidden = false;
    $("key-message").textContent = message;
    $("key-message").hidden = !message;
    $("api-key").focus();
  }

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    state.key = key;
    try {
      sessionStorage.setItem(KEY_STORAGE, key);
    } catch (_) {
      // storage disabled: state.key holds it
    }
    $("api-key").value = "";
    $("key-panel").hidden = true;
    loadModels();
  });

  // ---- model list -------------------------------------------------------------------------

  async function loadModels() {
    const select = $("model-select");
    const { ok, status, body } = await requestJSON("/v1/models");
    if (status === 503) {
      $("model-info").textContent = `${body.error} — trying again…`;
      setTimeout(loadModels, RETRY_MS);
      return;
    }
    if (!ok || !Array.isArray(body.models)) {
      $("model-info").textContent = `Could not list the models: ${body.error || "unexpected answer"}`;
      return;
    }
    state.models = body.models;
    select.replaceChildren(
      ...state.models.map((m) => new Option(`${m.name} (version ${m.version})`, m.name)),
    );
    if (!state.models.length) {
      select.replaceChildren(new Option("No model is served", ""));
      $("model-info").textContent = "The model repository holds no model.";
      return;
    }
    select.disabled = false;
    // The page opens on a photo classifier when there is one: that is what most visitors come for.
    const first = state.models.find((m) => m.kind === "image-classifier") || state.models[0];
    selectModel(first.name);
  }

  function selectModel(name) {
    const model = state.models.find((m) => m.name === name);
    if (!model) return;
    state.current = model;
    $("model-select").value = model.name;
    const labels = Array.isArray(model.labels) ? model.labels : [];
    const shown = labels.slice(0, 8).join(", ") + (labels.length > 8 ? `, … (${labels.length} in all)` : "");
    $("model-info").textContent = `${model.kind} · version ${model.version}` +
      (labels.length ? ` · labels: ${shown}` : "");
    showSection(model);
    showModelCard(model);
  }

  // Show the section for the model's kind, or a note for kinds this page has no form for.
  function showSection(model) {
    const section = Object.hasOwn(SECTIONS, model.kind) ? SECTIONS[model.kind] : null;
    for (const el of document.querySelectorAll(".kind-section")) el.hidden = true;
    if (section) {
      $(`section-${model.kind}`).hidden = false;
      section.show(model);
    } else {
      $("other-note").textContent =
        `“${model.name}” is a model of kind “${model.kind || "unknown"}”; this page has no form for it yet. ` +
        `Call it through POST /v1/models/${model.name}:predict (described in /openapi.json).`;
      $("section-other").hidden = false;
    }
  }

  // From the model card: a notice for the demo's stand-in graph, and the calibration.
  async function showModelCard(model) {
    const notice = $("model-notice");
    notice.hidden = true;
    clearCalibration();
    const { ok, body } = await requestJSON(`/v1/models/${encodeURIComponent(model.name)}/metadata`);
    if (!ok || state.current !== model) return; // no metadata: no notice; or the model changed meanwhile
    const card = body.model_card && typeof body.model_card === "object" ? body.model_card : {};
    // The card names the featurizer graph it was built on; the demo's stand-in graph, used when
    // the real Inception-v3 was not fetched, has "random" in its file name.
    const graph = card.featurizer && card.featurizer.graph;
    const file = typeof graph === "string" ? graph.split(/[\\/]/).pop() : "";
    if (file.toLowerCase().includes("random")) {
      notice.textContent = RANDOM_GRAPH_NOTICE;
      notice.hidden = false;
    }
    showCalibration(model, card.calibration);
  }

  function clearCalibration() {
    const box = $("reliability");
    for (const img of box.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    box.replaceChildren();
    state.reliability = null;
    $("calibration-text").textContent = "";
    $("calibration").hidden = $("reliability-details").hidden = true;
  }

  // The card's calibration: method, temperature, ECE before and after. The reliability diagram, when
  // the export has one, is fetched when the reader opens its details.
  function showCalibration(model, calibration) {
    if (!calibration || typeof calibration !== "object") return;
    const method = calibration.method === "temperature"
      ? `temperature scaling, T = ${formatNumber(Number(calibration.temperature))}`
      : "none (the softmax's own probabilities)";
    const [split, figures] = [["test", calibration.test], ["validation", calibration.validation]]
      .find(([, f]) => f && f.examples > 0 && typeof f.ece_before === "number") || [null, null];
    const ece = figures
      ? ` Expected calibration error on the ${split} split (${figures.examples} images): ` +
        `${formatNumber(figures.ece_before)} before, ${formatNumber(figures.ece_after)} after.`
      : "";
    const note = typeof calibration.note === "string" && calibration.note
      ? ` ${calibration.note.charAt(0).toUpperCase()}${calibration.note.slice(1)}.`
      : "";
    $("calibration-text").textContent = `Calibration: ${method}.${ece}${note}`;
    $("calibration").hidden = false;
    state.reliability = calibration.reliability_diagram ? model : null;
    $("reliability-details").hidden = !state.reliability;
    if (state.reliability && $("reliability-details").open) showReliability();
  }

  async function showReliability() {
    const model = state.reliability;
    if (!model || $("reliability").childElementCount) return;
    const path = `/v1/models/${encodeURIComponent(model.name)}/versions/${model.version}/reliability.png`;
    const url = await imageURL(path);
    if (!url) return; // the export has none (404): the text says enough
    if (state.reliability !== model || $("reliability").childElementCount) {
      URL.revokeObjectURL(url); // another model was chosen meanwhile, or a second fetch came first
      return;
    }
    const img = document.createElement("img");
    img.src = url;
    img.alt = `Reliability diagram of ${model.name} version ${model.version}: accuracy against confidence, ` +
      "before and after calibration";
    $("reliability").replaceChildren(img);
  }

  $("reliability-details").addEventListener("toggle", () => {
    if ($("reliability-details").open) showReliability();
  });

  // ---- image classifiers --------------------------------------------------------------------

  function imageClassifierSection() {
    const input = $("image-input");
    const zone = $("drop-zone");
    const topK = $("top-k");

    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      input.value = ""; // choosing the same file again is a change too
      if (file) choose(file);
    });

    // Space opens the picker of a focused file input; Chromium ignores Enter, which people try first.
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        input.click();
      }
    });

    zone.addEventListener("dragenter", (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault(); // allows the drop
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", (e) => {
      if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
    });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      zone.classList.remove("dragging");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) choose(file);
      else showError("Drop an image file (dragged text or links are not photos).");
    });
    // A photo dropped beside the zone would otherwise replace the page with the photo.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (e) => {
        if (!zone.contains(e.target)) e.preventDefault();
      });
    }

    let debounce = 0;
    topK.addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => state.file && predict(state.file), 300);
    });

    function choose(file) {
      state.file = file;
      predict(file);
    }

    return {
      show(model) {
        const n = (model.labels || []).length;
        if (n) {
          topK.max = String(n);
          const wanted = parseInt(topK.value, 10) || DEFAULT_TOP_K;
          topK.value = String(Math.min(Math.max(wanted, 1), n));
        }
        clearResult();
        if (state.file) predict(state.file);
      },
    };
  }

  async function predict(file) {
    const model = state.current;
    if (!model || model.kind !== "image-classifier") return;
    const id = ++state.request;
    const params = new URLSearchParams({ model: model.name, annotate: "true" });
    const k = $("top-k").value.trim();
    if (k) params.set("top_k", k); // the service checks the range and says what it allows
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    hideError();
    $("status").textContent = `Classifying ${file.name || "the photo"} with ${model.name}…`;
    $("result").setAttribute("aria-busy", "true");

    const { ok, body } = await requestJSON(`/predict?${params}`, { method: "POST", body: form });
    if (id !== state.request) return; // a newer photo, model or top-k took over
    $("result").removeAttribute("aria-busy");
    $("status").textContent = "";
    if (!ok) {
      clearResult();
      showError(body.error);
      return;
    }
    showResult(body, file);
  }

  function showResult(body, file) {
    const predictions = Array.isArray(body.predictions) ? body.predictions : [];
    const top = predictions[0];
    const image = $("annotated-image");
    image.src = body.annotated_image
      ? `data:image/jpeg;base64,${body.annotated_image}`
      : URL.createObjectURL(file); // annotation not sent: show the photo itself
    image.alt = top
      ? `${file.name || "The photo"}, labelled ${top.label} (${percent(top.score)})`
      : (file.name || "The photo");
    $("annotated-caption").textContent = `${body.model} · version ${body.version}`;

    showUnfamiliar(body);
    const list = $("predictions");
    list.replaceChildren(...predictions.map(predictionItem));
    $("timing").textContent = timingText(body.timing_ms);
    $("result").hidden = false;
    $("status").textContent = (top ? `Top label: ${top.label} (${percent(top.score)}).` : "No labels.") +
      (body.unfamiliar === true ? " Unfamiliar input." : "");
  }

  // The answer says unfamiliar: its score is above the threshold (the notice on the annotated image says so too).
  function showUnfamiliar(body) {
    const notice = $("unfamiliar-notice");
    notice.hidden = body.unfamiliar !== true;
    if (notice.hidden) {
      notice.textContent = "";
      return;
    }
    const n = state.current && Array.isArray(state.current.labels) ? state.current.labels.length : 0;
    const score = Number(body.unfamiliar_score);
    const threshold = Number(body.unfamiliar_threshold);
    notice.textContent = `Unfamiliar input — none of the ${n} labels fits well ` +
      `(unfamiliar score ${formatNumber(score)}, above the threshold ${formatNumber(threshold)}).`;
  }

  function predictionItem({ label, score }) {
    const item = document.createElement("li");
    item.className = "prediction";
    const name = document.createElement("span");
    name.className = "prediction-label";
    name.textContent = label;
    const value = document.createElement("span");
    value.className = "prediction-score";
    value.textContent = percent(score);
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true"); // the percentage beside it says the same
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.min(Math.max(Number(score) || 0, 0), 1) * 100}%`;
    track.append(bar);
    item.append(name, value, track);
    return item;
  }

  function percent(score) {
    return `${((Number(score) || 0) * 100).toFixed(1)}%`;
  }

  function timingText(timing) {
    if (!timing || typeof timing !== "object") return "";
    const parts = Object.entries(timing)
      .filter(([, ms]) => typeof ms === "number")
      .map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`);
    return parts.length ? `Time: ${parts.join(" · ")}` : "";
  }

  function clearResult() {
    $("result").hidden = true;
    $("unfamiliar-notice").hidden = true;
    $("predictions").replaceChildren();
    $("annotated-image").removeAttribute("src");
    $("timing").textContent = "";
  }

  function showError(message) {
    const error = $("error");
    error.textContent = message || "Something went wrong.";
    error.hidden = false;
  }

  function hideError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // ---- TF-Serving route (secondary models) -------------------------------------------------------

  // POST a TF-Serving predict body to the model's route; return requestJSON's {ok, status, body}.
  function tfServingPredict(name, body) {
    return requestJSON(`/v1/models/${encodeURIComponent(name)}:predict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  function showMessage(element, message) {
    element.textContent = message;
    element.hidden = false;
  }

  function hideMessage(element) {
    element.hidden = true;
    element.textContent = "";
  }

  // ---- digit classifiers: draw a digit ----------------------------------------------------------

  function digitSection() {
    const canvas = $("digit-canvas");
    const results = $("digit-results");
    const status = $("digit-status");
    const error = $("digit-error");
    const SIDE = 280; // drawing units: the canvas is SIDE × SIDE whatever its CSS size and pixel ratio
    const LINE_WIDTH = 22; // in drawing units; about MNIST's pen on its 28-pixel frame
    const AUTO_MS = 500; // recognise this long after the pen lifts, unless drawing goes on
    const context = canvas.getContext("2d");
    let pointer = null; // the id of the pointer drawing now; one at a time
    let last = null; // the previous point of the stroke
    let hasInk = false;
    let autoTimer = 0;
    let request = 0; // counts recognitions so that answers for an older drawing are ignored

    // The backing store has the screen's pixel density (capped), the drawing units stay SIDE.
    const ratio = Math.min(Math.max(window.devicePixelRatio || 1, 1), 3);
    canvas.width = canvas.height = Math.round(SIDE * ratio);
    context.setTransform(canvas.width / SIDE, 0, 0, canvas.height / SIDE, 0, 0);
    paper();

    // White paper (an opaque PNG: transparent pixels would read as black ink) and black round ink.
    function paper() {
      context.fillStyle = "#fff";
      context.fillRect(0, 0, SIDE, SIDE);
      context.fillStyle = context.strokeStyle = "#000";
      context.lineWidth = LINE_WIDTH;
      context.lineCap = context.lineJoin = "round";
    }

    // A pointer's position in drawing units: inside the border, scaled from the canvas's CSS size.
    function point(event) {
      const box = canvas.getBoundingClientRect();
      const width = canvas.clientWidth || box.width;
      const height = canvas.clientHeight || box.height;
      return {
        x: ((event.clientX - box.left - canvas.clientLeft) * SIDE) / width,
        y: ((event.clientY - box.top - canvas.clientTop) * SIDE) / height,
      };
    }

    function dot(p) {
      context.beginPath();
      context.arc(p.x, p.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
      context.fill();
      hasInk = true;
    }

    function lineTo(p) {
      context.beginPath();
      context.moveTo(last.x, last.y);
      context.lineTo(p.x, p.y);
      context.stroke();
      last = p;
      hasInk = true;
    }

    canvas.addEventListener("pointerdown", (e) => {
      if (pointer !== null || (e.pointerType === "mouse" && e.button !== 0)) return;
      e.preventDefault(); // no text selection or drag from the canvas
      pointer = e.pointerId;
      try {
        canvas.setPointerCapture(e.pointerId); // the stroke goes on when the pen leaves the canvas
      } catch (_) {
        // a pointer the browser does not track (a synthetic event) draws without capture
      }
      clearTimeout(autoTimer);
      last = point(e);
      dot(last);
    });

    canvas.addEventListener("pointermove", (e) => {
      if (e.pointerId !== pointer) return;
      const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
      for (const event of events.length ? events : [e]) lineTo(point(event));
    });

    const endStroke = (e) => {
      if (e.pointerId !== pointer) return;
      pointer = null;
      last = null;
      clearTimeout(autoTimer);
      if (hasInk) autoTimer = setTimeout(recognise, AUTO_MS);
    };
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) canvas.addEventListener(type, endStroke);

    $("digit-recognise").addEventListener("click", () => recognise());
    $("digit-clear").addEventListener("click", clear);

    function clear() {
      clearTimeout(autoTimer);
      request++; // an answer on its way is for the old drawing
      pointer = null;
      last = null;
      hasInk = false;
      paper();
      results.replaceChildren();
      status.textContent = "";
      hideMessage(error);
    }

    // The served digit models, the chosen one first.
    function digitModels() {
      const all = state.models.filter((m) => m.kind === "digit-classifier");
      return all.sort((a, b) => (b === state.current) - (a === state.current));
    }

    async function recognise() {
      clearTimeout(autoTimer);
      hideMessage(error);
      if (!hasInk) {
        results.replaceChildren();
        status.textContent = "Draw a digit first.";
        return;
      }
      const models = digitModels();
      if (!models.length) return;
      const id = ++request;
      // The service turns any picture into MNIST's form itself (grayscale, inverted, cropped, centred).
      const b64 = canvas.toDataURL("image/png").replace(/^data:[^,]*,/, "");
      status.textContent = `Recognising with ${models.map((m) => m.name).join(", ")}…`;
      results.setAttribute("aria-busy", "true");
      const answers = await Promise.all(models.map((m) => tfServingPredict(m.name, { instances: [{ b64 }] })));
      if (id !== request) return; // cleared, or drawn on and recognised again meanwhile
      results.removeAttribute("aria-busy");
      const problems = [];
      const cards = models.map((model, i) => {
        const { ok, body } = answers[i];
        const prediction = ok ? digitPrediction(body) : null;
        if (!prediction) {
          problems.push(`${model.name}: ${ok ? "the answer has no digit and ten probabilities." : body.error}`);
        }
        return digitCard(model, prediction);
      });
      results.replaceChildren(...cards);
      status.textContent = cards.length > problems.length ? "Recognised." : "";
      if (problems.length) showMessage(error, problems.join("\n"));
    }

    return {
      show() {
        hideMessage(error);
        if (hasInk && results.childElementCount) recognise(); // the chosen model's answer first
      },
    };
  }

  // The answer {"predictions": [{"probabilities": [10 numbers], "classes": d}]} as
  // {digit, probabilities}, or null when it is not of that shape.
  function digitPrediction(body) {
    const row = Array.isArray(body.predictions) ? body.predictions[0] : null;
    if (!row || !Array.isArray(row.probabilities) || row.probabilities.length !== 10) return null;
    if (!row.probabilities.every((p) => typeof p === "number")) return null;
    const digit = Number(row.classes);
    if (!Number.isInteger(digit) || digit < 0 || digit > 9) return null;
    return { digit, probabilities: row.probabilities };
  }

  function digitCard(model, prediction) {
    const card = document.createElement("article");
    card.className = "digit-result";
    card.dataset.model = model.name;
    const heading = document.createElement("h3");
    heading.textContent = model.name;
    const version = document.createElement("span");
    version.className = "digit-version";
    version.textContent = ` version ${model.version}`;
    heading.append(version);
    card.append(heading);
    if (!prediction) {
      const none = document.createElement("p");
      none.className = "digit-none";
      none.textContent = "No answer (see the message above).";
      card.append(none);
      return card;
    }
    const { digit, probabilities } = prediction;
    const answer = document.createElement("p");
    answer.className = "digit-answer";
    const prefix = document.createElement("span");
    prefix.className = "visually-hidden";
    prefix.textContent = "Predicted digit: ";
    const value = document.createElement("span");
    value.className = "digit-class";
    value.textContent = String(digit);
    const score = document.createElement("span");
    score.className = "digit-score";
    score.textContent = percent(probabilities[digit]);
    answer.append(prefix, value, " ", score);

    const list = document.createElement("ol");
    list.className = "digit-probabilities";
    list.setAttribute("aria-label", `${model.name}: probability of each digit`);
    list.replaceChildren(...probabilities.map((p, d) => digitBar(d, p, d === digit)));
    card.append(answer, list);
    return card;
  }

  function digitBar(digit, probability, chosen) {
    const item = document.createElement("li");
    item.className = chosen ? "digit-probability chosen" : "digit-probability";
    const name = document.createElement("span");
    name.className = "digit-label";
    name.textContent = String(digit);
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("aria-hidden", "true"); // the percentage beside it says the same
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.min(Math.max(Number(probability) || 0, 0), 1) * 100}%`;
    track.append(bar);
    const value = document.createElement("span");
    value.className = "digit-value";
    value.textContent = percent(probability);
    item.append(name, track, value);
    return item;
  }

  // ---- regression: y for an x ------------------------------------------------------------------

  // Models whose training function the page knows: it shows that curve beside the model's y.
  const CURVES = {
    quadratic: { text: "0.2x² − x + 1", f: (x) => 0.2 * x * x - x + 1, range: [-20, 20] },
  };

  function regressionSection() {
    const form = $("regression-form");
    const input = $("regression-x");
    const status = $("regression-status");
    const error = $("regression-error");
    const result = $("regression-result");
    let request = 0;

    form.addEventListener("submit", (e) => {
      e.preventDefault(); // the page answers; nothing navigates
      predictY();
    });
    input.addEventListener("input", () => input.removeAttribute("aria-invalid"));

    // x from the field, or a message saying what is wrong with it.
    function readX() {
      if (input.validity.badInput) return { message: "x must be a number, such as 3, -2.5 or 1e3." };
      const text = input.value.trim();
      if (!text) return { message: "Enter a number for x." };
      const x = Number(text);
      if (!Number.isFinite(x)) return { message: `x must be a finite number; received “${text}”.` };
      return { x };
    }

    async function predictY() {
      const model = state.current;
      if (!model || model.kind !== "regression") return;
      const id = ++request;
      hideMessage(error);
      const { x, message } = readX();
      if (message) {
        result.hidden = true;
        status.textContent = "";
        input.setAttribute("aria-invalid", "true");
        showMessage(error, message);
        return;
      }
      status.textContent = `Asking ${model.name} for x = ${x}…`;
      const { ok, body } = await tfServingPredict(model.name, { instances: [[x]] });
      if (id !== request || state.current !== model) return;
      status.textContent = "";
      const row = ok && Array.isArray(body.predictions) ? body.predictions[0] : null;
      const y = Array.isArray(row) ? row[0] : row;
      if (typeof y !== "number") {
        result.hidden = true;
        showMessage(error, ok ? "The answer holds no number y." : body.error);
        return;
      }
      showY(model, x, y);
    }

    function showY(model, x, y) {
      const curve = Object.hasOwn(CURVES, model.name) ? CURVES[model.name] : null;
      $("regression-x-shown").textContent = String(x);
      $("regression-y").textContent = formatNumber(y);
      $("regression-curve-row").hidden = $("regression-diff-row").hidden = !curve;
      const note = $("regression-range-note");
      note.hidden = true;
      if (curve) {
        const truth = curve.f(x);
        $("regression-curve-label").textContent = `curve ${curve.text}`;
        $("regression-curve").textContent = formatNumber(truth);
        $("regression-diff").textContent = formatNumber(y - truth);
        const [low, high] = curve.range;
        if (x < low || x > high) {
          note.textContent = `x = ${x} is outside the range the model was trained on (${low} to ${high}): ` +
            "there it extrapolates, and may be far from the curve.";
          note.hidden = false;
        }
      }
      result.hidden = false;
    }

    return {
      show(model) {
        const curve = Object.hasOwn(CURVES, model.name) ? CURVES[model.name] : null;
        $("regression-hint").textContent = curve
          ? `${model.name} was trained on x from ${curve.range[0]} to ${curve.range[1]}; ` +
            "other values are allowed, but there the model extrapolates."
          : `${model.name} answers y for a number x.`;
        request++; // an answer for the previous model is not shown
        result.hidden = true;
        status.textContent = "";
        hideMessage(error);
      },
    };
  }

  // Three decimals (no "-0.000"); exponent form for huge values.
  function formatNumber(value) {
    if (!Number.isFinite(value)) return String(value);
    const text = Math.abs(value) < 1e9 ? value.toFixed(3) : value.toExponential(3);
    return /^-0\.0+$/.test(text) ? text.slice(1) : text;
  }

  // ---- start --------------------------------------------------------------------------------

  // kind (from GET /v1/models) → the page section that handles it. To support another kind,
  // add a <section id="section-KIND" class="kind-section"> to index.html and an entry here
  // whose show(model) prepares it.
  const SECTIONS = {
    "image-classifier": imageClassifierSection(),
    "digit-classifier": digitSection(),
    regression: regressionSection(),
  };

  $("model-select").addEventListener("change", (e) => selectModel(e.target.value));
  loadModels();
})();
