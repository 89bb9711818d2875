
(function () {
"use strict";
const data = JSON.parse(document.getElementById("report-data").textContent);
// the sprite sheets: one JSON block a window of frames, {frames: uri, maps: [{kind: uri}, ...] (one per panel)}
const sheets = {frames: [], maps: data.panels.map(p => Object.fromEntries(Object.keys(p.maps).map(k => [k, []])))};
document.querySelectorAll('script[type="application/json"].report-sheet').forEach(node => {
  const block = JSON.parse(node.textContent);
  sheets.frames.push(block.frames);
  block.maps.forEach((m, p) => Object.entries(m).forEach(([k, uri]) => sheets.maps[p][k].push(uri)));
});
// the page's frames are steps F..F+T-1 of the run's total (a window of a long run, or all of it)
const F = data.first_step || 0, TOTAL = data.total_steps || data.frames;
const T = data.frames, S = data.frames_per_sheet, FH = data.frame_shape[0], FW = data.frame_shape[1];
// each kind of map's colour (report.py's MAP_LABELS lists the kinds): actors cool, critics warm
const COLORS = {actor: [40, 110, 255], critic: [255, 45, 30], jacobian_actor: [0, 220, 110],
                jacobian_critic: [255, 200, 0], occlusion_actor: [150, 70, 255], occlusion_critic: [255, 120, 200],
                rise_actor: [0, 200, 235], rise_critic: [255, 140, 0], lime_actor: [150, 230, 0],
                lime_critic: [220, 0, 140], sarfa_actor: [0, 150, 140]};
const PANEL_COLORS = ["#2f6fdb", "#d9480f", "#2b8a3e", "#ae3ec9", "#e67700", "#0c8599", "#c2255c", "#5c940d",
                      "#364fc7", "#862e9c"];
const series = data.series || {};
const names = data.action_names || [];
const state = {frame: 0, playing: false, on: {}, normalise: "frame", opacity: 0.8, stat: "max", fps: 8};
// on at first: the first method's overlays (data.shown); the other methods' toggles start off
const shown = data.shown || data.kinds;
data.kinds.forEach(k => { state.on[k] = shown.includes(k); });

// A link from the data becomes an href only as what report.py writes: a relative path of URL-encoded segments
// (letters, digits, "._~-", %XX), so no scheme (no ":" at all), no host ("//"), no absolute path, no "..", whatever
// the data block holds. "%2e%2e" counts as ".." (URL parsers treat it so).
const SEGMENT = /^(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+$/, DOTS = /^(?:\.|%2e){1,2}$/i;
function relativeHref(u) {
  if (typeof u !== "string" || u === "") return null;
  return u.split("/").every(s => SEGMENT.test(s) && !DOTS.test(s)) ? u : null;
}
// a sheet is an image's src only as a WebP data URI (an image, never a document or a script)
const SHEET_URI = /^data:image\/webp;base64,[A-Za-z0-9+\/]+={0,2}$/;

// Every string from the data goes in as text (textContent, text nodes, attributes), never parsed as HTML; an href
// or src that is not a relative link is left off.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "text") node.textContent = v;
    else if (k === "href" || k === "src") { const u = relativeHref(v); if (u !== null) node.setAttribute(k, u); }
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
function actionName(a) { return a === undefined || a === null ? "" : (a < names.length ? names[a] : String(a)); }
function fmt(v) {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v === "number") return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : String(+v.toPrecision(4));
  return String(v);
}

// ---------------------------------------------------------------------------------------- header ---
const header = el("header", {}, el("h1", {text: data.title}));
const metaLine = el("div", {class: "meta"});
if (data.checkpoint) metaLine.append(el("b", {text: "checkpoint "}), data.checkpoint + "  ");
if (T) metaLine.append(el("b", {text: "frames "}), String(T) + (T < TOTAL ? " (steps " + F + "-" + (F + T - 1) +
  " of " + TOTAL + ")" : "") + "  ");
if (names.length) metaLine.append(el("b", {text: "actions "}), names.map((n, i) => i + " " + n).join(", "));
header.append(metaLine);
if ((data.lossy_sheets || []).length) {
  header.append(el("div", {class: "note", text: "frames " + data.lossy_sheets.map(s => (F + s * S) + "-" +
    (F + Math.min(T - 1, s * S + S - 1))).join(", ") + " are stored lossy (over the size budget): pixels are approximate there"}));
}
document.body.append(header);

// ------------------------------------------------------------------------------------- LRU caches ---
class LRU {
  constructor(limit) { this.limit = limit; this.map = new Map(); }
  get(key, make) {
    let v = this.map.get(key);
    if (v !== undefined) { this.map.delete(key); this.map.set(key, v); return v; }
    v = make(); this.map.set(key, v);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value);
    return v;
  }
}
function loadImage(uri) {
  if (typeof uri !== "string" || !SHEET_URI.test(uri)) {
    return Promise.reject(new Error("a sheet is not a WebP data URI"));
  }
  const img = new Image(); img.src = uri; return img.decode().then(() => img);
}
const frameSheets = new LRU(6);
const mapSheets = new LRU(96);
function frameSheet(s) { return frameSheets.get(s, () => loadImage(sheets.frames[s])); }
function mapSheet(p, kind, s) {
  return mapSheets.get(p + "/" + kind + "/" + s, () => loadImage(sheets.maps[p][kind][s]).then(img => {
    const c = el("canvas", {width: img.width, height: img.height});
    const g = c.getContext("2d", {willReadFrequently: true});
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, img.width, img.height).data;
    const q = new Uint8Array(img.width * img.height);
    for (let i = 0; i < q.length; i++) q[i] = px[4 * i];
    return q;
  }));
}

