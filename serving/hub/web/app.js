// shitu-hub web page: calls the JSON API (POST /predict/image_recognition) of the server that serves it.
"use strict";

const API = "/predict/image_recognition";
const SLIDERS = ["threshold", "max_det_results", "score_thres"];
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#008080"];
const LABELS_PER_PAGE = 50;

const $ = (id) => document.getElementById(id);
const state = { image: null, imageData: null, labelsOffset: 0, timer: null, seq: 0, galleryGeneration: 0,
                newGalleries: new Set() };

// -- messages ---------------------------------------------------------------------------------------------------
function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "error";
  box.hidden = false;
  if (kind === "error" && /admin token/.test(text)) {
    $("token").classList.add("needed");
    $("token").focus();
  }
}

function clearMessage() {
  $("message").hidden = true;
}

// -- the API ----------------------------------------------------------------------------------------------------
class ApiError extends Error {}

async function call(payload) {
  const body = { ...payload };
  const scenario = $("scenario").value;
  if (scenario && !("scenario" in body)) body.scenario = scenario;
  const token = $("token").value;
  if (token) body.token = token;
  let response;
  try {
    response = await fetch(API, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message})`);
  }
  let answer;
  try {
    answer = await response.json();
  } catch (err) {
    throw new ApiError(`the server answered HTTP ${response.status} without a JSON body`);
  }
  if (answer.status !== "000") throw new ApiError(answer.msg || `error ${answer.status}`);
  return answer.results;
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// -- scenario and gallery pickers ---------------------------------------------------------------------------------
async function loadScenarios() {
  const packs = await call({ operation: "scenarios", scenario: undefined });
  const select = $("scenario");
  select.replaceChildren();
  for (const p of packs) {
    const opt = new Option(`${p.name}${p.available ? "" : " (models not installed)"}`, p.name);
    opt.disabled = !p.available;
    opt.selected = Boolean(p.default);
    opt.title = p.title || "";
    select.add(opt);
  }
}

async function loadGalleries(keep) {
  const info = await call({ operation: "galleries" });
  const select = $("gallery");
  const previous = keep ? select.value : null;
  if (!keep) state.newGalleries.clear();
  // names picked with "new gallery..." stay offered (and selected) until their first add creates them
  const names = [...info.galleries, ...[...state.newGalleries].filter((n) => !info.galleries.includes(n))];
  select.replaceChildren();
  for (const name of names) select.add(new Option(name, name));
  select.add(new Option("new gallery...", "__new__"));
  select.value = previous && names.includes(previous) ? previous : info.default;
  for (const name of SLIDERS) {
    if (info.params[name] !== undefined && !keep) setSlider(name, info.params[name]);
  }
}

function gallery() {
  return $("gallery").value;
}

// -- recognition --------------------------------------------------------------------------------------------------
// A slider whose default is "auto" (score_thres: each gallery's own threshold) is not sent until it is moved.
function setSlider(name, value) {
  const auto = value === "auto";
  $(name).dataset.auto = auto ? "1" : "";
  if (!auto) $(name).value = value;
  showSlider(name);
}

function showSlider(name) {
  const v = Number($(name).value);
  $(`${name}-value`).textContent = $(name).dataset.auto
    ? "auto"
    : name === "max_det_results"
      ? String(v)
      : v.toFixed(2);
}

function sliderParams() {
  const out = {};
  for (const name of SLIDERS) if (!$(name).dataset.auto) out[name] = Number($(name).value);
  return out;
}

async function recognize() {
  if (!state.imageData) return;
  const seq = ++state.seq;
  $("recognize-status").textContent = "recognising...";
  document.body.dataset.recognition = "running";
  try {
    const results = await call({ images: [state.imageData], gallery: gallery(), ...sliderParams() });
    if (seq !== state.seq) return; // a newer request is on its way
    const answer = results[0];
    if (answer.error) throw new ApiError(answer.error);
    clearMessage();
    draw(answer.results);
    fillTable(answer.results);
    $("recognize-status").textContent =
      `${answer.width} x ${answer.height} pixels: ${answer.results.length} result(s)`;
    document.body.dataset.recognition = "done";
  } catch (err) {
    if (seq !== state.seq) return;
    $("recognize-status").textContent = "";
    document.body.dataset.recognition = "error";
    showMessage(err.message, "error");
  }
}

function scheduleRecognize() {
  clearTimeout(state.timer);
  state.timer = setTimeout(recognize, 250);
}

function draw(results) {
  const canvas = $("canvas");
  const img = state.image;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 300));
  ctx.font = `${Math.max(14, line * 7)}px sans-serif`;
  ctx.textBaseline = "top";
  results.forEach((r, i) => {
    const [x1, y1, x2, y2] = r.bbox;
    const color = COLORS[i % COLORS.length];
    ctx.lineWidth = r.is_whole_image ? line * 2 : line;
    ctx.strokeStyle = color;
    ctx.setLineDash(r.is_whole_image ? [line * 6, line * 3] : []);
    ctx.strokeRect(x1 + ctx.lineWidth / 2, y1 + ctx.lineWidth / 2, x2 - x1 - ctx.lineWidth, y2 - y1 - ctx.lineWidth);
    ctx.setLineDash([]);
    const text = `${r.is_whole_image ? "whole image: " : ""}${r.label} ${r.score.toFixed(3)}`;
    const pad = 4;
    const w = ctx.measureText(text).width + 2 * pad;
    const h = parseInt(ctx.font, 10) + 2 * pad;
    const ty = r.is_whole_image ? y2 - h - ctx.lineWidth : Math.max(0, y1 - h);
    ctx.fillStyle = color;
    ctx.fillRect(x1, ty, w, h);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + pad, ty + pad);
  });
}

function fillTable(results) {
  const body = $("results").tBodies[0];
  body.replaceChildren();
  for (const r of results) {
    const row = body.insertRow();
    row.className = r.is_whole_image ? "whole-image" : "";
    row.dataset.label = r.label;
    const where = r.is_whole_image ? "whole image" : `[${r.bbox.join(", ")}]`;
    for (const cell of [r.label, r.score.toFixed(3), r.det_score.toFixed(2), where, String(r.id)]) {
      row.insertCell().textContent = cell;
    }
  }
  if (!results.length) {
    const cell = body.insertRow().insertCell();
    cell.colSpan = 5;
    cell.textContent = "nothing recognised";
  }
  $("results").hidden = false;
}

async function takeFile(file) {
  if (!file) return;
  clearMessage();
  state.seq++; // an answer still on its way belongs to the previous image
  state.image = null;
  const canvas = $("canvas");
  canvas.width = canvas.height = 0;
  $("results").hidden = true;
  $("recognize-status").textContent = "";
  state.imageData = await readAsDataURL(file);
  const img = new Image();
  img.onload = () => {
    state.image = img;
    recognize();
  };
  img.onerror = () => {
    // The browser cannot show it; the server still says what is wrong with it (or recognises it).
    state.image = null;
    call({ images: [state.imageData], gallery: gallery(), ...sliderParams() })
      .then(() => showMessage(`${file.name}: this browser cannot display the image`, "error"))
      .catch((err) => showMessage(err.message, "error"));
  };
  img.src = state.imageData;
}

// -- the gallery view ---------------------------------------------------------------------------------------------
async function loadGallery(more) {
  if (gallery() === "__new__") return;
  $("gallery-name").textContent = gallery();
  const generation = ++state.galleryGeneration; // only the latest view is drawn
  const offset = more ? state.labelsOffset : 0;
  try {
    const info = await call({ operation: "info", gallery: gallery() });
    const page = await call({
      operation: "labels", gallery: gallery(), contains: $("label-search").value,
      limit: LABELS_PER_PAGE, offset,
    });
    if (generation !== state.galleryGeneration) return;
    renderLabels(page, more);
    $("gallery-info").textContent =
      `${info.count} item(s), ${info.labels} label(s); index ${info.index_method} (${info.index}), ` +
      `metric ${info.metric}, ${info.dim} dimensions`;
    $("gallery-info").dataset.count = info.count; // set last: the view is complete
  } catch (err) {
    if (generation !== state.galleryGeneration) return;
    $("gallery-info").textContent = "";
    $("labels").replaceChildren();
    showMessage(err.message, "error");
  }
}

function renderLabels(page, append) {
  const box = $("labels");
  if (!append) box.replaceChildren();
  for (const entry of page.labels) {
    const card = document.createElement("div");
    card.className = "label-card";
    card.dataset.label = entry.label;
    const head = document.createElement("div");
    head.className = "label-head";
    const name = document.createElement("strong");
    name.textContent = entry.label;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = String(entry.count);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-label";
    remove.textContent = "remove label";
    remove.addEventListener("click", () => removeLabel(entry.label, entry.count));
    head.append(name, count, remove);
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    for (const item of entry.items) {
      const fig = document.createElement("figure");
      fig.dataset.id = item.id;
      if (item.thumbnail) {
        const img = document.createElement("img");
        img.src = item.thumbnail;
        img.alt = `${entry.label} #${item.id}`;
        fig.append(img);
      } else {
        const none = document.createElement("div");
        none.className = "no-thumb";
        none.textContent = "no picture";
        fig.append(none);
      }
      const cap = document.createElement("figcaption");
      cap.textContent = `#${item.id}`;
      const x = document.createElement("button");
      x.type = "button";
      x.className = "remove-item";
      x.title = `remove item #${item.id}`;
      x.textContent = "\u00d7";
      x.addEventListener("click", () => removeItem(item.id));
      fig.append(cap, x);
      thumbs.append(fig);
    }
    if (entry.count > entry.items.length) {
      const more = document.createElement("span");
      more.className = "more";
      more.textContent = `+${entry.count - entry.items.length} more`;
      thumbs.append(more);
    }
    card.append(head, thumbs);
    box.append(card);
  }
  if (!box.children.length) {
    const p = document.createElement("p");
    p.className = "status";
    p.textContent = $("label-search").value ? "no label matches" : "this gallery is empty";
    box.append(p);
  }
  state.labelsOffset = page.offset + page.labels.length;
  $("more-labels").hidden = state.labelsOffset >= page.total;
}

