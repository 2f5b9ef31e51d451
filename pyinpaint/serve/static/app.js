// pyinpaint serve: the page's script (plain JavaScript, no build step, nothing loaded from elsewhere).
// The photo is decoded by the server (POST /api/images) and the page paints on that decoded copy, so the mask it
// sends is exactly the photo's size and the model sees exactly what is shown.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_COLOUR = "#ff2a6d";

const state = {
  info: null,
  photo: null,      // {id, width, height, url}
  ops: [],          // the mask as a list of operations: {kind: "stroke", erase, width, points} | {kind: "clear"} | {kind: "image", canvas}
  stroke: null,     // the stroke being drawn
  erase: false,
  job: null,
  results: null,    // {images: [url], original: url, seed, zip}
  viewing: 0,
  busy: false,
};

// ------------------------------------------------------------------------------------------------ messages
function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
}

function showNotes(notes) {
  $("notes").textContent = (notes || []).join(" ");
}

async function api(url, options) {
  let resp;
  try {
    resp = await fetch(url, options);
  } catch (e) {
    throw new Error("the server cannot be reached (is pyinpaint serve still running?)");
  }
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body && body.error) msg = body.error;
    } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(msg);
  }
  return resp;
}

// ------------------------------------------------------------------------------------------------ server info
async function loadInfo() {
  const info = await (await api("/api/info")).json();
  state.info = info;
  const fill = (select, values, chosen) => {
    select.replaceChildren(...values.map((v) => new Option(v, v, v === chosen, v === chosen)));
  };
  fill($("model"), info.models, info.model);
  fill($("strategy"), info.strategies, info.strategies[0]);
  fill($("blend"), info.blends, info.blends[0]);
  $("n").max = info.limits.max_n;
  $("server").textContent = `model ${info.model} · ${info.device}`;
}

// ------------------------------------------------------------------------------------------------ the photo
async function openPhoto(file) {
  if (!file) return;
  showError("");
  const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    showError(`the photo is ${(file.size / 2 ** 20).toFixed(1)} MB; this server takes at most ${(limit / 2 ** 20).toFixed(1)} MB`);
    return;
  }
  const body = new FormData();
  body.append("image", file, file.name || "photo");
  try {
    const up = await (await api("/api/images", {method: "POST", body})).json();
    await new Promise((resolve, reject) => {
      const img = $("photo");
      img.onload = resolve;
      img.onerror = () => reject(new Error("the browser could not show the decoded photo"));
      img.src = up.url;
    });
    state.photo = up;
    const small = Math.max(up.width, up.height) < 512;  // show small photos at 512 px (the canvas keeps their size)
    $("photo").style.width = small ? `${Math.round(up.width * 512 / Math.max(up.width, up.height))}px` : "";
    const canvas = $("mask");
    canvas.width = up.width;
    canvas.height = up.height;
    state.ops = [];
    redraw();
    $("photo").hidden = false;
    canvas.hidden = false;
    $("stage").classList.remove("empty");
    $("drop-hint").hidden = true;
    showNotes([`${file.name || "photo"}: ${up.width}x${up.height}.`, ...up.notes]);
    updateButtons();
  } catch (e) {
    showError(e.message);
  }
}

async function loadMask(file) {
  if (!file) return;
  showError("");
  if (!state.photo) {
    showError("open a photo first, then its mask");
    return;
  }
  const body = new FormData();
  body.append("mask", file, file.name || "mask");
  body.append("image", state.photo.id);
  try {
    const blob = await (await api("/api/masks", {method: "POST", body})).blob();
    const bitmap = await createImageBitmap(blob);
    // white (hole) -> mask colour, black -> transparent
    const layer = document.createElement("canvas");
    layer.width = bitmap.width;
    layer.height = bitmap.height;
    const ctx = layer.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const px = ctx.getImageData(0, 0, layer.width, layer.height);
    const d = px.data;
    for (let i = 0; i < d.length; i += 4) {
      d[i + 3] = d[i] > 0 ? 255 : 0;
      d[i] = 255; d[i + 1] = 42; d[i + 2] = 109;
    }
    ctx.putImageData(px, 0, 0);
    state.ops.push({kind: "image", canvas: layer});
    redraw();
    updateButtons();
  } catch (e) {
    showError(e.message);
  }
}