// the largest value of each kind over the run and every panel ("whole run" normalisation). Like the movie, the
// overlay shows where a map is positive: a signed map's (occlusion's, LIME's) negative cells, evidence against
// the response, are left uncovered rather than drawn as strongly as the positive ones.
const runMax = {};
data.kinds.forEach(k => {
  let m = 0;
  data.panels.forEach(p => { const s = p.maps[k]; if (!s) return;
    for (let t = 0; t < T; t++) m = Math.max(m, s.hi[t] || 0); });
  runMax[k] = m;
});

// ------------------------------------------------------------------------------------------ controls ---
let slider, frameLabel, actionLabel, valueLabel, playButton;
const views = [];
if (T > 0) {
  const controls = el("section", {id: "controls"});
  playButton = el("button", {id: "play", type: "button", text: "play"});
  slider = el("input", {id: "frame-slider", type: "range", min: 0, max: T - 1, step: 1, value: 0, "aria-label": "frame"});
  frameLabel = el("span", {id: "frame-label"});
  actionLabel = el("span", {id: "action-name", title: "action taken on this frame"});
  valueLabel = el("span", {id: "value-label"});
  const fps = el("select", {id: "fps", "aria-label": "frames per second"});
  [2, 4, 8, 15, 30].forEach(f => { const o = el("option", {value: f, text: f + " fps"}); if (f === 8) o.selected = true; fps.append(o); });
  controls.append(playButton, slider, frameLabel, actionLabel, valueLabel, fps);
  data.kinds.forEach(k => {
    const box = el("input", {type: "checkbox", id: "toggle-" + k});
    box.checked = state.on[k];
    box.addEventListener("change", () => { state.on[k] = box.checked; redraw(); });
    const c = COLORS[k];
    const swatch = el("span", {class: "swatch"});
    swatch.style.background = `rgb(${c})`;  // CSSOM: the CSP allows no style attribute
    controls.append(el("label", {}, box, swatch, data.labels[k]));
  });
  if (data.kinds.length) {
    const norm = el("select", {id: "normalise", "aria-label": "normalisation"});
    norm.append(el("option", {value: "frame", text: "scale: per frame"}), el("option", {value: "run", text: "scale: whole run"}));
    norm.addEventListener("change", () => { state.normalise = norm.value; redraw(); });
    const opacity = el("input", {id: "opacity", type: "range", min: 0, max: 100, value: 80, "aria-label": "opacity"});
    opacity.addEventListener("input", () => { state.opacity = opacity.value / 100; redraw(); });
    const stat = el("select", {id: "stat", "aria-label": "saliency statistic plotted"});
    stat.append(el("option", {value: "max", text: "plot: max of map"}), el("option", {value: "mean", text: "plot: mean of map"}));
    stat.addEventListener("change", () => { state.stat = stat.value; plots.forEach(p => p.build()); drawCursors(); });
    controls.append(norm, el("label", {}, "opacity ", opacity), stat);
  }
  slider.addEventListener("input", () => { stop(); setFrame(+slider.value); });
  playButton.addEventListener("click", () => state.playing ? stop() : play());
  fps.addEventListener("change", () => { state.fps = +fps.value; });
  document.addEventListener("keydown", e => {
    if (e.target.tagName === "INPUT" && e.target.type !== "checkbox" && e.target.type !== "range") return;
    if (e.key === "ArrowRight") { stop(); setFrame(Math.min(T - 1, state.frame + 1)); e.preventDefault(); }
    else if (e.key === "ArrowLeft") { stop(); setFrame(Math.max(0, state.frame - 1)); e.preventDefault(); }
    else if (e.key === " " && e.target.tagName !== "BUTTON") { state.playing ? stop() : play(); e.preventDefault(); }
  });
  document.body.append(controls);

  const main = el("section", {id: "main", class: data.panels.length <= 1 ? "single" : "multi"});
  const panelBox = el("section", {id: "panels"});
  data.panels.forEach((p, i) => {
    const canvas = el("canvas", {class: "view", width: FW, height: FH, "data-panel": i});
    const caption = el("figcaption", {});
    const href = relativeHref(p.link);
    caption.append(href === null ? String(p.label) : el("a", {href, text: p.label}));
    panelBox.append(el("figure", {class: "panel", "data-name": p.name}, caption, canvas));
    views.push(canvas.getContext("2d", {willReadFrequently: true}));
  });
  main.append(panelBox, el("section", {id: "plots"}));
  document.body.append(main);
}

