// The REST API, called the way the CLI calls it: Authorization: Bearer <API key>.
// Relative to the page, so it works at /console locally and under API Gateway's stage prefix.

const API_BASE = new URL("api/v1/", document.baseURI);
const KEY_STORAGE = "prism.apiKey";

/** How much one call asks for (the API's maxima: deployments 100, costs 500, log lines 5000). */
export const PAGE_SIZES = {
  deployments: 50,
  activeDeploymentsOnNodes: 100, // the most one call gives: the nodes page makes one
  costsOnOpen: 500, // the whole ledger, up to the most one call gives
  costsOnRefresh: 20, // only the newest periods, merged into what is shown
  logLines: 200,
};

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

function requestUrl(path, query) {
  const url = new URL(path, API_BASE);
  for (const [name, value] of Object.entries(query || {})) {
    if (value === null || value === undefined || value === "") continue;
    url.searchParams.set(name, Array.isArray(value) ? value.join(",") : String(value));
  }
  return url;
}

/**
 * One API call. query values may be arrays (joined with commas, as the CLI sends them).
 * Throws ApiError on any failure.
 */
async function apiRequest(path, options = {}) {
  const { method = "GET", query, body, headers: extraHeaders, signal, apiKey, quiet401 } = options;
  const key = apiKey ?? getApiKey();
  const headers = { Accept: "application/json", ...extraHeaders };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";

  let response;
  try {
    response = await fetch(requestUrl(path, query), {
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

export function isTerminal(status) {
  return status === "stopped" || status === "failed";
}

let openApiDocument = null; // a promise: the document is fetched once per page load

/** The API's OpenAPI document (public); a failed fetch is tried again on the next ask. */
function loadOpenApiDocument() {
  openApiDocument ??= apiRequest("openapi.json").catch((error) => {
    openApiDocument = null;
    throw error;
  });
  return openApiDocument;
}

/** The object a JSON reference ("#/components/schemas/Target", "#/$defs/Target") points at. */
function resolveRef(document, schema) {
  if (!schema || typeof schema.$ref !== "string") return schema;
  const path = schema.$ref
    .replace(/^#\//, "")
    .split("/")
    .map((part) => part.replace(/~1/g, "/").replace(/~0/g, "~"));
  return resolveRef(
    document,
    path.reduce((node, part) => node?.[part], document),
  );
}

/** A property's enum values and default, following $ref and allOf/anyOf wrappers. */
function enumOf(document, schema) {
  const resolved = resolveRef(document, schema) || {};
  if (Array.isArray(resolved.enum)) return { values: resolved.enum, default: resolved.default ?? null };
  for (const part of [...(resolved.allOf || []), ...(resolved.anyOf || []), ...(resolved.oneOf || [])]) {
    const found = enumOf(document, part);
    if (found) return { ...found, default: resolved.default ?? found.default };
  }
  return null;
}

export const api = {
  listDeployments: ({ statuses, limit = PAGE_SIZES.deployments, nextToken, signal } = {}) =>
    apiRequest("compute/deployments", {
      query: { status: statuses, limit, next_token: nextToken },
      signal,
    }),
  getDeployment: async (id, { signal } = {}) => apiRequest(deploymentPath(id), { signal }),
  stopDeployment: async (id) => apiRequest(deploymentPath(id), { method: "DELETE" }),
  /** A live probe through the node (a round trip): only when asked for, never polled. */
  probeHealth: async (id) => apiRequest(deploymentPath(id, "/health")),
  logs: async (id, { signal } = {}) =>
    apiRequest(deploymentPath(id, "/logs"), { query: { tail: PAGE_SIZES.logLines }, signal }),
  costs: async (id, { limit = PAGE_SIZES.costsOnOpen, signal } = {}) =>
    apiRequest(deploymentPath(id, "/costs"), { query: { limit }, signal }),
  /** A retry with the same key and body gets the first create's answer, never a second deployment. */
  createDeployment: (body, { idempotencyKey }) =>
    apiRequest("compute/deployments", {
      method: "POST",
      body,
      headers: { "Idempotency-Key": idempotencyKey },
    }),
  listNodes: ({ signal } = {}) => apiRequest("compute/nodes", { signal }),
  listResources: ({ signal } = {}) => apiRequest("marketplace/resources", { signal }),
  /** {values, default} of a request field's enum, from the API's own OpenAPI document. */
  fieldChoices: async (schemaName, property) => {
    const document = await loadOpenApiDocument();
    const schema = document?.components?.schemas?.[schemaName]?.properties?.[property];
    const found = enumOf(document, schema);
    if (!found) throw new ApiError(0, "openapi", `The API's description has no choices for ${property}.`);
    return found;
  },
  /** Checks a key before it is kept: a 401 here is a wrong key, not an ended session. */
  checkKey: (apiKey) => apiRequest("compute/deployments", { query: { limit: 1 }, apiKey, quiet401: true }),
};