// ------------------------------------------------------------------------------------------------ the mask
// The mask canvas has the photo's own size; the hole is where it is opaque. It is redrawn from state.ops (undo
// pops the last operation), so any number of undos costs no memory.
function drawOp(ctx, op) {
  if (op.kind === "clear") {
    ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  } else if (op.kind === "image") {
    ctx.globalCompositeOperation = "source-over";
    ctx.drawImage(op.canvas, 0, 0);
  } else {
    ctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
    ctx.strokeStyle = MASK_COLOUR;
    ctx.fillStyle = MASK_COLOUR;
    ctx.lineWidth = op.width;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    const p = op.points;
    if (p.length === 1) {
      ctx.beginPath();
      ctx.arc(p[0][0], p[0][1], op.width / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.beginPath();
      ctx.moveTo(p[0][0], p[0][1]);
      for (let i = 1; i < p.length; i++) ctx.lineTo(p[i][0], p[i][1]);
      ctx.stroke();
    }
    ctx.globalCompositeOperation = "source-over";
  }
}

function redraw() {
  const canvas = $("mask");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const op of state.ops) drawOp(ctx, op);
  if (state.stroke) drawOp(ctx, state.stroke);
}

function canvasPoint(ev) {
  const canvas = $("mask");
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left) * canvas.width / r.width, (ev.clientY - r.top) * canvas.height / r.height];
}

function brushWidth() {
  const canvas = $("mask");
  const r = canvas.getBoundingClientRect();
  return Number($("size").value) * canvas.width / Math.max(1, r.width);  // the slider is in screen pixels
}

function setupCanvas() {
  const canvas = $("mask");
  canvas.addEventListener("pointerdown", (ev) => {
    if (!state.photo || ev.button !== 0) return;
    canvas.setPointerCapture(ev.pointerId);
    state.stroke = {kind: "stroke", erase: state.erase, width: brushWidth(), points: [canvasPoint(ev)]};
    redraw();
    ev.preventDefault();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!state.stroke) return;
    state.stroke.points.push(canvasPoint(ev));
    const ctx = canvas.getContext("2d");
    const p = state.stroke.points;  // draw just the new segment; the whole stroke is redrawn on undo
    drawOp(ctx, {...state.stroke, points: p.slice(-2)});
  });
  const end = () => {
    if (!state.stroke) return;
    state.ops.push(state.stroke);
    state.stroke = null;
    redraw();
    updateButtons();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
}

function hasHole() {
  const canvas = $("mask");
  if (!state.photo || !state.ops.length) return false;
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
  return false;
}

