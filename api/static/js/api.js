// Talking to the v1 API with the key from session storage.
//
// Every request carries `Authorization: Bearer <key>`; a 401 anywhere calls the
// handler set by onKeyRefused, so the page can say so next to the key field.

const KEY_NAME = "lungct-api-key";
let keyRefused = () => {};

export const getKey = () => sessionStorage.getItem(KEY_NAME) || "";
export const setKey = (key) => sessionStorage.setItem(KEY_NAME, key);
export const forgetKey = () => sessionStorage.removeItem(KEY_NAME);
export const onKeyRefused = (handler) => { keyRefused = handler; };

/** An error answer of the API: `status` and the server's message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  return { Authorization: `Bearer ${getKey()}` };
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) keyRefused(message);
  return new ApiError(response.status, message);
}

/** fetch() with the key; resolves to the response, throws ApiError on a non-2xx answer. */
export async function request(url, options = {}) {
  const response = await fetch(url, {
    ...options,
    headers: { ...(options.headers || {}), ...authHeaders() },
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** GET url as JSON (ApiError on a non-2xx answer). */
export async function getJson(url, options = {}) {
  return (await request(url, options)).json();
}

/** Every page of /results as one array (follows `next`). */
export async function allResults(jobId) {
  const items = [];
  let url = `/api/v1/jobs/${encodeURIComponent(jobId)}/results?limit=1000`;
  while (url) {
    const page = await getJson(url);
    items.push(...page.items);
    url = page.next;
  }
  return items;
}

/**
 * POST a file to /api/v1/jobs with XMLHttpRequest, for upload progress events.
 * onProgress(fraction) is called while the body is sent; resolves to the new job.
 */
export function uploadJob(formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/jobs");
    xhr.setRequestHeader("Authorization", authHeaders().Authorization);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) onProgress(ev.loaded / ev.total);
    });
    xhr.addEventListener("load", () => {
      const body = xhr.response;
      if (xhr.status === 200 || xhr.status === 202) {
        onProgress(1);
        resolve(body);
        return;
      }
      const message = (body && body.error && body.error.message) || `${xhr.status} ${xhr.statusText}`;
      if (xhr.status === 401) keyRefused(message);
      reject(new ApiError(xhr.status, message));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the upload failed: no answer from the server")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "the upload was aborted")));
    xhr.send(formData);
  });
}

// Images need the key too, so they are fetched and shown through object URLs.
const MAX_PARALLEL_IMAGES = 4;
let running = 0;
const waiting = [];

async function withImageSlot(task) {
  if (running >= MAX_PARALLEL_IMAGES) await new Promise((go) => waiting.push(go));
  running += 1;
  try {
    return await task();
  } finally {
    running -= 1;
    const next = waiting.shift();
    if (next) next();
  }
}

/** An object URL of the image at url, or null when there is none (404). Caller revokes it. */
export function imageUrl(url) {
  return withImageSlot(async () => {
    try {
      const blob = await (await request(url)).blob();
      return URL.createObjectURL(blob);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  });
}
