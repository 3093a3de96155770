// The slice viewer: one series at full resolution, scrolled with the wheel, the
// arrow keys or a slider; window/level for DICOM (presets, drag); the heat map as
// an overlay with opacity; a track of each slice's p(class) and OOD flag; "next
// most suspicious"; a text line for screen readers. Plain canvas, no library.
//
// Pixels come from /slices/<i>/view (ingest/views.py): DICOM as int16 HU behind
// a 24-byte header (the browser inflates the deflate transfer encoding), PNG/JPEG
// as uploaded. A slice without a viewing copy shows the model-input image.

import { ApiError, request } from "./api.js";
import { el, fill, percent } from "./dom.js";

const HU_HEADER_BYTES = 24;
const CACHE_SLICES = 48;
const PREFETCH = 2;
const PRESETS = [
  { key: "lung", name: "Lung", center: -600, width: 1500 },
  { key: "mediastinum", name: "Mediastinum", center: 40, width: 400 },
];

/** Parse a HU view (see api/jobs.py slice_view): {kind, rows, cols, hu, monochrome1, window}. */
export function parseHuView(buffer) {
  const head = new DataView(buffer, 0, HU_HEADER_BYTES);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== "HU16") throw new Error("not a HU view");
  const rows = head.getUint32(4, true);
  const cols = head.getUint32(8, true);
  const flags = head.getUint32(12, true);
  const window = { center: head.getFloat32(16, true), width: head.getFloat32(20, true) };
  const hu = new Int16Array(buffer, HU_HEADER_BYTES, rows * cols);
  return { kind: "hu", rows, cols, hu, monochrome1: Boolean(flags & 1), window };
}

/** Windowed gray levels into RGBA pixels: center - width/2 -> 0, center + width/2 -> 255. */
export function applyWindow(hu, out, center, width, invert) {
  const lo = center - width / 2;
  const scale = 255 / Math.max(1, width);
  for (let i = 0, j = 0; i < hu.length; i += 1, j += 4) {
    let g = (hu[i] - lo) * scale;
    g = g < 0 ? 0 : g > 255 ? 255 : g;
    if (invert) g = 255 - g;
    out[j] = out[j + 1] = out[j + 2] = g;
    out[j + 3] = 255;
  }
}

export class SliceViewer {
  /**
   * @param {HTMLElement} container  the viewer owns this element's content
   * @param {object} o  jobId; series: [{name, slices: [result rows]}]; summary; classes;
   *                    seriesNumber, sliceNumber (from 1); onMove(n, i); onClose()
   */
  constructor(container, o) {
    this.container = container;
    this.o = o;
    this.cache = new Map();
    this.heat = new Map();
    this.heatmaps = new Set((o.summary && o.summary.heatmaps) || []);
    this.topClass = (o.summary && (o.summary.top_class || o.summary.label)) || (o.classes || [])[0];
    this.windowLevel = null;
    this.showHeat = true;
    this.opacity = 0.5;
    this.token = 0;
    this.#build();
    this.show(o.seriesNumber, o.sliceNumber);
  }

