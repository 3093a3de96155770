// One job: status and progress (polled), verdict, series with thumbnails, top
// slices with a heatmap overlay, the per-slice table, downloads, cancel, delete.
//
// Each view polls its own job ID in its own loop and writes only into its own
// element, so two jobs on one page can never swap results.

import { ApiError, allResults, getJson, imageUrl, request } from "./api.js";
import { classesOf, columnsOf, download, resultRows, toCsv } from "./export.js";
import { el, fill, localTime, percent, probabilityBars, progressBar } from "./dom.js";
import { SliceViewer } from "./viewer.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 1000;
// Each poll asks the server to hold its answer until the job ends (long poll), so the
// verdict shows the moment it exists; progress still refreshes at least this often.
const WAIT_S = 2;
const RETRY_MS = 3000;
const PAGE_ROWS = 50;
// After this many missing images and none found, the job is taken to have none.
const MISSING_IMAGES_BEFORE_GIVING_UP = 3;

export const INPUT_NAME_KEY = "lungct-input:";
const jobUrl = (id) => `/api/v1/jobs/${encodeURIComponent(id)}`;
const uidTail = (uid) => (uid ? uid.slice(-8) : "");

export class JobView {
  /**
   * @param {HTMLElement} container  the view owns this element's content
   * @param {string} jobId
   * @param {object} options  models: Promise of /api/v1/models items; headingLevel: 2 or 3;
   *                          onDeleted(jobId): called after a delete;
   *                          slice: {series, slice} (from 1) to open in the viewer once loaded
   */
  constructor(container, jobId, { models, headingLevel = 2, onDeleted = () => {}, slice = null, inputName = null } = {}) {
    this.container = container;
    // the file name this tab uploaded (kept in the tab's session), for when the server keeps none
    if (inputName) sessionStorage.setItem(`${INPUT_NAME_KEY}${jobId}`, inputName);
    this.inputName = inputName ?? sessionStorage.getItem(`${INPUT_NAME_KEY}${jobId}`);
    this.jobId = jobId;
    this.openAt = slice;
    this.models = models || Promise.resolve([]);
    this.onDeleted = onDeleted;
    this.job = null;
    this.results = null;
    this.filter = "";
    this.page = 0;
    this.timer = null;
    this.stopped = false;
    // Each poll() call starts a new loop; an older loop whose (held) request comes back
    // later sees a newer generation and ends, so one view never runs two loops.
    this.generation = 0;
    this.objectUrls = [];
    this.imagesFound = 0;
    this.imagesMissing = 0;
    this.observer = new IntersectionObserver((entries) => this.#onVisible(entries), { rootMargin: "200px" });
    this.#build(headingLevel);
    this.poll();
  }

  #build(level) {
    const id = this.jobId;
    this.statusBadge = el("span", { class: "badge" }, "loading");
    this.progress = progressBar(`progress of job ${id}`);
    this.live = el("p", { class: "live", role: "status", "aria-live": "polite" });
    this.error = el("p", { class: "err", role: "alert" });
    this.meta = el("p", { class: "meta" });
    this.actions = el("div", { class: "actions" });
    this.verdict = el("section", { class: "verdict", hidden: true });
    this.viewerBox = el("section", { class: "viewer", hidden: true, "aria-label": "Slice viewer" });
    this.warnings = el("section", { class: "warnings", hidden: true });
    this.top = el("section", { class: "top-slices", hidden: true });
    this.series = el("section", { class: "series", hidden: true });
    this.table = el("section", { class: "slices", hidden: true });
    fill(
      this.container,
      el(
        `h${level}`,
        { class: "job-title" },
        "Job ",
        el("a", { href: `/jobs/${encodeURIComponent(id)}`, class: "job-id" }, el("code", {}, id)),
        " ",
        this.statusBadge,
      ),
      this.meta,
      this.progress.element,
      this.live,
      this.error,
      this.actions,
      this.viewerBox,
      this.verdict,
      this.warnings,
      this.top,
      this.series,
      this.table,
    );
    this.container.dataset.jobId = id;
    this.level = level;
  }

