// The create form (#/create). Its framework and target choices come from the API's own OpenAPI
// document; each entry of a 400's error.fields lands next to the field it names. The API does
// the validating. One Idempotency-Key per request: a retry of the same form never creates twice.

import { api, ApiError, isAbort } from "./api.js";
import { buildForm, clearErrors, fillChoices, showErrors } from "./create-form.js";
import { el, setText, showError } from "./dom.js";
import { formatGpuMemory } from "./format.js";
import { ParseError, parseEnvVars, splitCommand } from "./parse.js";

export function mountCreateForm(container, { navigate }) {
  const controller = new AbortController();
  const signal = controller.signal;
  const view = buildForm();
  const panel = el("section", { class: "panel", "aria-label": "Create deployment form" }, view.form);
  container.append(el("div", { class: "page-create" }, el("h1", {}, "Create deployment"), panel));
  const state = { resources: [], choices: null, attempt: null }; // attempt: {key, body} last sent
  const show = wireForm(view, state, { navigate, signal });
  loadChoices().then(
    (choices) => {
      if (signal.aborted) return;
      state.choices = choices;
      fillChoices(view.form, choices);
      show();
    },
    (error) => {
      if (signal.aborted) return;
      fillChoices(view.form, null); // sent without framework and target: the API's defaults
      show();
      showError(panel, error, "Could not load the choices of Where it runs and Framework: ");
    },
  );
  loadResources(view, signal).then((items) => (state.resources = items));
  loadNodes(view, signal);
  return () => controller.abort();
}

async function loadChoices() {
  const [framework, target] = await Promise.all([
    api.fieldChoices("CreateDeploymentRequest", "framework"),
    api.fieldChoices("CreateDeploymentRequest", "target"),
  ]);
  return { framework, target };
}

/** Shows the fields the chosen form and target use; returns what shows them again. */
function wireForm(view, state, { navigate, signal }) {
  const named = (name) => view.form.elements.namedItem(name);
  const show = () => {
    for (const group of view.form.querySelectorAll("[data-forms]")) {
      group.hidden = !group.dataset.forms.split(" ").includes(named("form").value);
    }
    view.nodeField.hidden = named("target").value !== "prism_node";
    view.gpuTypeField.hidden = !named("gpu").checked;
  };
  view.form.addEventListener("change", (event) => {
    if (event.target.name === "resource_slug") {
      const resource = chosenResource(view.form, state.resources);
      renderResourceInfo(view.resourceInfo, resource);
      if (resource) startFromResource(view.form, resource);
    }
    show();
  });
  view.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(view, state, { navigate, signal });
  });
  show();
  return show;
}

/** Starts from the resource's own settings; only what the reader then changes is sent. */
function startFromResource(form, resource) {
  const named = (name) => form.elements.namedItem(name);
  named("gpu").checked = resource.gpu;
  named("gpu_type").value = resource.gpu_type || "";
  named("deploy_config.port").placeholder = String(resource.deploy_config?.port ?? "");
  named("deploy_config.health_path").placeholder = resource.deploy_config?.health_path || "/health";
}

function chosenResource(form, resources) {
  const slug = form.elements.namedItem("resource_slug").value;
  return resources.find((resource) => resource.slug === slug) || null;
}

async function loadResources(view, signal) {
  try {
    const items = (await api.listResources({ signal })).items || [];
    // All options at once, so the list is never seen half filled.
    view.resourceSelect.replaceChildren(
      el("option", { value: "" }, "Choose a resource"),
      ...items.map((r) => el("option", { value: r.slug }, `${r.title} (${r.slug})`)),
    );
    renderResourceInfo(view.resourceInfo, null, items.length > 0);
    return items;
  } catch (error) {
    if (!isAbort(error)) showError(view.resourceGroup, error, "Could not load the marketplace: ");
    return [];
  }
}

async function loadNodes(view, signal) {
  try {
    const nodes = (await api.listNodes({ signal })).items || [];
    view.nodeSelect.append(
      ...nodes.map((node) =>
        el("option", { value: node.id }, `${node.name} (${node.status}, ${gpuSummary(node)})`),
      ),
    );
  } catch (error) {
    if (!isAbort(error)) showError(view.nodeField, error, "Could not load your nodes: ");
  }
}

function gpuSummary(node) {
  if (!node.gpus || node.gpus.length === 0) return "no GPU";
  return node.gpus.map((gpu) => `${gpu.name} ${formatGpuMemory(gpu.memory_total_mb)}`).join(", ");
}

