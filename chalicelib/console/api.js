// The REST API, called the way the CLI calls it: Authorization: Bearer <API key>.
// Relative to the page, so it works at /console locally and under API Gateway's stage prefix.

const API_BASE = new URL("api/v1/", document.baseURI);
const KEY_STORAGE = "prism.apiKey";

export class ApiError extends Error {
  constructor(status, code, message, fields = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
}

// sessionStorage only: the key dies with the tab and is never written to disk by the console.
export function getApiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function clearApiKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

let onUnauthorized = () => {};

/** The app signs out (and says why) when any call is refused with 401. */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function isAbort(error) {
  return error && error.name === "AbortError";
}

/**
 * One API call. query values may be arrays (joined with commas, as the CLI sends them).
 * Throws ApiError on any failure.
 */
export async function apiRequest(path, { method = "GET", query, body, signal, apiKey, quiet401 } = {}) {
  const url = new URL(path, API_BASE);
  for (const [name, value] of Object.entries(query || {})) {
    if (value === null || value === undefined || value === "") continue;
    url.searchParams.set(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  const key = apiKey ?? getApiKey();
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";

  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(0, "network", `Could not reach the PRISM API (${error.message}).`);
  }
  const data = await readJson(response);
  if (response.ok) return data;

  const detail = (data && data.error) || {};
  const error = new ApiError(
    response.status,
    detail.code || "http_error",
    detail.message || `The API answered HTTP ${response.status}.`,
    detail.fields,
  );
  if (response.status === 401 && !quiet401) onUnauthorized(error);
  throw error;
}

async function readJson(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** A deployment's own path; its id is one path segment however it is spelled. */
function deploymentPath(id, suffix = "") {
  // encodeURIComponent leaves "." and "..", which URL resolution would treat as directories.
  if (/^\.+$/.test(id)) throw new ApiError(404, "not_found", `No deployment ${id}.`);
  return `compute/deployments/${encodeURIComponent(id)}${suffix}`;
}

export const ACTIVE_STATUSES = ["provisioning", "pulling", "starting", "running", "unhealthy", "stopping"];
export const ALL_STATUSES = [...ACTIVE_STATUSES, "stopped", "failed"];
export const TERMINAL_STATUSES = ["stopped", "failed"];

export function isTerminal(status) {
  return TERMINAL_STATUSES.includes(status);
}

export const api = {
  listDeployments: ({ statuses, limit = 50, nextToken, signal } = {}) =>
    apiRequest("compute/deployments", {
      query: { status: statuses, limit, next_token: nextToken },
      signal,
    }),
  getDeployment: async (id, { signal } = {}) => apiRequest(deploymentPath(id), { signal }),
  stopDeployment: async (id) => apiRequest(deploymentPath(id), { method: "DELETE" }),
  health: async (id, { signal } = {}) => apiRequest(deploymentPath(id, "/health"), { signal }),
  logs: async (id, { tail = 200, signal } = {}) =>
    apiRequest(deploymentPath(id, "/logs"), { query: { tail }, signal }),
  costs: async (id, { limit = 500, signal } = {}) =>
    apiRequest(deploymentPath(id, "/costs"), { query: { limit }, signal }),
  createDeployment: (body) => apiRequest("compute/deployments", { method: "POST", body }),
  listNodes: ({ signal } = {}) => apiRequest("compute/nodes", { signal }),
  listResources: ({ signal } = {}) => apiRequest("marketplace/resources", { signal }),
  /** Checks a key before it is kept: a 401 here is a wrong key, not an ended session. */
  checkKey: (apiKey) =>
    apiRequest("compute/deployments", { query: { limit: 1 }, apiKey, quiet401: true }),
};