  /** The tag of a heading `depth` levels below the job's title. */
  #h(depth) {
    return `h${Math.min(6, this.level + depth)}`;
  }

  /** Stop polling and free the images (the element is being removed or reused). */
  destroy() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.observer.disconnect();
    for (const url of this.objectUrls) URL.revokeObjectURL(url);
    this.objectUrls = [];
  }

  /** Fetch the job now (after a new key, say) and keep polling while it is active. */
  async poll() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    const generation = ++this.generation;
    const superseded = () => this.stopped || generation !== this.generation;
    let job;
    const asked = Date.now();
    try {
      job = await getJson(`${jobUrl(this.jobId)}?wait=${WAIT_S}`);
    } catch (err) {
      if (!superseded()) this.#pollFailed(err);
      return;
    }
    if (superseded()) return;
    const wasActive = !this.job || !ENDED.has(this.job.status);
    this.job = job;
    this.error.textContent = job.error ? `Job failed: ${job.error}` : "";
    this.#renderStatus();
    if (!ENDED.has(job.status)) {
      // a server that answered early (too many waiting requests) is not asked again at once
      this.timer = setTimeout(() => this.poll(), Math.max(0, POLL_MS - (Date.now() - asked)));
      return;
    }
    if (wasActive || this.results === null) await this.#loadResults();
  }

  #pollFailed(err) {
    if (this.stopped) return;
    if (err instanceof ApiError && err.status === 404) {
      this.statusBadge.textContent = "not found";
      this.error.textContent = `No job ${this.jobId} for this API key (it may have been deleted).`;
      return;
    }
    if (err instanceof ApiError && err.status === 401) {
      this.error.textContent = "The API key was refused; enter a valid key to see this job.";
      return; // the page polls again once a key is accepted
    }
    this.error.textContent = `Could not reach the server (${err.message}); retrying…`;
    this.timer = setTimeout(() => this.poll(), RETRY_MS);
  }

  #renderStatus() {
    const job = this.job;
    const { done, total } = job.progress;
    this.statusBadge.textContent = job.status;
    this.statusBadge.className = `badge status-${job.status}`;
    const bits = [`model ${job.model.name} ${job.model.version}`, job.kind, `submitted ${localTime(job.created_at)}`];
    if (job.finished_at) bits.push(`ended ${localTime(job.finished_at)}`);
    fill(this.meta, bits.join(" · "));
    let text = `${job.status}`;
    if (total) text += `: ${done} of ${total} slices`;
    if (job.cancel_requested && !ENDED.has(job.status)) text += " (cancel requested)";
    this.live.textContent = text;
    const active = !ENDED.has(job.status);
    if (active && !total) this.progress.set(null, 0, text);
    else this.progress.set(total ? done : 1, total || 1, text);
    this.#renderActions();
  }

  #renderActions() {
    const job = this.job;
    const buttons = [];
    if (!ENDED.has(job.status)) {
      buttons.push(
        el("button", { type: "button", disabled: job.cancel_requested, onclick: () => this.#cancel() }, "Cancel job"),
      );
    } else {
      buttons.push(el("button", { type: "button", class: "danger", onclick: () => this.#delete() }, "Delete job"));
    }
    if (this.results && this.results.length) {
      buttons.push(
        el("button", { type: "button", onclick: () => this.#download("csv") }, "Download CSV"),
        el("button", { type: "button", onclick: () => this.#download("json") }, "Download JSON"),
      );
    }
    fill(this.actions, buttons);
  }

  async #cancel() {
    if (!window.confirm(`Cancel job ${this.jobId}? Slices already predicted are kept.`)) return;
    try {
      this.job = await getJson(`${jobUrl(this.jobId)}/cancel`, { method: "POST" });
      this.live.textContent = "cancel requested";
    } catch (err) {
      this.error.textContent = `Could not cancel: ${err.message}`;
    }
    this.poll();
  }

  async #delete() {
    if (!window.confirm(`Delete job ${this.jobId}, its upload and its results? This cannot be undone.`)) return;
    try {
      await request(jobUrl(this.jobId), { method: "DELETE" });
    } catch (err) {
      this.error.textContent = `Could not delete: ${err.message}`;
      return;
    }
    this.destroy();
    fill(
      this.container,
      el("p", { role: "status", class: "live" }, `Job ${this.jobId} was deleted with its upload and results.`),
    );
    this.onDeleted(this.jobId);
  }

  async #loadResults() {
    try {
      this.results = await allResults(this.jobId);
    } catch (err) {
      this.error.textContent = `Could not load the results: ${err.message}`;
      return;
    }
    if (this.stopped) return;
    this.model = (await this.models.catch(() => [])).find((m) => m.name === this.job.model.name) || null;
    this.classes = classesOf(this.results, this.model);
    this.#renderActions();
    this.#renderVerdict();
    this.#renderWarnings();
    this.#renderTopSlices();
    this.#renderSeries();
    this.#renderTable();
    if (this.openAt) this.openViewer(this.openAt.series, this.openAt.slice);
  }

  // --- the slice viewer ----------------------------------------------------------

  /** Open the viewer on series n, slice i (both from 1); the page's URL follows it. */
  openViewer(n, i) {
    if (!this.results || !this.results.length) return;
    const series = this.#seriesGroups().map(({ entry, number, slices }) => ({
      name: seriesName(entry, number, this.job.kind), slices,
    }));
    const onMove = (sn, si) => {
      if (this.level === 2) history.replaceState(null, "", this.#viewerPath(sn, si));
    };
    const onClose = () => {
      this.viewer = null;
      fill(this.viewerBox);
      this.viewerBox.hidden = true;
      if (this.level === 2) history.replaceState(null, "", `/jobs/${encodeURIComponent(this.jobId)}`);
    };
    if (this.viewer) this.viewer.show(n, i);
    else {
      this.viewer = new SliceViewer(this.viewerBox, {
        jobId: this.jobId, series, summary: this.job.summary, classes: this.classes,
        seriesNumber: n, sliceNumber: i, onMove, onClose,
      });
    }
    this.viewerBox.scrollIntoView({ block: "start" });
    this.viewer.stage.focus({ preventScroll: true });
  }

  #viewerPath(n, i) {
    return `/jobs/${encodeURIComponent(this.jobId)}/series/${n}/slices/${i}`;
  }

  /** A link that opens the viewer in place (the shareable URL works in a new tab too). */
  #viewerLink(sliceIndex, label, ...children) {
    const { n, i } = this.#position(sliceIndex);
    return el("a", {
      href: this.#viewerPath(n, i), class: "open-viewer", "aria-label": label,
      onclick: (ev) => {
        if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
        ev.preventDefault();
        if (this.level === 2) history.pushState(null, "", this.#viewerPath(n, i));
        this.openViewer(n, i);
      },
    }, children);
  }

  /** Series number and slice number (both from 1) of a slice index. */
  #position(sliceIndex) {
    const groups = this.#seriesGroups();
    for (const g of groups) {
      const k = g.slices.findIndex((r) => r.slice_index === sliceIndex);
      if (k >= 0) return { n: g.number, i: k + 1 };
    }
    return { n: 1, i: 1 };
  }

  // --- verdict -------------------------------------------------------------

  #renderVerdict() {
    const s = this.job.summary;
    if (!s) {
      this.verdict.hidden = true;
      return;
    }
    const what = this.job.kind === "image" ? "Verdict" : "Study verdict";
    const verdict = verdictOf(s);
    const parts = [
      el(this.#h(1), {}, what, ": ",
        el("strong", { class: `label verdict-${verdict ?? "none"}` }, verdict ?? "none (no readable slice)")),
    ];
    if (s.out_of_distribution) parts.push(oodWarning(s.ood_fraction, "this study"));
    if (verdict === "inconclusive") {
      parts.push(el("p", { class: "model-output" }, "Model output (not a diagnosis): ", el("span", {}, s.label)));
    }
    if (s.verdict_text) parts.push(el("p", { class: "evidence" }, "Evidence: ", s.verdict_text));
    parts.push(
      el("p", {}, `${s.slices_predicted} slices predicted`,
        s.slices_failed ? `, ${s.slices_failed} could not be read` : "",
        s.skipped_files ? `, ${s.skipped_files} files skipped` : ""),
    );
    if (s.slice_counts && Object.keys(s.slice_counts).length) {
      parts.push(el("p", { class: "counts" }, "Slices per label: ",
        Object.entries(s.slice_counts).map(([k, v]) => `${k} ${v}`).join(", ")));
    }
    if (s.probabilities) {
      parts.push(el("p", { class: "hint" }, "Mean slice probabilities:"), probabilityBars(s.probabilities, this.classes));
    }
    parts.push(modelCard(this.model, this.job.model));
    if (s.rule || s.disclaimer) {
      parts.push(el("p", { class: "hint" }, s.rule ? `Rule: ${s.rule}. ` : "", s.disclaimer || ""));
    }
    fill(this.verdict, parts);
    this.verdict.hidden = false;
  }

  // --- warnings and per-slice errors ----------------------------------------

  #renderWarnings() {
    const skipped = this.job.warnings || [];
    const failed = this.results.filter((r) => r.error);
    if (!skipped.length && !failed.length) {
      this.warnings.hidden = true;
      return;
    }
    const parts = [el(this.#h(1), {}, "Warnings")];
    if (skipped.length) {
      parts.push(
        el("details", { open: skipped.length <= 10 },
          el("summary", {}, `${skipped.length} file${skipped.length === 1 ? "" : "s"} skipped`),
          el("ul", {}, skipped.map((w) => el("li", {}, el("code", {}, w.source ?? "?"), `: ${w.reason ?? ""}`)))),
      );
    }
    if (failed.length) {
      parts.push(
        el("details", { open: failed.length <= 10 },
          el("summary", {}, `${failed.length} slice${failed.length === 1 ? "" : "s"} could not be read`),
          el("ul", {}, failed.map((r) => el("li", {}, `slice ${sliceNo(r)}, file `, el("code", {}, r.source ?? ""), `: ${r.error}`)))),
      );
    }
    fill(this.warnings, parts);
    this.warnings.hidden = false;
  }

  // --- images ----------------------------------------------------------------

  /** A placeholder that becomes the slice image (or its heatmap) once it scrolls into view. */
  #lazyImage(sliceIndex, kind, alt, className) {
    const holder = el("span", { class: `img-holder ${className}`, "data-slice": sliceIndex, "data-kind": kind },
      el("span", { class: "placeholder" }, "loading"));
    holder.dataset.alt = alt;
    this.observer.observe(holder);
    return holder;
  }

  #onVisible(entries) {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      this.observer.unobserve(entry.target);
      this.#loadImage(entry.target);
    }
  }

  /** No image route answers for this job: every placeholder says so at once. */
  get #noImages() {
    return this.imagesFound === 0 && this.imagesMissing >= MISSING_IMAGES_BEFORE_GIVING_UP;
  }

  #giveUpImages() {
    for (const holder of this.container.querySelectorAll(".img-holder:not(.loaded):not(.missing)")) {
      this.observer.unobserve(holder);
      this.#noImage(holder);
    }
  }

  async #loadImage(holder) {
    const { slice, kind } = holder.dataset;
    if (this.#noImages) {
      this.#noImage(holder);
      return;
    }
    let url;
    try {
      url = await imageUrl(`${jobUrl(this.jobId)}/slices/${slice}/${kind}`);
    } catch {
      url = null;
    }
    if (this.stopped) {
      if (url) URL.revokeObjectURL(url);
      return;
    }
    if (!url) {
      if (kind === "image") this.imagesMissing += 1;
      this.#noImage(holder);
      if (this.#noImages) this.#giveUpImages();
      return;
    }
    if (kind === "image") this.imagesFound += 1;
    this.objectUrls.push(url);
    fill(holder, el("img", { src: url, alt: holder.dataset.alt, class: kind === "heatmap" ? "heat" : "ct" }));
    holder.classList.add("loaded");
    if (kind === "heatmap") {
      this.top.querySelector(".heat-toggle")?.removeAttribute("disabled");
      fill(this.top.querySelector(".heat-hint"));
    }
  }

  #noImage(holder) {
    const kind = holder.dataset.kind;
    if (kind === "heatmap") {
      holder.remove();
      if (!this.top.querySelector(".overlay")) {
        fill(this.top.querySelector(".heat-hint"), " (no heatmaps for this job)");
      }
      return;
    }
    fill(holder, el("span", { class: "placeholder", role: "img", "aria-label": `${holder.dataset.alt}: no image available` }, "no image"));
    holder.classList.add("missing");
  }

  // --- top slices -------------------------------------------------------------

  #renderTopSlices() {
    const s = this.job.summary;
    const top = (s && s.top_slices) || [];
    if (!top.length) {
      this.top.hidden = true;
      return;
    }
    const toggleId = `heat-${this.jobId}`;
    // a summary from before `heatmap` was recorded: ask, and let a 404 remove the overlay
    const hasHeat = (t) => t.heatmap ?? s.heatmaps === undefined;
    const anyHeat = top.some(hasHeat);
    const toggle = el("input", { type: "checkbox", id: toggleId, class: "heat-toggle", checked: true, disabled: true });
    toggle.addEventListener("change", () => this.top.classList.toggle("no-heat", !toggle.checked));
    const cls = s.top_class || s.label;
    const figures = top.map((t) => {
      const alt = `slice ${sliceNo(t)}`;
      // only slices the summary lists with a heat map get one requested (no 404s)
      const layers = [this.#lazyImage(t.slice_index, "image", alt, "base")];
      if (hasHeat(t)) layers.push(this.#lazyImage(t.slice_index, "heatmap", `heat map of ${alt}`, "overlay"));
      return el("figure", { class: "large" },
        this.#viewerLink(t.slice_index, `open ${alt} in the viewer`, el("div", { class: "stack" }, layers)),
        el("figcaption", {}, `slice ${sliceNo(t)} · file `, el("code", {}, t.source ?? ""),
          ` · p(${cls}) ${percent(t.probability ?? 0)}`,
          t.label ? ` · slice label ${t.label}` : "",
          hasHeat(t) ? "" : el("span", { class: "hint" }, " · no heat map")));
    });
    fill(this.top,
      el(this.#h(1), {}, "Most suspicious slices"),
      el("p", { class: "hint" }, `Ranked by p(${cls}), the most severe class, whatever the verdict.`),
      anyHeat
        ? el("p", {}, toggle, el("label", { for: toggleId }, " Show heatmap overlay"),
          el("span", { class: "hint heat-hint" }, " (once a heatmap has loaded)"))
        : el("p", { class: "hint" }, "No heat maps were computed for this job."),
      el("div", { class: "large-row" }, figures));
    this.top.hidden = false;
  }

  // --- series with thumbnails --------------------------------------------------

  #seriesGroups() {
    const s = this.job.summary;
    const bySeries = new Map();
    for (const r of this.results) {
      const key = r.series_uid ?? null;
      if (!bySeries.has(key)) bySeries.set(key, []);
      bySeries.get(key).push(r);
    }
    const entries = s && s.series && s.series.length ? s.series : [...bySeries.keys()].map((uid) => ({ series_uid: uid }));
    return entries.map((entry, i) => ({ entry, number: i + 1, slices: bySeries.get(entry.series_uid ?? null) || [] }));
  }

  #renderSeries() {
    const groups = this.#seriesGroups();
    if (!groups.length || !this.results.length) {
      this.series.hidden = true;
      return;
    }
    const blocks = groups.map(({ entry, number, slices }) => {
      const name = seriesName(entry, number, this.job.kind);
      const head = el(this.#h(2), {}, name);
      if (entry.series_uid) head.append(" ", el("small", { class: "uid", title: entry.series_uid }, `…${uidTail(entry.series_uid)}`));
      const facts = [];
      if (entry.label !== undefined) facts.push(el("span", {}, "verdict ", el("strong", {}, verdictOf(entry) ?? "none")));
      if (verdictOf(entry) === "inconclusive") facts.push(el("span", {}, `model output ${entry.label}`));
      if (entry.slice_counts) {
        facts.push(el("span", {}, Object.entries(entry.slice_counts).map(([k, v]) => `${k} ${v}`).join(", ")));
      }
      if (entry.slices_failed) facts.push(el("span", { class: "err" }, `${entry.slices_failed} unreadable`));
      const strip = el("div", { class: "strip", tabindex: 0, role: "group", "aria-label": `${name}: ${slices.length} slice thumbnails` },
        slices.map((r) => el("figure", { class: `thumb${r.error ? " has-error" : ""}`, title: `slice ${sliceNo(r)} ${r.label ?? r.error ?? ""}` },
          this.#viewerLink(r.slice_index, `open slice ${sliceNo(r)} in the viewer`,
            this.#lazyImage(r.slice_index, "image", `slice ${sliceNo(r)}${r.label ? ` (${r.label})` : ""}`, "small")),
          el("figcaption", {}, `${sliceNo(r)}`, r.label ? ` ${r.label}` : " error"))));
      return el("section", { class: "series-block" },
        head,
        entry.out_of_distribution ? oodWarning(entry.ood_fraction, "this series") : null,
        el("p", { class: "facts" }, facts.flatMap((f, i) => (i ? [" · ", f] : [f]))),
        strip);
    });
    fill(this.series, el(this.#h(1), {}, groups.length === 1 ? "Slices" : `Series (${groups.length})`), blocks);
    this.series.hidden = false;
  }

  // --- per-slice table ----------------------------------------------------------

  #filtered() {
    const f = this.filter;
    if (!f) return this.results;
    if (f === "!error") return this.results.filter((r) => r.error);
    if (f === "!ood") return this.results.filter((r) => r.out_of_distribution);
    return this.results.filter((r) => r.label === f);
  }

  #renderTable() {
    if (!this.results.length) {
      fill(this.table, el("p", { class: "hint" }, "No slice results were stored for this job."));
      this.table.hidden = false;
      return;
    }
    const selectId = `filter-${this.jobId}`;
    const options = [el("option", { value: "" }, `all slices (${this.results.length})`)];
    for (const c of this.classes) {
      const n = this.results.filter((r) => r.label === c).length;
      options.push(el("option", { value: c }, `${c} (${n})`));
    }
    const errors = this.results.filter((r) => r.error).length;
    if (errors) options.push(el("option", { value: "!error" }, `unreadable (${errors})`));
    const ood = this.results.filter((r) => r.out_of_distribution).length;
    if (ood) options.push(el("option", { value: "!ood" }, `out of distribution (${ood})`));
    const select = el("select", { id: selectId }, options);
    select.value = this.filter;
    select.addEventListener("change", () => {
      this.filter = select.value;
      this.page = 0;
      this.#renderRows();
    });
    this.tbody = el("tbody");
    this.pager = el("div", { class: "pager" });
    this.pageStatus = el("span", { role: "status", "aria-live": "polite" });
    const hasOod = this.results.some((r) => r.out_of_distribution !== undefined);
    this.hasOod = hasOod;
    const head = ["slice", "file in upload", "series", "position (mm)", "label", "probabilities"];
    if (hasOod) head.push("out of distribution");
    head.push("error");
    fill(this.table,
      el(this.#h(1), {}, "Per-slice results"),
      el("p", {}, el("label", { for: selectId }, "Filter slices "), select, " ", this.pageStatus),
      el("div", { class: "table-wrap" }, el("table", { class: "results" },
        el("caption", { class: "visually-hidden" }, `Per-slice results of job ${this.jobId}`),
        el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
        this.tbody)),
      this.pager);
    this.table.hidden = false;
    this.#renderRows();
  }

  #renderRows() {
    const rows = this.#filtered();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
    this.page = Math.min(this.page, pages - 1);
    const start = this.page * PAGE_ROWS;
    const shown = rows.slice(start, start + PAGE_ROWS);
    const seriesNumber = new Map(this.#seriesGroups().map((g) => [g.entry.series_uid ?? null, g]));
    fill(this.tbody, shown.map((r) => {
      const group = seriesNumber.get(r.series_uid ?? null);
      const series = group ? seriesName(group.entry, group.number, this.job.kind) : uidTail(r.series_uid);
      const cells = [
        el("td", {}, String(sliceNo(r))),
        el("td", { class: "source" }, r.source ?? ""),
        el("td", { class: "series-name", title: [series, r.series_uid].filter(Boolean).join(" ") }, series),
        el("td", {}, r.slice_position != null ? r.slice_position.toFixed(1) : ""),
        el("td", {}, r.label ?? ""),
        el("td", {}, r.probabilities ? probabilityBars(r.probabilities, this.classes) : ""),
      ];
      if (this.hasOod) {
        cells.push(el("td", {}, r.out_of_distribution ? `yes${r.ood_score != null ? ` (${r.ood_score.toFixed(2)})` : ""}` : "no"));
      }
      cells.push(el("td", { class: "err" }, r.error ?? ""));
      return el("tr", { class: r.error ? "row-error" : null }, cells);
    }));
    const range = rows.length ? `rows ${start + 1}–${start + shown.length} of ${rows.length}` : "no rows match";
    this.pageStatus.textContent = `${range}${pages > 1 ? `, page ${this.page + 1} of ${pages}` : ""}`;
    const go = (page) => () => {
      this.page = page;
      this.#renderRows();
    };
    fill(this.pager,
      pages > 1 ? [
        el("button", { type: "button", disabled: this.page === 0, onclick: go(this.page - 1) }, "Previous page"),
        " ",
        el("button", { type: "button", disabled: this.page >= pages - 1, onclick: go(this.page + 1) }, "Next page"),
      ] : []);
  }

  #download(format) {
    const input = this.job.input_name ?? this.inputName ?? "";
    const rows = resultRows(this.jobId, this.results, this.classes, { input, verdict: verdictOf(this.job.summary) });
    if (format === "csv") {
      download(`job-${this.jobId}-results.csv`, toCsv(rows, columnsOf(this.classes)), "text/csv");
    } else {
      download(`job-${this.jobId}-results.json`, `${JSON.stringify(rows, null, 1)}\n`, "application/json");
    }
  }
}

