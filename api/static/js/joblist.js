// The owner's jobs, newest first, refreshed every few seconds while any is active.

import { getJson } from "./api.js";
import { el, fill, localTime, progressBar } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);
const REFRESH_MS = 3000;
const LIMIT = 50;

export class JobList {
  constructor({ table, status, error }) {
    this.table = table;
    this.tbody = table.querySelector("tbody");
    this.status = status;
    this.error = error;
    this.timer = null;
    this.loading = false;
  }

  /** Load the list now; keep refreshing while a job in it is queued or running. */
  async refresh() {
    clearTimeout(this.timer);
    if (this.loading) return;
    this.loading = true;
    let body;
    try {
      body = await getJson(`/api/v1/jobs?limit=${LIMIT}`);
      this.error.textContent = "";
    } catch (err) {
      this.error.textContent = `Could not load your jobs: ${err.message}`;
      this.loading = false;
      if (err.status !== 401) this.timer = setTimeout(() => this.refresh(), REFRESH_MS * 2);
      return;
    }
    this.loading = false;
    this.render(body.items, Boolean(body.next));
    if (body.items.some((j) => ACTIVE.has(j.status))) {
      this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
    }
  }

  stop() {
    clearTimeout(this.timer);
  }

  render(jobs, more) {
    const active = jobs.filter((j) => ACTIVE.has(j.status)).length;
    let text = jobs.length ? `${jobs.length} job${jobs.length === 1 ? "" : "s"}.` : "No jobs yet.";
    if (more) text = `Newest ${jobs.length} jobs.`;
    if (active) text += ` ${active} active; refreshing every ${REFRESH_MS / 1000} s.`;
    this.status.textContent = text;
    this.table.hidden = jobs.length === 0;
    fill(this.tbody, jobs.map((job) => row(job)));
  }
}

function row(job) {
  const { done, total } = job.progress;
  const bar = progressBar(`progress of job ${job.id}`);
  const ended = !ACTIVE.has(job.status);
  const text = total ? `${done} of ${total} slices` : ended ? "" : "waiting";
  if (ended) bar.set(total ? done : 1, total || 1, text || job.status);
  else bar.set(total ? done : null, total, text);
  return el("tr", { "data-job-id": job.id },
    el("td", {}, el("time", { datetime: job.created_at }, localTime(job.created_at))),
    el("td", {}, el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, el("code", {}, job.id.slice(0, 8)),
      el("span", { class: "visually-hidden" }, ` (job ${job.id})`))),
    el("td", {}, el("span", { class: `badge status-${job.status}` }, job.status),
      job.warnings_count ? el("span", { class: "hint" }, ` ${job.warnings_count} warnings`) : null),
    el("td", { class: "progress-cell" }, bar.element, el("span", { class: "hint" }, text)),
    el("td", {}, `${job.model.name} ${job.model.version}`));
}
