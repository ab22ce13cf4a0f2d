// The v1 API as the signed-in user: the key lives in this tab's session storage and travels only in
// the Authorization header (never in a URL). Errors carry the API's {detail, code}.
const KEY = "htl.apiKey";

export const apiKey = () => sessionStorage.getItem(KEY);
export const storeKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.detail = body && body.detail;
  }
}

function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  return "";
}

async function send(path, { method = "GET", json, accept = "application/json", key = apiKey() } = {}) {
  const headers = { Accept: accept, Authorization: `Bearer ${key}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ detail: response.statusText }));
    if (response.status === 401 && key === apiKey()) {
      forgetKey(); // a revoked key: sign in again
      location.reload();
    }
    throw new ApiError(response.status, problem);
  }
  return response;
}

export async function request(path, options) {
  const response = await send(path, options);
  return response.status === 204 ? null : response.json();
}

/** Every item of a paginated list, following next_cursor. */
export async function getAll(path, params = {}) {
  const items = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ ...params, limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const page = await request(`${path}?${query}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

/** A binary resource (an overlay, a checkpoint) as a Blob, fetched with the key. */
export async function getBlob(path, accept = "*/*") {
  return (await send(path, { accept })).blob();
}

/** Is this key valid? Throws the API's message when not. */
export async function checkKey(key) {
  await send("/v1/datasets?limit=1", { key });
}

/** multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${apiKey()}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.upload.onload = () => onProgress(1, 1, true);
    xhr.onload = () => {
      let body;
      try { body = JSON.parse(xhr.responseText); } catch { body = { detail: xhr.statusText }; }
      xhr.status >= 200 && xhr.status < 300 ? resolve(body) : reject(new ApiError(xhr.status, body));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: "the upload failed: the server could not be reached" }));
    xhr.send(form);
  });
}