async function change(payload, done) {
  try {
    const result = await call({ gallery: gallery(), ...payload });
    $("token").classList.remove("needed");
    showMessage(done(result), "ok");
    await loadGalleries(true);
    await loadGallery(false);
  } catch (err) {
    showMessage(err.message, "error");
  }
}

function removeItem(id) {
  return change({ operation: "remove", ids: [id] }, (r) => `removed item #${id} (${r.removed})`);
}

function removeLabel(label, count) {
  if (!window.confirm(`Remove the label "${label}" and its ${count} item(s) from gallery ${gallery()}?`)) return;
  return change({ operation: "remove", labels: [label] }, (r) => `removed ${r.removed} item(s) of "${label}"`);
}

async function addImages(event) {
  event.preventDefault();
  const files = [...$("add-files").files];
  const label = $("add-label").value.trim();
  if (!files.length) return showMessage("choose one or more images to add", "error");
  if (!label) return showMessage("give the label of the images", "error");
  let images;
  try {
    images = await Promise.all(files.map(readAsDataURL));
  } catch (err) {
    return showMessage(err.message, "error");
  }
  await change({ operation: "add", images, labels: files.map(() => label) }, (r) => {
    $("add-form").reset();
    return `added ${r.added} image(s) as "${label}" (id ${r.ids.join(", ")})`;
  });
}

