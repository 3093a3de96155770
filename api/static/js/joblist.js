// The owner's jobs, newest first, a page at a time (the API's `next` links),
// filtered by status, verdict, out-of-distribution flag and input name;
// refreshed every few seconds while a job on the page is active.

import { getJson } from "./api.js";
import { el, fill, localTime, progressBar } from "./dom.js";
import { verdictOf } from "./jobview.js";

const ACTIVE = new Set(["queued", "running"]);
const REFRESH_MS = 3000;
const LIMIT = 50;

export class JobList {
  /** table, status, error, pager: elements; filters: the filter form (its fields name the API's). */
  constructor({ table, status, error, pager, filters }) {
    this.table = table;
    this.tbody = table.querySelector("tbody");
    this.status = status;
    this.error = error;
    this.pager = pager;
    this.filters = filters;
    this.timer = null;
    this.loading = false;
    this.pages = [this.#firstPage()]; // URLs of the pages seen, the current one last
    filters?.addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.pages = [this.#firstPage()];
      this.refresh();
    });
  }

  #firstPage() {
    const query = new URLSearchParams({ limit: String(LIMIT) });
    if (this.filters) {
      for (const [name, value] of new FormData(this.filters)) {
        if (String(value).trim()) query.set(name, String(value).trim());
      }
    }
    return `/api/v1/jobs?${query}`;
  }

  get #filtered() {
    return this.pages[0] !== `/api/v1/jobs?limit=${LIMIT}`;
  }

  /** Load the current page now; keep refreshing while a job on it is queued or running. */
  async refresh() {
    clearTimeout(this.timer);
    if (this.loading) return;
    this.loading = true;
    let body;
    try {
      body = await getJson(this.pages.at(-1));
      this.error.textContent = "";
    } catch (err) {
      this.error.textContent = `Could not load your jobs: ${err.message}`;
      this.loading = false;
      if (err.status !== 401) this.timer = setTimeout(() => this.refresh(), REFRESH_MS * 2);
      return;
    }
    this.loading = false;
    this.render(body.items, body.next);
    if (body.items.some((j) => ACTIVE.has(j.status))) {
      this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
    }
  }

  stop() {
    clearTimeout(this.timer);
  }

  /** Stop and empty the list (the key was forgotten: nothing of the owner's stays on screen). */
  clear() {
    this.stop();
    this.pages = [this.#firstPage()];
    fill(this.tbody);
    fill(this.pager);
    this.table.hidden = true;
    this.status.textContent = "";
  }

  render(jobs, next) {
    const page = this.pages.length;
    const first = (page - 1) * LIMIT + 1;
    const active = jobs.filter((j) => ACTIVE.has(j.status)).length;
    const what = this.#filtered ? "matching jobs" : "jobs";
    let text = jobs.length ? `${what} ${first}–${first + jobs.length - 1}, newest first.` : `No ${what}.`;
    text = text[0].toUpperCase() + text.slice(1);
    if (active) text += ` ${active} active; refreshing every ${REFRESH_MS / 1000} s.`;
    this.status.textContent = text;
    this.table.hidden = jobs.length === 0;
    fill(this.tbody, jobs.map((job) => row(job)));
    const go = (pages) => () => {
      this.pages = pages;
      this.refresh();
    };
    fill(this.pager,
      page > 1 ? el("button", { type: "button", onclick: go(this.pages.slice(0, -1)) }, "Newer jobs") : null,
      next ? el("button", { type: "button", onclick: go([...this.pages, next]) }, "Older jobs") : null);
  }
}

function row(job) {
  const { done, total } = job.progress;
  const bar = progressBar(`progress of job ${job.id}`);
  const ended = !ACTIVE.has(job.status);
  const text = total ? `${done} of ${total} slices` : ended ? "" : "waiting";
  if (ended) bar.set(total ? done : 1, total || 1, text || job.status);
  else bar.set(total ? done : null, total, text);
  const verdict = verdictOf(job.summary);
  return el("tr", { "data-job-id": job.id },
    el("td", {}, el("time", { datetime: job.created_at }, localTime(job.created_at))),
    el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, el("code", {}, job.id.slice(0, 8)),
      el("span", { class: "visually-hidden" }, ` (job ${job.id})`))),
    el("td", { class: "input-name" }, job.input_name ?? el("span", { class: "hint", title: "not stored (STORE_SOURCE_PATHS)" }, "—")),
    el("td", {}, el("span", { class: `badge status-${job.status}` }, job.status),
      job.warnings_count ? el("span", { class: "hint" }, ` ${job.warnings_count} warnings`) : null),
    el("td", { class: "verdict-cell" }, verdict ? el("strong", { class: `verdict-${verdict}` }, verdict) : "",
      verdict === "inconclusive" && job.summary.label ? el("span", { class: "hint" }, ` (model output ${job.summary.label})`) : null),
    el("td", { class: "num" }, total ? String(total) : ""),
    el("td", { class: "progress-cell" }, bar.element, el("span", { class: "hint" }, text)),
    el("td", {}, `${job.model.name} ${job.model.version}`));
}