function maskBlob() {
  // white where the mask canvas is painted, black elsewhere: the mask file convention (nonzero = hole)
  const src = $("mask");
  const out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(src, 0, 0);
  ctx.globalCompositeOperation = "source-in";
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-over";
  ctx.fillStyle = "#000000";
  ctx.fillRect(0, 0, out.width, out.height);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function setTool(erase) {
  state.erase = erase;
  $("brush").classList.toggle("active", !erase);
  $("eraser").classList.toggle("active", erase);
}

function undo() {
  if (state.ops.length) {
    state.ops.pop();
    redraw();
    updateButtons();
  }
}

function clearMask() {
  if (state.ops.length) {
    state.ops.push({kind: "clear"});
    redraw();
    updateButtons();
  }
}

function updateButtons() {
  $("inpaint").disabled = !state.photo || state.busy;
  $("undo").disabled = !state.ops.length;
  $("clear").disabled = !state.ops.length;
}

// ------------------------------------------------------------------------------------------------ inpainting
function setProgress(fraction, text) {
  $("progress").hidden = fraction === null;
  if (fraction !== null) {
    const bar = $("progress-bar");
    bar.classList.toggle("indeterminate", fraction < 0);
    bar.style.width = fraction < 0 ? "100%" : `${Math.round(100 * fraction)}%`;
  }
  $("progress-text").textContent = text || "";
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function inpaint(ev) {
  ev.preventDefault();
  showError("");
  if (!state.photo) return showError("open a photo first");
  if (!hasHole()) return showError("the mask is empty: paint over the area to fill first");
  state.busy = true;
  updateButtons();
  setProgress(-1, "sending…");
  try {
    const body = new FormData($("options"));
    body.append("image", state.photo.id);
    body.append("mask", await maskBlob(), "mask.png");
    let st = await (await api("/api/inpaint", {method: "POST", body})).json();
    state.job = st.job;
    while (st.state === "queued" || st.state === "running") {
      if (st.state === "queued") {
        setProgress(-1, st.position > 1 ? `waiting: place ${st.position} in the queue` : "waiting: next in the queue");
      } else if (st.total && st.done < st.total) {
        setProgress(st.done / st.total, `sampling structures: ${st.done} / ${st.total}`);
      } else {
        setProgress(st.total ? 1 : -1, st.total ? "generating textures…" : "preparing…");
      }
      await sleep(250);
      st = await (await api(`/api/jobs/${st.job}`)).json();
    }
    if (st.state === "error") throw new Error(st.error);
    showResults(st);
    setProgress(null);
  } catch (e) {
    setProgress(null);
    showError(e.message);
  } finally {
    state.busy = false;
    updateButtons();
  }
}

function showResults(st) {
  state.results = st;
  const grid = $("grid");
  const tiles = [];
  const tile = (url, label, index) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = url;
    img.alt = label;
    if (index !== null) {
      img.className = "fill";
      img.dataset.index = index;
      img.title = "click to view large";
      img.addEventListener("click", () => openViewer(index));
    } else {
      img.className = "original";
    }
    const cap = document.createElement("figcaption");
    cap.textContent = label;
    fig.append(img, cap);
    return fig;
  };
  tiles.push(tile(st.original, "original", null));
  st.images.forEach((url, i) => tiles.push(tile(url, `fill ${i + 1}`, i)));
  grid.replaceChildren(...tiles);
  $("results-info").textContent = `${st.n} fills · seed ${st.seed} · ${st.model} · ${st.seconds} s`;
  $("download-all").href = st.zip;
  $("results").hidden = false;
  $("results").scrollIntoView({behavior: "smooth", block: "start"});
}

// ------------------------------------------------------------------------------------------------ large view
function openViewer(i) {
  const r = state.results;
  state.viewing = (i + r.images.length) % r.images.length;
  $("view-fill").src = r.images[state.viewing];
  $("view-orig").src = r.original;
  $("viewer-title").textContent = `fill ${state.viewing + 1} of ${r.images.length} (seed ${r.seed})`;
  const link = $("download-one");
  link.href = r.images[state.viewing];
  link.download = `pyinpaint-fill-${state.viewing + 1}-seed${r.seed}.png`;
  setCompare();
  $("viewer").hidden = false;
  // as large as the window allows (small photos scaled up), the original exactly over the fill
  const o = document.querySelector("#grid img.original");
  const w = o.naturalWidth || 512, h = o.naturalHeight || 512;
  const scale = Math.min(0.9 * window.innerWidth / w, 0.8 * window.innerHeight / h);
  $("view-fill").style.width = `${Math.round(w * scale)}px`;
}

function setCompare(showAll) {
  // the original covers the fill from the left up to the slider (0: the fill alone); holding shows all of it
  const v = showAll ? 100 : Number($("compare").value);
  $("view-orig").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
}

function setupViewer() {
  $("compare").value = 0;
  $("compare").addEventListener("input", () => setCompare());
  const hold = $("hold");
  const down = (ev) => { ev.preventDefault(); setCompare(true); };
  const up = () => setCompare();
  hold.addEventListener("pointerdown", down);
  hold.addEventListener("pointerup", up);
  hold.addEventListener("pointerleave", up);
  hold.addEventListener("pointercancel", up);
  $("close").addEventListener("click", () => { $("viewer").hidden = true; });
  $("prev").addEventListener("click", () => openViewer(state.viewing - 1));
  $("next").addEventListener("click", () => openViewer(state.viewing + 1));
  $("viewer").addEventListener("click", (ev) => { if (ev.target === $("viewer")) $("viewer").hidden = true; });
  document.addEventListener("keydown", (ev) => {
    const inField = ev.target instanceof HTMLInputElement && ev.target.type !== "range";
    if (!$("viewer").hidden) {
      if (ev.key === "Escape") $("viewer").hidden = true;
      else if (ev.key === "ArrowLeft") openViewer(state.viewing - 1);
      else if (ev.key === "ArrowRight") openViewer(state.viewing + 1);
      else if (ev.key === " " && !ev.repeat) { ev.preventDefault(); setCompare(true); }
      return;
    }
    if (inField) return;
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
    else if (ev.key === "b") setTool(false);
    else if (ev.key === "e") setTool(true);
  });
  document.addEventListener("keyup", (ev) => { if (ev.key === " " && !$("viewer").hidden) setCompare(); });
}

// ------------------------------------------------------------------------------------------------ start
function setup() {
  $("photo-file").addEventListener("change", (ev) => { openPhoto(ev.target.files[0]); ev.target.value = ""; });
  $("mask-file").addEventListener("change", (ev) => { loadMask(ev.target.files[0]); ev.target.value = ""; });
  const stage = $("stage");
  stage.addEventListener("dragover", (ev) => { ev.preventDefault(); stage.classList.add("drag"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("drag"));
  stage.addEventListener("drop", (ev) => {
    ev.preventDefault();
    stage.classList.remove("drag");
    const file = ev.dataTransfer.files[0];
    if (file) openPhoto(file);
  });
  $("brush").addEventListener("click", () => setTool(false));
  $("eraser").addEventListener("click", () => setTool(true));
  $("size").addEventListener("input", () => { $("size-out").textContent = $("size").value; });
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearMask);
  $("options").addEventListener("submit", inpaint);
  setupCanvas();
  setupViewer();
  updateButtons();
  loadInfo().catch((e) => showError(e.message));
}

setup();