function pickGallery() {
  if (gallery() !== "__new__") {
    loadGallery(false);
    scheduleRecognize();
    return;
  }
  const name = window.prompt("Name of the new gallery (letters, digits, '_', '-', '.'); adding images creates it:");
  if (!name) {
    loadGalleries(true).then(() => loadGallery(false));
    return;
  }
  const select = $("gallery");
  state.newGalleries.add(name);
  if (![...select.options].some((o) => o.value === name)) select.add(new Option(name, name), select.options.length - 1);
  select.value = name;
  $("gallery-name").textContent = name;
  $("gallery-info").textContent = "new gallery: add images to create it";
  $("labels").replaceChildren();
}

// -- wiring -------------------------------------------------------------------------------------------------------
function wire() {
  $("file").addEventListener("change", (e) => takeFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    takeFile(e.dataTransfer.files[0]);
  });
  for (const name of SLIDERS) {
    $(name).addEventListener("input", () => {
      $(name).dataset.auto = "";
      showSlider(name);
      scheduleRecognize();
    });
  }
  $("scenario").addEventListener("change", async () => {
    try {
      await loadGalleries(false);
      await loadGallery(false);
      scheduleRecognize();
    } catch (err) {
      showMessage(err.message, "error");
    }
  });
  $("gallery").addEventListener("change", pickGallery);
  $("add-form").addEventListener("submit", addImages);
  let searchTimer = null;
  $("label-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => loadGallery(false), 250);
  });
  $("more-labels").addEventListener("click", () => loadGallery(true));
  $("token").addEventListener("change", async () => {
    try {
      if (!$("scenario").options.length) await loadScenarios();
      await loadGalleries(true);
      await loadGallery(false);
    } catch (err) {
      showMessage(err.message, "error");
    }
  });
}

async function start() {
  wire();
  try {
    await loadScenarios();
    await loadGalleries(false);
    await loadGallery(false);
    document.body.dataset.ready = "yes";
  } catch (err) {
    document.body.dataset.ready = "error";
    showMessage(err.message, "error");
  }
}

start();
