// The usage API, with the admin token from sessionStorage (gone when the tab closes).

const TOKEN_KEY = "tallyproxy.adminToken";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** GET a usage API path (relative to /dashboard/) with the non-empty params. */
export async function getJson(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store", credentials: "omit" });
  } catch (error) {
    throw new ApiError(0, `the proxy did not answer (${error.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    const message = body && body.error && body.error.message;
    throw new ApiError(response.status, message || `HTTP ${response.status} from ${url.pathname}`);
  }
  return body;
}

/** Every page of a paginated list, up to maxPages pages. */
export async function getAll(path, params, maxPages = 10) {
  const rows = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page++) {
    const body = await getJson(path, { ...params, cursor });
    rows.push(...body.data);
    cursor = body.next_cursor;
    if (!cursor) return { rows, complete: true };
  }
  return { rows, complete: false };
}