  get #slices() {
    return this.o.series[this.n - 1].slices;
  }

  #build() {
    const jobId = this.o.jobId;
    this.title = el("h2", { id: `viewer-title-${jobId}`, tabindex: -1 });
    this.canvas = el("canvas", { class: "view", "aria-hidden": "true" });
    this.ctx = this.canvas.getContext("2d");
    this.stage = el("div", {
      class: "stage", tabindex: 0, role: "application",
      "aria-label": "Slice image: arrow keys or the wheel move through the series; N: next most suspicious; H: heat map; 1, 2, 3: window presets",
    }, this.canvas);
    this.track = el("canvas", { class: "track", width: 40, height: 300, "aria-hidden": "true", title: "p(class) per slice; click to jump" });
    this.slider = el("input", { type: "range", min: 1, max: 1, value: 1, id: `viewer-slider-${jobId}`, class: "slider" });
    this.position = el("output", { for: this.slider.id, class: "position" });
    this.said = el("p", { class: "said", role: "status", "aria-live": "polite" });
    this.presetBox = el("span", { class: "presets", role: "group", "aria-label": "Window presets" });
    this.windowText = el("span", { class: "window-text" });
    this.heatToggle = el("input", { type: "checkbox", id: `viewer-heat-${jobId}`, checked: true });
    this.opacityInput = el("input", { type: "range", id: `viewer-opacity-${jobId}`, min: 0, max: 100, value: 50 });
    this.heatBox = el("span", { class: "heat-controls" },
      this.heatToggle, el("label", { for: this.heatToggle.id }, " Heat map "),
      el("label", { for: this.opacityInput.id, class: "visually-hidden" }, "Heat map opacity"), this.opacityInput);
    this.nextButton = el("button", { type: "button", onclick: () => this.nextSuspicious() }, "Next most suspicious");
    this.seriesSelect = el("select", { id: `viewer-series-${jobId}` },
      this.o.series.map((s, i) => el("option", { value: i + 1 }, s.name)));
    fill(this.container,
      el("div", { class: "viewer-head" }, this.title,
        el("button", { type: "button", class: "close", onclick: () => this.o.onClose() }, "Close viewer")),
      el("p", { class: "viewer-bar" },
        el("label", { for: this.seriesSelect.id }, "Series "), this.seriesSelect, " ",
        el("button", { type: "button", onclick: () => this.step(-1), "aria-label": "Previous slice" }, "◀"),
        el("label", { for: this.slider.id, class: "visually-hidden" }, "Slice"), this.slider,
        el("button", { type: "button", onclick: () => this.step(1), "aria-label": "Next slice" }, "▶"), " ",
        this.position, " ", this.nextButton),
      el("p", { class: "viewer-bar" }, "Window: ", this.presetBox, " ", this.windowText, " ", this.heatBox),
      el("div", { class: "viewer-body" }, this.stage, this.track),
      this.said);
    this.container.hidden = false;
    this.#wire();
  }

  #wire() {
    this.slider.addEventListener("input", () => this.go(Number(this.slider.value)));
    this.seriesSelect.addEventListener("change", () => this.show(Number(this.seriesSelect.value), 1));
    this.heatToggle.addEventListener("change", () => this.toggleHeat(this.heatToggle.checked));
    this.opacityInput.addEventListener("input", () => {
      this.opacity = Number(this.opacityInput.value) / 100;
      this.#draw();
    });
    this.stage.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      this.step(ev.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    this.stage.addEventListener("keydown", (ev) => this.#key(ev));
    this.track.addEventListener("click", (ev) => {
      const box = this.track.getBoundingClientRect();
      const n = this.#slices.length;
      this.go(Math.min(n, Math.max(1, Math.floor(((ev.clientY - box.top) / box.height) * n) + 1)));
    });
    this.stage.addEventListener("pointerdown", (ev) => this.#drag(ev));
  }

  #key(ev) {
    const moves = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
    if (ev.key in moves) this.step(moves[ev.key]);
    else if (ev.key === "Home") this.go(1);
    else if (ev.key === "End") this.go(this.#slices.length);
    else if (ev.key === "n" || ev.key === "N") this.nextSuspicious();
    else if (ev.key === "h" || ev.key === "H") this.toggleHeat(!this.showHeat);
    else if (["1", "2", "3"].includes(ev.key)) this.presetButtons?.[Number(ev.key) - 1]?.click();
    else return;
    ev.preventDefault();
  }

  /** Drag on the image: left/right widens or narrows the window, up/down moves its center. */
  #drag(ev) {
    if (!this.image || this.image.kind !== "hu") return;
    const start = { x: ev.clientX, y: ev.clientY, ...this.windowLevel };
    this.stage.setPointerCapture(ev.pointerId);
    const move = (e) => {
      const width = Math.max(1, start.width + (e.clientX - start.x) * 4);
      const center = start.center + (e.clientY - start.y) * 2;
      this.setWindow(center, width);
    };
    const up = () => {
      this.stage.removeEventListener("pointermove", move);
      this.stage.removeEventListener("pointerup", up);
    };
    this.stage.addEventListener("pointermove", move);
    this.stage.addEventListener("pointerup", up);
  }

  /** Open series n (from 1) at slice i (from 1). */
  show(n, i) {
    this.n = Math.min(Math.max(1, n), this.o.series.length);
    this.seriesSelect.value = String(this.n);
    this.slider.max = String(this.#slices.length);
    this.#drawTrack();
    this.go(i);
  }

  step(delta) {
    this.go(this.i + delta);
  }

  go(i) {
    const n = this.#slices.length;
    this.i = Math.min(Math.max(1, i || 1), n);
    this.slider.value = String(this.i);
    this.o.onMove(this.n, this.i);
    this.#load();
  }

  /** The next slice of this series in order of p(top class), after the current one. */
  nextSuspicious() {
    const p = (r) => (r.probabilities ? r.probabilities[this.topClass] ?? 0 : -1);
    const ranked = this.#slices.map((r, k) => ({ k: k + 1, p: p(r) })).sort((a, b) => b.p - a.p || a.k - b.k);
    const at = ranked.findIndex((x) => x.k === this.i);
    this.go(ranked[(at + 1) % ranked.length].k);
  }

  toggleHeat(on) {
    this.showHeat = on;
    this.heatToggle.checked = on;
    this.#draw();
  }

  setWindow(center, width) {
    this.windowLevel = { center: Math.round(center), width: Math.round(width) };
    this.#draw();
  }

  async #load() {
    const row = this.#slices[this.i - 1];
    const token = ++this.token;
    this.#say(row);
    const [image, heat] = await Promise.all([this.#image(row.slice_index), this.#heat(row.slice_index)]);
    if (token !== this.token) return;
    this.image = image;
    this.heatImage = heat;
    this.#renderPresets();
    this.#draw();
    for (let d = 1; d <= PREFETCH; d += 1) {
      for (const k of [this.i - 1 + d, this.i - 1 - d]) {
        const r = this.#slices[k];
        if (r) this.#image(r.slice_index).catch(() => {});
      }
    }
  }

  /** A slice's pixels: the viewing copy, else the model-input image, else null. Cached. */
  #image(index) {
    if (!this.cache.has(index)) {
      this.cache.set(index, this.#fetchImage(index).catch(() => null));
      if (this.cache.size > CACHE_SLICES) this.cache.delete(this.cache.keys().next().value);
    }
    return this.cache.get(index);
  }

  async #fetchImage(index) {
    const base = `/api/v1/jobs/${encodeURIComponent(this.o.jobId)}/slices/${index}`;
    let response;
    try {
      response = await request(`${base}/view`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      response = await request(`${base}/image`);
      return { kind: "bitmap", bitmap: await createImageBitmap(await response.blob()), source: "model input" };
    }
    if ((response.headers.get("Content-Type") || "").includes("hu16")) {
      return parseHuView(await response.arrayBuffer());
    }
    return { kind: "bitmap", bitmap: await createImageBitmap(await response.blob()), source: "as uploaded" };
  }

  /** The heat map of a slice the summary lists with one; null for every other slice (no request). */
  #heat(index) {
    if (!this.heatmaps.has(index)) return Promise.resolve(null);
    if (!this.heat.has(index)) {
      const url = `/api/v1/jobs/${encodeURIComponent(this.o.jobId)}/slices/${index}/heatmap`;
      this.heat.set(index, request(url).then((r) => r.blob()).then((b) => createImageBitmap(b)).catch(() => null));
    }
    return this.heat.get(index);
  }

  #renderPresets() {
    const hu = this.image && this.image.kind === "hu";
    if (hu && !this.windowLevel) this.windowLevel = { ...PRESETS[0] };
    const presets = hu ? [...PRESETS, { key: "model", name: "Model", ...this.image.window }] : [];
    this.presetButtons = presets.map((p, k) => el("button", {
      type: "button", class: "preset", "aria-keyshortcuts": String(k + 1),
      "aria-pressed": String(this.windowLevel && p.center === this.windowLevel.center && p.width === this.windowLevel.width),
      onclick: () => {
        this.setWindow(p.center, p.width);
        this.#renderPresets();
      },
    }, `${p.name} ${Math.round(p.center)}/${Math.round(p.width)}`));
    fill(this.presetBox, hu ? this.presetButtons : el("span", { class: "hint" },
      this.image ? `${this.image.source}: pixels shown as they are (window/level applies to DICOM)` : "no image"));
  }

  #draw() {
    const image = this.image;
    const { canvas, ctx } = this;
    if (!image) {
      canvas.width = canvas.height = 1;
      return;
    }
    if (image.kind === "hu") {
      canvas.width = image.cols;
      canvas.height = image.rows;
      const data = ctx.createImageData(image.cols, image.rows);
      const { center, width } = this.windowLevel;
      applyWindow(image.hu, data.data, center, width, image.monochrome1);
      ctx.putImageData(data, 0, 0);
      this.windowText.textContent = `center ${center} HU, width ${width} HU (drag on the image to adjust)`;
    } else {
      canvas.width = image.bitmap.width;
      canvas.height = image.bitmap.height;
      ctx.drawImage(image.bitmap, 0, 0);
      this.windowText.textContent = "";
    }
    const heat = this.heatImage;
    this.heatToggle.disabled = !heat;
    this.opacityInput.disabled = !heat;
    if (heat && this.showHeat) {
      ctx.globalAlpha = this.opacity;
      ctx.drawImage(heat, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    }
    this.canvas.dataset.slice = String(this.#slices[this.i - 1].slice_index);
    this.#drawTrack();
  }

  /** One bar per slice: length p(top class), orange mark when out of distribution. */
  #drawTrack() {
    const slices = this.#slices;
    const t = this.track.getContext("2d");
    const { width, height } = this.track;
    t.clearRect(0, 0, width, height);
    const h = height / slices.length;
    slices.forEach((r, k) => {
      const p = r.probabilities ? r.probabilities[this.topClass] ?? 0 : 0;
      t.fillStyle = r.error ? "#b00020" : "#c0392b";
      t.fillRect(0, k * h, Math.max(1, p * (width - 8)), Math.max(1, h - 0.5));
      if (r.out_of_distribution) {
        t.fillStyle = "#e08600";
        t.fillRect(width - 6, k * h, 6, Math.max(1, h - 0.5));
      }
    });
    if (this.i) {
      t.strokeStyle = "#2454b8";
      t.lineWidth = 2;
      t.strokeRect(1, (this.i - 1) * h, width - 2, Math.max(2, h));
    }
  }

  /** Title, position and the text equivalent of the image for screen readers. */
  #say(row) {
    const n = this.#slices.length;
    const series = this.o.series[this.n - 1].name;
    fill(this.title, `${series}: slice ${this.i} of ${n}`);
    this.position.textContent = `${this.i} / ${n}`;
    const probs = row.probabilities
      ? Object.entries(row.probabilities).map(([c, p]) => `p(${c}) ${percent(p)}`).join(", ")
      : "";
    const bits = [`Slice ${this.i} of ${n}`, `job slice ${row.slice_index + 1}`];
    if (row.source) bits.push(`file ${row.source}`);
    if (row.label) bits.push(`label ${row.label}`);
    if (probs) bits.push(probs);
    if (row.out_of_distribution) bits.push("out of distribution");
    if (row.error) bits.push(`unreadable: ${row.error}`);
    if (this.heatmaps.has(row.slice_index)) bits.push("heat map available");
    this.said.textContent = bits.join(" · ");
  }
}
