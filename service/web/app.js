// The upload page: list the served models, send a chosen or dropped photo to
// POST /predict, show the annotated image and the top-k labels.
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
  };

  // ---- talking to the service -------------------------------------------------------------

  // Return {ok, status, body} for a request whose answer is JSON; body.error holds a message
  // for any failure, including a network error or a body that is not JSON.
  async function requestJSON(url, options) {
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
    return { ok: response.ok, status: response.status, body };
  }

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
    selectModel(state.models[0].name);
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
    showGraphNotice(model);
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

  // The model card names the featurizer graph it was built on; the demo's stand-in graph,
  // used when the real Inception-v3 was not fetched, has "random" in its file name.
  async function showGraphNotice(model) {
    const notice = $("model-notice");
    notice.hidden = true;
    const { ok, body } = await requestJSON(`/v1/models/${encodeURIComponent(model.name)}/metadata`);
    if (!ok || state.current !== model) return; // no metadata: no notice; or the model changed meanwhile
    const graph = body.model_card && body.model_card.featurizer && body.model_card.featurizer.graph;
    const file = typeof graph === "string" ? graph.split(/[\\/]/).pop() : "";
    if (file.toLowerCase().includes("random")) {
      notice.textContent = RANDOM_GRAPH_NOTICE;
      notice.hidden = false;
    }
  }

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

    const list = $("predictions");
    list.replaceChildren(...predictions.map(predictionItem));
    $("timing").textContent = timingText(body.timing_ms);
    $("result").hidden = false;
    $("status").textContent = top ? `Top label: ${top.label} (${percent(top.score)}).` : "No labels.";
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

  // ---- start --------------------------------------------------------------------------------

  // kind (from GET /v1/models) → the page section that handles it. To support another kind,
  // add a <section id="section-KIND" class="kind-section"> to index.html and an entry here
  // whose show(model) prepares it.
  const SECTIONS = {
    "image-classifier": imageClassifierSection(),
  };

  $("model-select").addEventListener("change", (e) => selectModel(e.target.value));
  loadModels();
})();
