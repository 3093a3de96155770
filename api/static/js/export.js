// Results as downloadable CSV and JSON, built in the browser from /results.
// The columns are the CLI's (client/export.py): job_id, input, input_member,
// study_verdict, slice_index, source, series_uid, instance_number,
// slice_position, frame, label, p_<class> per class, out_of_distribution,
// ood_score, error. The browser cannot see inside an upload, so input_member
// stays empty here; the CLI fills it from the local files.

const HEAD = ["job_id", "input", "input_member", "study_verdict", "slice_index", "source", "series_uid",
  "instance_number", "slice_position", "frame", "label"];
const TAIL = ["out_of_distribution", "ood_score", "error"];

/** Flat rows, one per slice, with one p_<class> column per class. */
export function resultRows(jobId, items, classes, { input = "", verdict = null } = {}) {
  return items.map((it) => {
    const row = { job_id: jobId, input, input_member: null, study_verdict: verdict };
    for (const c of HEAD.slice(4)) row[c] = it[c] ?? null;
    for (const c of classes) row[`p_${c}`] = it.probabilities ? (it.probabilities[c] ?? null) : null;
    for (const c of TAIL) row[c] = it[c] ?? null;
    return row;
  });
}

/** The class names of a job: the model's, else those seen in the results. */
export function classesOf(items, model) {
  if (model && model.classes && model.classes.length) return model.classes;
  const seen = new Set();
  for (const it of items) for (const c of Object.keys(it.probabilities || {})) seen.add(c);
  return [...seen].sort();
}

// A text cell starting with one of these is a formula to spreadsheet programs;
// file names come from uploads, so such cells get a leading apostrophe.
const FORMULA_START = /^[=+\-@\t\r]/;

function csvCell(value) {
  if (value === null || value === undefined) return "";
  let text = String(value);
  if (typeof value === "string" && FORMULA_START.test(text)) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(rows, columns) {
  const lines = [columns.join(",")];
  for (const row of rows) lines.push(columns.map((c) => csvCell(row[c])).join(","));
  return `${lines.join("\r\n")}\r\n`;
}

export function columnsOf(classes) {
  return [...HEAD, ...classes.map((c) => `p_${c}`), ...TAIL];
}

/** Offer text as a file download named filename. */
export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