// ------------------------------------------------------------------------------------------ drawing ---
const scratch = {};
function overlay(ctx, p, kind, q, r, t) {
  const m = data.panels[p].maps[kind], h = m.shape[0], w = m.shape[1];
  const key = h + "x" + w;
  if (!scratch[key]) { const c = el("canvas", {width: w, height: h}); scratch[key] = [c, c.getContext("2d")]; }
  const [canvas, g] = scratch[key];
  const img = g.createImageData(w, h), px = img.data, col = COLORS[kind], a = 255 * state.opacity;
  let scale = 1 / 255, offset = 0, run = state.normalise === "run";
  const lo = m.lo[t] || 0, hi = m.hi[t] || 0, top = runMax[kind] || 1;
  const base = r * h * w;
  // a signed frame's values measured from the quantised level of 0, so that its zero cells stay uncovered too
  const span = hi - lo, signed = lo < 0, zero = signed ? Math.round(-lo / span * 255) : 0, peak = hi > 0 ? hi : 1;
  const value = qi => signed ? Math.max(0, qi - zero) * span / 255 : lo + qi * span / 255;
  for (let i = 0; i < h * w; i++) {
    let v = q[base + i] * scale;
    if (run) v = Math.min(1, value(q[base + i]) / top);
    else if (signed) v = Math.min(1, value(q[base + i]) / peak);  // a signed frame: its positive part, 0..max
    px[4 * i] = col[0]; px[4 * i + 1] = col[1]; px[4 * i + 2] = col[2]; px[4 * i + 3] = Math.round(a * v);
  }
  g.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(canvas, 0, 0, w, h, 0, m.rows[0], FW, m.rows[1] - m.rows[0]);
}

let drawToken = 0;
async function draw(t) {
  const token = ++drawToken;
  const s = Math.floor(t / S), r = t % S;
  const wanted = [];
  data.panels.forEach((p, i) => data.kinds.forEach(k => { if (state.on[k] && p.maps[k]) wanted.push([i, k]); }));
  const [img, ...maps] = await Promise.all([frameSheet(s), ...wanted.map(([i, k]) => mapSheet(i, k, s))]);
  if (token !== drawToken) return;  // a newer frame was asked for meanwhile
  views.forEach((ctx, i) => {
    ctx.globalCompositeOperation = "source-over";
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, r * FH, FW, FH, 0, 0, FW, FH);
    wanted.forEach(([p, k], j) => { if (p === i) overlay(ctx, p, k, maps[j], r, t); });
  });
  if (state.playing && s + 1 < sheets.frames.length && r > S / 2) frameSheet(s + 1);  // prefetch
  document.body.dataset.drawn = String(t);
}
function redraw() { return draw(state.frame); }

function setFrame(t) {
  t = Math.max(0, Math.min(T - 1, Math.round(t)));
  state.frame = t;
  slider.value = t;
  frameLabel.textContent = "frame " + (F + t) + " / " + (F + T - 1);
  actionLabel.textContent = series.actions ? actionName(series.actions[t]) : "";
  valueLabel.textContent = series.values && series.values[t] !== null ? (data.value_label || "value") + " " + fmt(series.values[t]) : "";
  drawCursors();
  return draw(t);
}

let timer = null;
function play() {
  if (state.frame >= T - 1) setFrame(0);
  state.playing = true; playButton.textContent = "pause";
  const tick = async () => {
    if (!state.playing) return;
    if (state.frame >= T - 1) { stop(); return; }
    const started = performance.now();
    await setFrame(state.frame + 1);
    if (state.playing) timer = setTimeout(tick, Math.max(0, 1000 / state.fps - (performance.now() - started)));
  };
  timer = setTimeout(tick, 1000 / state.fps);
}
function stop() { state.playing = false; if (timer) clearTimeout(timer); timer = null; if (playButton) playButton.textContent = "play"; }

