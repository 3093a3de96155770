// The page: the API key, then either the home page (submit, this tab's
// submissions, the job list) or one job's page at /jobs/<id>.

import { forgetKey, getJson, getKey, onKeyRefused, setKey, uploadJob } from "./api.js";
import { el, fill, percent, progressBar } from "./dom.js";
import { JobList } from "./joblist.js";
import { INPUT_NAME_KEY, JobView, modelMetrics } from "./jobview.js";

const $ = (id) => document.getElementById(id);
const jobPath = () => location.pathname.match(/^\/jobs\/([^/]+)(?:\/series\/(\d+)\/slices\/(\d+))?\/?$/);
const jobIdInPath = () => {
  const m = jobPath();
  return m ? decodeURIComponent(m[1]) : null;
};
/** {series, slice} of a shareable viewer URL /jobs/<id>/series/<n>/slices/<i>, else null. */
const sliceInPath = () => {
  const m = jobPath();
  return m && m[2] ? { series: Number(m[2]), slice: Number(m[3]) } : null;
};

const views = new Set(); // live JobViews, polled again when a new key is accepted
let models = Promise.resolve([]);
let jobList = null;
let uploading = 0;

// --- the key ------------------------------------------------------------------

onKeyRefused((message) => {
  $("key-status").textContent = "";
  $("key-error").textContent =
    `The API key was refused (${message}). Check it, then press "Use key".`;
});

async function useKey() {
  $("key-error").textContent = "";
  if (!getKey()) {
    $("key-status").textContent = "Enter your API key to submit and see jobs.";
    return false;
  }
  $("key-status").textContent = "Checking the key…";
  models = getJson("/api/v1/models").then((body) => body.items);
  try {
    await models;
  } catch (err) {
    if (err.status !== 401) {
      $("key-status").textContent = "";
      $("key-error").textContent = `Could not check the key: ${err.message}`;
    }
    models = Promise.resolve([]);
    return false;
  }
  $("key-status").textContent = "Key accepted (kept for this browser tab's session).";
  return true;
}

$("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setKey($("api-key").value.trim());
  if (await useKey()) start();
});

$("forget-key").addEventListener("click", () => {
  forgetKey();
  $("api-key").value = "";
  $("key-error").textContent = "";
  $("key-status").textContent = "Key forgotten.";
  // nothing the key showed stays on screen: the job list, this tab's submissions, a job page
  jobList?.clear();
  for (const view of views) view.destroy();
  views.clear();
  fill($("submissions"));
  $("subs-title").hidden = true;
  fill($("job-view"));
  for (const name of Object.keys(sessionStorage)) {
    if (name.startsWith(INPUT_NAME_KEY)) sessionStorage.removeItem(name);
  }
});

// --- home page: submit and list -------------------------------------------------

async function fillModels() {
  const select = $("model");
  const items = await models.catch(() => []);
  const previous = select.value;
  fill(select, items.map((m) => {
    const f1 = m.metrics && typeof m.metrics.macro_f1 === "number" ? ` (test macro-F1 ${m.metrics.macro_f1.toFixed(2)})` : "";
    return el("option", { value: m.name, selected: previous ? m.name === previous : m.default }, `${m.name} ${m.version}${f1}`);
  }));
  showModelInfo(items);
  select.onchange = () => showModelInfo(items);
}

function showModelInfo(items) {
  const model = items.find((m) => m.name === $("model").value);
  const info = $("model-info");
  if (!model) {
    fill(info);
    return;
  }
  const cardUrl = model.card_url || (model.links && model.links.card);
  if (cardUrl && /^(https?:\/\/|\/)/.test(cardUrl)) fill(info, " ", el("a", { href: cardUrl }, "model card"));
  else fill(info, modelMetrics(model));
}

function setUploading(delta) {
  uploading += delta;
  $("submit-button").disabled = uploading > 0;
}

$("submit-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("submit-error").textContent = "";
  if (!getKey() && $("api-key").value.trim()) {
    // a key pasted into the field but not yet "used": use it now
    setKey($("api-key").value.trim());
    if (!(await useKey())) return;
    start();
  }
  if (!getKey()) {
    $("submit-error").textContent = "Enter your API key first.";
    $("api-key").focus();
    return;
  }
  const form = ev.target;
  const file = $("file").files[0];
  if (!file) {
    $("submit-error").textContent = "Choose a file to upload.";
    return;
  }
  const data = new FormData(form);
  $("file").value = ""; // the form data holds the file; the field is free for the next one
  setUploading(+1);
  try {
    await submitCard(file.name, data);
  } finally {
    setUploading(-1);
  }
});

/** One card per submission: the upload's progress, then the job's own view. */
async function submitCard(name, data) {
  $("subs-title").hidden = false;
  const bar = progressBar(`upload of ${name}`);
  const live = el("p", { class: "live", role: "status", "aria-live": "polite" }, "uploading 0%");
  const error = el("p", { class: "err", role: "alert" });
  const body = el("div", {}, bar.element, live, error);
  const card = el("article", { class: "card submission" },
    el("h3", {}, "Upload ", el("code", {}, name)), body);
  $("submissions").prepend(card);
  bar.set(0, 1, "0%");
  let job;
  try {
    job = await uploadJob(data, (fraction) => {
      bar.set(fraction, 1, percent(fraction, 0));
      live.textContent = fraction < 1 ? `uploading ${percent(fraction, 0)}` : "uploaded";
    });
  } catch (err) {
    live.textContent = "upload failed";
    error.textContent = `Upload of ${name} failed: ${err.message}`;
    return;
  }
  const jobBox = el("div", { class: "job" });
  body.append(jobBox);
  const view = new JobView(jobBox, job.id, {
    models,
    inputName: name,
    headingLevel: 4,
    onDeleted: () => { views.delete(view); jobList?.refresh(); },
  });
  views.add(view);
  jobList?.refresh();
}

// --- starting ---------------------------------------------------------------------

function start() {
  const id = jobIdInPath();
  if (id) {
    const existing = [...views].find((v) => v.jobId === id);
    if (existing) existing.poll();
    else {
      const view = new JobView($("job-view"), id, { models, headingLevel: 2, slice: sliceInPath() });
      views.add(view);
    }
    return;
  }
  fillModels();
  for (const view of views) view.poll();
  jobList ??= new JobList({
    table: $("job-list"), status: $("list-status"), error: $("list-error"),
    pager: $("list-pager"), filters: $("list-filters"),
  });
  jobList.refresh();
}

// Back and forward between a job page and its viewer URLs, without a reload.
window.addEventListener("popstate", () => {
  const id = jobIdInPath();
  const view = [...views].find((v) => v.jobId === id);
  const at = sliceInPath();
  if (!view) return;
  if (at) view.openViewer(at.series, at.slice);
  else view.viewer?.o.onClose();
});

async function main() {
  const id = jobIdInPath();
  $("home").hidden = Boolean(id);
  $("job-page").hidden = !id;
  if (id) document.title = `Job ${id} · Lung-CT classifier`;
  $("api-key").value = getKey();
  if (!getKey()) {
    $("key-status").textContent = id ? "Enter your API key to see this job." : "Enter your API key to submit and see jobs.";
    $("api-key").focus();
    return;
  }
  if (await useKey()) start();
}

main();