function renderResourceInfo(box, resource, marketplaceHasSome = true) {
  if (!resource) {
    setText(
      box,
      marketplaceHasSome ? "Choose a resource to see what it runs." : "The marketplace has no resources.",
    );
    return;
  }
  const runs = resource.image ? `image ${resource.image}` : `weights ${resource.weights_source}`;
  const command = resource.command && resource.command.length ? ` with ${resource.command.join(" ")}` : "";
  const gpu = resource.gpu ? `GPU: ${resource.gpu_type || "any"}` : "no GPU";
  box.replaceChildren(
    el("strong", {}, resource.title),
    el("span", {}, resource.description),
    el("span", { class: "muted" }, `Runs ${runs}${command}; ${gpu}; framework ${resource.framework}.`),
  );
}

/** A random UUID; randomUUID needs a secure context, which plain http off localhost is not. */
function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function submit(view, state, { navigate, signal }) {
  clearErrors(view);
  let body;
  try {
    body = buildBody(view.form, state);
  } catch (error) {
    if (!(error instanceof FieldErrors)) throw error;
    showErrors(view, "some fields cannot be read.", error.fields);
    return;
  }
  // The same form sent again (after a lost answer) keeps its key; a changed one gets a new key.
  const sent = JSON.stringify(body);
  if (!state.attempt || state.attempt.body !== sent) state.attempt = { key: newIdempotencyKey(), body: sent };
  view.submit.disabled = true;
  setText(view.submit, "Creating…");
  try {
    const created = await api.createDeployment(body, { idempotencyKey: state.attempt.key });
    state.attempt = null;
    if (signal.aborted) return; // the reader left the form meanwhile: stay where they went
    navigate(`#/deployments/${encodeURIComponent(created.id)}`, {
      endpointKey: created.endpoint_key,
      endpointAuth: created.endpoint_auth,
      deployment: created,
    });
  } catch (error) {
    if (signal.aborted) return;
    showErrors(view, error.message, error instanceof ApiError ? error.fields : {});
  } finally {
    view.submit.disabled = false;
    setText(view.submit, "Create deployment");
  }
}

class FieldErrors extends Error {
  constructor(fields) {
    super("fields cannot be read");
    this.fields = fields;
  }
}

/** Sets body[name] to what a parser makes of the text; its ParseError becomes a field error. */
function parseInto(body, errors, name, parse) {
  try {
    const value = parse();
    if (value !== undefined) body[name] = value;
  } catch (error) {
    if (!(error instanceof ParseError)) throw error;
    errors[name] = error.message;
  }
}

/**
 * The request body: only what is filled in. An empty name or source is left out, so the API
 * names the missing field instead of rejecting an empty string's pattern.
 */
function buildBody(form, { resources, choices }) {
  const text = (name) => form.elements.namedItem(name).value.trim();
  const kind = form.elements.namedItem("form").value;
  const errors = {};
  const body = {};
  if (text("name")) body.name = text("name");
  if (text("target")) body.target = text("target");
  const source = { image: "image", resource: "resource_slug", weights: "weights_source" }[kind];
  if (text(source)) body[source] = text(source);
  if (kind === "weights") {
    if (text("framework") && text("framework") !== choices?.framework.default) {
      body.framework = text("framework");
    }
    if (form.elements.namedItem("allow_insecure_http").checked) body.allow_insecure_http = true;
  }
  if (kind !== "resource" && text("command"))
    parseInto(body, errors, "command", () => splitCommand(text("command")));
  Object.assign(body, gpuFields(form, kind === "resource" ? chosenResource(form, resources) : null));
  if (text("budget_max_usd")) body.budget_max_usd = text("budget_max_usd"); // a decimal string: exact
  parseInto(body, errors, "env_vars", () => {
    const env = parseEnvVars(form.elements.namedItem("env_vars").value);
    return Object.keys(env).length ? env : undefined;
  });
  const config = deployConfig(text("deploy_config.port"), text("deploy_config.health_path"));
  if (config) body.deploy_config = config;
  if (body.target === "prism_node" && text("node_id")) body.node_id = text("node_id");
  if (Object.keys(errors).length) throw new FieldErrors(errors);
  return body;
}

/** gpu and gpu_type; for a resource only where they differ from its own (sending overrides it). */
function gpuFields(form, resource) {
  const gpu = form.elements.namedItem("gpu").checked;
  const gpuType = form.elements.namedItem("gpu_type").value.trim() || null;
  const fields = {};
  if (!resource || gpu !== resource.gpu) fields.gpu = gpu;
  if (gpu && gpuType && (!resource || gpuType !== resource.gpu_type)) fields.gpu_type = gpuType;
  return fields;
}

function deployConfig(port, healthPath) {
  const config = {};
  // Digits become a number; anything else goes as typed so the API names what is wrong.
  if (port) config.port = /^\d+$/.test(port) ? Number(port) : port;
  if (healthPath) config.health_path = healthPath;
  return Object.keys(config).length ? config : null;
}