// --------------------------------------------------------------------------------------------- plots ---
const plots = [];
const PAD = {l: 46, r: 8, t: 16, b: 14};
class Plot {
  constructor(name, title, lines) {
    this.name = name; this.title = title; this.lines = lines;  // lines(): [{label, color, values, style}]
    this.canvas = el("canvas", {class: "plot", "data-plot": name, title: "click to jump to that frame"});
    this.canvas.addEventListener("click", e => {
      const box = this.canvas.getBoundingClientRect();
      stop(); setFrame(this.frameAt(e.clientX - box.left, box.width));
    });
    document.getElementById("plots").append(this.canvas);
    plots.push(this);
  }
  xOf(t, width) { return PAD.l + (T <= 1 ? 0.5 : t / (T - 1)) * (width - PAD.l - PAD.r); }
  frameAt(x, width) { return T <= 1 ? 0 : Math.round((x - PAD.l) / (width - PAD.l - PAD.r) * (T - 1)); }
  build() {
    const dpr = window.devicePixelRatio || 1, w = Math.max(200, this.canvas.clientWidth), h = this.canvas.clientHeight || 86;
    this.canvas.width = Math.round(w * dpr); this.canvas.height = Math.round(h * dpr);
    this.w = w; this.h = h; this.dpr = dpr;
    const off = el("canvas", {width: this.canvas.width, height: this.canvas.height});
    const g = off.getContext("2d"); g.scale(dpr, dpr);
    g.font = "11px system-ui, sans-serif"; g.textBaseline = "top";
    const lines = this.lines();
    let lo = Infinity, hi = -Infinity;
    lines.forEach(l => { if (l.style !== "ends") l.values.forEach(v => { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    if (this.yRange) [lo, hi] = this.yRange;
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) { hi = lo + 1; lo = lo - (lo === 0 ? 0 : 1); }
    const y = v => PAD.t + (1 - (v - lo) / (hi - lo)) * (h - PAD.t - PAD.b);
    g.strokeStyle = "#d5dae2"; g.strokeRect(PAD.l, PAD.t, w - PAD.l - PAD.r, h - PAD.t - PAD.b);
    g.fillStyle = "#5b6575";
    if (this.ticks) {  // thinned so that labels stay 11 px apart
      const step = Math.max(1, Math.ceil(this.ticks.length * 11 / (h - PAD.t - PAD.b)));
      this.ticks.forEach(([v, label], i) => { if (i % step === 0) g.fillText(label, 2, y(v) - 5); });
    }
    else { g.fillText(fmt(hi), 2, PAD.t - 2); g.fillText(fmt(lo), 2, h - PAD.b - 10); }
    lines.forEach(l => {
      g.strokeStyle = g.fillStyle = l.color;
      if (l.style === "ends") {
        g.setLineDash([3, 3]);
        l.values.forEach((d, t) => { if (d) { const x = this.xOf(t, w); g.beginPath(); g.moveTo(x, PAD.t); g.lineTo(x, h - PAD.b); g.stroke(); } });
        g.setLineDash([]);
      } else if (l.style === "bars") {
        const zero = y(Math.max(lo, Math.min(hi, 0)));
        l.values.forEach((v, t) => { if (v) { const x = this.xOf(t, w); g.fillStyle = v > 0 ? "#2b8a3e" : "#c92a2a"; g.fillRect(x - 1, Math.min(zero, y(v)), 2, Math.abs(y(v) - zero) || 1); } });
      } else if (l.style === "points") {
        l.values.forEach((v, t) => { if (v !== null) g.fillRect(this.xOf(t, w) - 1, y(v) - 1, 2.5, 2.5); });
      } else {
        g.lineWidth = 1.2; g.beginPath(); let pen = false;
        l.values.forEach((v, t) => { if (v === null) { pen = false; return; } const x = this.xOf(t, w); pen ? g.lineTo(x, y(v)) : g.moveTo(x, y(v)); pen = true; });
        g.stroke();
      }
    });
    let x = PAD.l + 4;
    g.fillStyle = "#1d2430"; g.fillText(this.title, x, 2); x += g.measureText(this.title).width + 12;
    lines.filter(l => l.label).forEach(l => { g.fillStyle = l.color; g.fillText(l.label, x, 2); x += g.measureText(l.label).width + 10; });
    this.background = off;
  }
  cursor() {
    if (!this.background) this.build();
    const g = this.canvas.getContext("2d");
    g.setTransform(1, 0, 0, 1, 0, 0); g.clearRect(0, 0, this.canvas.width, this.canvas.height);
    g.drawImage(this.background, 0, 0);
    g.scale(this.dpr, this.dpr);
    const x = this.xOf(state.frame, this.w);
    g.strokeStyle = "rgba(20, 20, 20, 0.7)"; g.lineWidth = 1; g.beginPath(); g.moveTo(x, PAD.t); g.lineTo(x, this.h - PAD.b); g.stroke();
  }
}
function drawCursors() { plots.forEach(p => p.cursor()); }

if (T > 0) {
  if (series.values) new Plot("value", data.value_label || "value" + (data.kind === "sweep" ? " (recorded game)" : ""),
    () => [{color: "#2f6fdb", values: series.values}]);
  if (series.actions) {
    const p = new Plot("action", "action taken", () => [{color: "#5f3dc4", values: series.actions, style: "points"}]);
    const n = Math.max(names.length, Math.max(...series.actions) + 1);
    p.yRange = [-0.5, n - 0.5];
    p.ticks = []; for (let a = 0; a < n; a++) p.ticks.push([a, actionName(a).slice(0, 8)]);
    p.canvas.style.height = Math.min(160, Math.max(86, 14 * n + 30)) + "px";
  }
  if (series.rewards || series.dones) new Plot("reward", "reward, episode ends (dashed)", () => [
    ...(series.rewards ? [{color: "#2b8a3e", values: series.rewards, style: "bars"}] : []),
    ...(series.dones ? [{color: "#868e96", values: series.dones, style: "ends"}] : [])]);
  data.kinds.forEach(k => new Plot("saliency-" + k, data.labels[k], () => data.panels
    .map((p, i) => p.maps[k] ? {label: data.panels.length > 1 ? p.label + " " + state.stat : state.stat,
      color: data.panels.length > 1 ? PANEL_COLORS[i % PANEL_COLORS.length] : `rgb(${COLORS[k]})`,
      values: p.maps[k][state.stat]} : null).filter(Boolean)));
  window.addEventListener("resize", () => { plots.forEach(p => p.build()); drawCursors(); });
}

// --------------------------------------------------------------------------------------------- table ---
if (data.table) {
  const tab = data.table, section = el("section", {id: "table-section"}, el("h2", {text: "summary.csv"}));
  const table = el("table", {id: "summary"}), head = el("tr"), body = el("tbody");
  const numeric = tab.columns.map((c, j) => tab.rows.every(r => r[j] === null || r[j] === "" || isFinite(Number(r[j]))) &&
    tab.rows.some(r => typeof r[j] === "number" || (r[j] !== null && r[j] !== "" && !isNaN(Number(r[j])))));
  let rows = tab.rows.slice();
  const render = () => {
    body.replaceChildren(...rows.map(r => el("tr", {}, ...r.map((v, j) => {
      const cell = el("td", {class: numeric[j] ? "num" : "text"});
      const linked = j === 0 && tab.links && Object.hasOwn(tab.links, String(v));
      const href = linked ? relativeHref(tab.links[String(v)]) : null;
      if (href !== null) cell.append(el("a", {href, text: String(v)}));
      else cell.textContent = typeof v === "number" ? fmt(v) : (v === null ? "" : String(v));
      return cell;
    }))));
  };
  tab.columns.forEach((c, j) => {
    const th = el("th", {text: c, "data-column": c, scope: "col"});
    th.addEventListener("click", () => {
      const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      head.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      const key = v => numeric[j] ? (v === null || v === "" ? -Infinity : Number(v)) : String(v === null ? "" : v);
      rows.sort((a, b) => { const x = key(a[j]), y = key(b[j]);
        return (typeof x === "number" ? x - y : x.localeCompare(y, undefined, {numeric: true})) * dir; });
      render();
    });
    head.append(th);
  });
  table.append(el("thead", {}, head), body);
  render();
  section.append(table);
  document.body.append(section);
}

// ------------------------------------------------------------------------------------------ settings ---
if (data.settings && Object.keys(data.settings).length) {
  document.body.append(el("details", {id: "settings"}, el("summary", {text: "settings"}),
    el("pre", {id: "settings-json", text: JSON.stringify(data.settings, null, 2)})));
}

window.viewer = {data, state, setFrame: t => setFrame(t), play, stop};
if (T > 0) { plots.forEach(p => p.build()); setFrame(0); }
else document.body.dataset.drawn = "none";
})();