/** The one slice number the UI shows: 1-based, in the job's order (the API's slice_index + 1). */
export const sliceNo = (r) => r.slice_index + 1;

/** "Description (series N)", "Series N" from the header, else "Series <order>". */
export function seriesName(entry, order, kind) {
  if (!entry.series_uid && kind === "image") return "Image";
  const number = entry.series_number;
  if (entry.series_description) {
    return number != null ? `${entry.series_description} (series ${number})` : entry.series_description;
  }
  return `Series ${number ?? order}`;
}

/** The verdict to headline: a class, or "inconclusive" (an older summary: the flag demotes its label). */
export function verdictOf(group) {
  if (!group) return null;
  if (group.verdict !== undefined) return group.verdict;
  return group.out_of_distribution && group.label ? "inconclusive" : group.label ?? null;
}

function oodWarning(fraction, what) {
  const share = typeof fraction === "number" ? ` (${percent(fraction, 0)} of its slices)` : "";
  return el("p", { class: "ood" },
    el("strong", {}, "Out of distribution: "),
    `${what}${share} does not look like the data the model was trained on. Do not trust this verdict.`);
}

/** A link to the model's card, or its test metrics when no card URL is published. */
function modelCard(model, ref) {
  if (!model) return el("p", { class: "hint" }, `Model ${ref.name} ${ref.version} is no longer installed.`);
  const cardUrl = model.card_url || (model.links && model.links.card);
  if (cardUrl && /^(https?:\/\/|\/)/.test(cardUrl)) {
    return el("p", {}, `Model ${model.name} ${model.version}: `, el("a", { href: cardUrl }, "model card"));
  }
  return modelMetrics(model);
}

export function modelMetrics(model) {
  const m = model.metrics || {};
  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "n/a");
  return el("details", { class: "model-metrics" },
    el("summary", {}, `Model ${model.name} ${model.version}: test metrics`),
    el("dl", {},
      el("dt", {}, "accuracy"), el("dd", {}, fmt(m.accuracy)),
      el("dt", {}, "macro-F1"), el("dd", {}, fmt(m.macro_f1)),
      m.split ? [el("dt", {}, "split"), el("dd", {}, m.split)] : null,
      model.intended_use ? [el("dt", {}, "intended use"), el("dd", {}, model.intended_use)] : null));
}
