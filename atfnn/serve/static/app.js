// The page of `atfnn serve`: one file (dropped, chosen or recorded) -> /api/predict, then /api/explain.
"use strict";

const COLOURS = ["#d9453d", "#8e5bd0", "#f0a22e", "#7d8796", "#3f7fd9", "#2fa87a", "#c9569b", "#5a9e2f"];
const $ = (id) => document.getElementById(id);
const state = { labels: [], colour: {}, maxBytes: Infinity };

// ---------------------------------------------------------------------------------------------- model card
async function loadCard() {
  const card = await (await fetch("/api/model")).json();
  state.labels = card.labels;
  card.labels.forEach((label, i) => { state.colour[label] = COLOURS[i % COLOURS.length]; });
  state.maxBytes = card.limits.max_upload_mb * 1024 * 1024;
  const info = (card.info && card.info.card) || {};
  const measured = info.cross_validated ? ` · cross-validated UAR ${info.cross_validated.uar.toFixed(1)} %` : "";
  const data = info.training_data ? ` · trained on ${info.training_data.corpus}` : "";
  $("model").textContent = `${card.name} (${card.variant}) · ${card.labels.join(", ")}${data}${measured}`;
  $("limits").textContent = `up to ${card.limits.max_seconds} s, ${card.limits.max_upload_mb} MiB`;
}

// ---------------------------------------------------------------------------------------------- requests
async function post(path, file) {
  const form = new FormData();
  form.append("file", file, file.name || "upload.wav");
  const response = await fetch(path, { method: "POST", body: form });
  const body = await response.json().catch(() => ({ error: { message: `HTTP ${response.status}` } }));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

async function analyse(file) {
  showError(null);
  if (file.size > state.maxBytes) { showError(`${file.name}: larger than this server's upload limit`); return; }
  setStatus(`classifying ${file.name}…`);
  const wave = decodeForDrawing(file);
  try {
    const prediction = await post("/api/predict?timeline=true", file);
    showPrediction(prediction);
    drawTimeline(prediction, await wave);
    setStatus("computing the attention maps…");
    showMaps(await post("/api/explain?arrays=false", file));
    setStatus("");
  } catch (e) {
    setStatus("");
    showError(e.message);
  }
}

// ---------------------------------------------------------------------------------------------- results
function showPrediction(p) {
  $("result").hidden = false;
  $("label").textContent = p.label;
  $("label").style.color = state.colour[p.label];
  $("confidence").textContent = `p = ${p.probs[p.label].toFixed(2)}`;
  $("file-info").textContent = `${p.file} · ${p.duration.toFixed(2)} s · ${p.timeline.length} segment(s)`;
  const bars = $("bars");
  bars.replaceChildren();
  const order = Object.entries(p.probs).sort((a, b) => b[1] - a[1]);
  for (const [label, prob] of order) {
    const row = document.createElement("div");
    row.className = "bar" + (label === p.label ? " top" : "");
    row.dataset.label = label;
    row.innerHTML = `<span class="name"></span><div class="track"><div class="fill"></div></div><span class="value"></span>`;
    row.querySelector(".name").textContent = label;
    row.querySelector(".fill").style.width = `${(100 * prob).toFixed(1)}%`;
    row.querySelector(".fill").style.background = state.colour[label];
    row.querySelector(".value").textContent = `${(100 * prob).toFixed(1)} %`;
    bars.appendChild(row);
  }
}

function showMaps(explanation) {
  $("maps-card").hidden = false;
  const band = explanation.high_band / explanation.n_mels;
  for (const [panel, data] of Object.entries(explanation.panels)) {
    const img = $(`map-${panel}`);
    if (!img) continue;
    img.closest("figure").hidden = data === null;
    img.parentElement.style.setProperty("--band", band);
    if (data) img.src = `data:image/png;base64,${data.png}`;
  }
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function setStatus(text) { $("status").textContent = text; }

// ---------------------------------------------------------------------------------------------- drawing
async function decodeForDrawing(file) {
  try {
    const context = new AudioContext();
    const buffer = await context.decodeAudioData(await file.arrayBuffer());
    context.close();
    return buffer.getChannelData(0);
  } catch (e) {
    return null;  // a format this browser cannot decode: the server may still; the timeline is drawn without it
  }
}

function sizeCanvas(canvas) {
  const scale = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * scale;
  canvas.height = canvas.clientHeight * scale;
  const g = canvas.getContext("2d");
  g.setTransform(scale, 0, 0, scale, 0, 0);
  return [g, canvas.clientWidth, canvas.clientHeight];
}

function drawWave(samples) {
  const [g, w, h] = sizeCanvas($("wave"));
  g.fillStyle = "#f3f5f8";
  g.fillRect(0, 0, w, h);
  if (!samples) { g.fillStyle = "#6a7384"; g.fillText("(waveform not decodable in this browser)", 10, h / 2); return; }
  const step = samples.length / w;
  let peak = 1e-9;
  for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
  g.fillStyle = "#4a5568";
  for (let x = 0; x < w; x++) {
    let lo = 0, hi = 0;
    for (let i = Math.floor(x * step); i < Math.floor((x + 1) * step); i++) { lo = Math.min(lo, samples[i]); hi = Math.max(hi, samples[i]); }
    g.fillRect(x, h / 2 - (hi / peak) * h * 0.45, 1, Math.max(1, ((hi - lo) / peak) * h * 0.45));
  }
}

function drawTimeline(p, samples) {
  $("timeline-card").hidden = false;
  drawWave(samples);
  const [g, w, h] = sizeCanvas($("timeline"));
  g.clearRect(0, 0, w, h);
  const lane = h / 2;
  p.timeline.forEach((s, k) => {
    const x0 = (s.start / p.duration) * w, x1 = (s.end / p.duration) * w, y = (k % 2) * lane;
    g.globalAlpha = 0.25 + 0.75 * s.probs[s.label];
    g.fillStyle = state.colour[s.label];
    g.fillRect(x0, y + 1, Math.max(1, x1 - x0 - 1), lane - 2);
    g.globalAlpha = 1;
    g.fillStyle = "#fff";
    g.font = "11px system-ui, sans-serif";
    if (x1 - x0 > 50) g.fillText(s.label, x0 + 4, y + lane / 2 + 4);
  });
  $("legend").replaceChildren(...state.labels.map((label) => {
    const item = document.createElement("span");
    item.style.setProperty("--c", state.colour[label]);
    item.textContent = label;
    return item;
  }));
}

// ---------------------------------------------------------------------------------------------- microphone
function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * samples.length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * samples.length, true);
  samples.forEach((v, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, v)) * 0x7fff, true));
  return new Blob([view], { type: "audio/wav" });
}

let recorder = null;

async function toggleRecording() {
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      recorder = null;
      $("record").classList.remove("recording");
      $("record").textContent = "● Record from the microphone";
      const context = new AudioContext();
      const buffer = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
      context.close();
      analyse(new File([encodeWav(buffer.getChannelData(0), buffer.sampleRate)], "recording.wav", { type: "audio/wav" }));
    };
    recorder.start();
    $("record").classList.add("recording");
    $("record").textContent = "■ Stop and classify";
    setStatus("recording…");
  } catch (e) {
    showError(`microphone: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------- wiring
function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files[0]) analyse($("file").files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) analyse(e.dataTransfer.files[0]);
  });
  $("record").addEventListener("click", toggleRecording);
  loadCard().catch((e) => showError(`cannot read the model card: ${e.message}`));
}

wire();
