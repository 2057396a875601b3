// The create form (#/create). Fields are named by the API's field paths, so each entry of a
// 400's error.fields lands next to the field it names. The API does the validating.

import { api, ApiError, isAbort } from "./api.js";
import { el, setText, showError } from "./dom.js";
import { formatGpuMemory } from "./format.js";
import { ParseError, parseEnvVars, splitCommand } from "./parse.js";

const FRAMEWORKS = ["auto", "vllm", "tgi", "tei", "llama.cpp", "prism-embed", "transformers", "sentence-transformers", "gguf", "onnx", "custom"];
const TARGETS = [
  ["prism_node", "Your own node (prism_node)"],
  ["runpod", "RunPod (runpod)"],
  ["lambda", "Lambda Cloud (lambda)"],
];
const FORMS = [
  ["image", "A container image"],
  ["resource", "A marketplace resource"],
  ["weights", "Model weights and a command"],
];

export function mountCreateForm(container, { navigate }) {
  const controller = new AbortController();
  const view = buildForm();
  container.append(view.root);
  let resources = [];

  function showForm() {
    const kind = view.form.elements.namedItem("form").value;
    for (const group of view.form.querySelectorAll("[data-forms]")) {
      group.hidden = !group.dataset.forms.split(" ").includes(kind);
    }
  }
  function showTargetFields() {
    const onNode = view.form.elements.namedItem("target").value === "prism_node";
    view.nodeField.hidden = !onNode;
  }
  function showGpuType() {
    view.gpuTypeField.hidden = !view.form.elements.namedItem("gpu").checked;
  }
  function onResourceChosen() {
    const resource = chosenResource(view.form, resources);
    renderResourceInfo(view.resourceInfo, resource);
    if (!resource) return;
    // Start from the resource's own settings; only what the reader then changes is sent.
    view.form.elements.namedItem("gpu").checked = resource.gpu;
    view.form.elements.namedItem("gpu_type").value = resource.gpu_type || "";
    view.form.elements.namedItem("deploy_config.port").placeholder = String(resource.deploy_config?.port ?? "");
    view.form.elements.namedItem("deploy_config.health_path").placeholder = resource.deploy_config?.health_path || "/health";
    showGpuType();
  }

  view.form.addEventListener("change", (event) => {
    const name = event.target.name;
    if (name === "form") showForm();
    if (name === "target") showTargetFields();
    if (name === "gpu") showGpuType();
    if (name === "resource_slug") onResourceChosen();
  });
  view.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    await submit(view, resources, navigate);
  });
  showForm();
  showTargetFields();
  showGpuType();

  loadResources(view, controller.signal).then((items) => {
    resources = items;
    if (items.length) onResourceChosen();
  });
  loadNodes(view, controller.signal);
  return () => controller.abort();
}

function chosenResource(form, resources) {
  const slug = form.elements.namedItem("resource_slug").value;
  return resources.find((resource) => resource.slug === slug) || null;
}

async function loadResources(view, signal) {
  try {
    const answer = await api.listResources({ signal });
    const items = answer.items || [];
    // All options at once, so the list is never seen half filled.
    view.resourceSelect.replaceChildren(
      el("option", { value: "" }, "Choose a resource"),
      ...items.map((r) => el("option", { value: r.slug }, `${r.title} (${r.slug})`)),
    );
    if (items.length === 0) setText(view.resourceInfo, "The marketplace has no resources.");
    return items;
  } catch (error) {
    if (!isAbort(error)) showError(view.resourceGroup, error, "Could not load the marketplace: ");
    return [];
  }
}

async function loadNodes(view, signal) {
  try {
    const answer = await api.listNodes({ signal });
    view.nodeSelect.append(
      ...(answer.items || []).map((node) => el("option", { value: node.id }, `${node.name} (${node.status}, ${gpuSummary(node)})`)),
    );
  } catch (error) {
    if (!isAbort(error)) showError(view.nodeField, error, "Could not load your nodes: ");
  }
}

function gpuSummary(node) {
  if (!node.gpus || node.gpus.length === 0) return "no GPU";
  return node.gpus.map((gpu) => `${gpu.name} ${formatGpuMemory(gpu.memory_total_mb)}`).join(", ");
}

function renderResourceInfo(box, resource) {
  if (!resource) {
    setText(box, "Choose a resource to see what it runs.");
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

async function submit(view, resources, navigate) {
  clearErrors(view);
  let body;
  try {
    body = buildBody(view.form, resources);
  } catch (error) {
    if (!(error instanceof FieldErrors)) throw error;
    showErrors(view, "Some fields cannot be read; fix them and try again.", error.fields);
    return;
  }
  view.submit.disabled = true;
  setText(view.submit, "Creating…");
  try {
    const created = await api.createDeployment(body);
    navigate(`#/deployments/${encodeURIComponent(created.id)}`, {
      endpointKey: created.endpoint_key,
      endpointAuth: created.endpoint_auth,
      deployment: created,
    });
  } catch (error) {
    const fields = error instanceof ApiError ? error.fields : {};
    showErrors(view, `Not created: ${error.message}`, fields);
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

/** The request body: only what is filled in, plus the chosen form's own field. */
function buildBody(form, resources) {
  const value = (name) => form.elements.namedItem(name).value;
  const kind = value("form");
  const errors = {};
  const body = { name: value("name").trim(), target: value("target") };
  if (kind === "image") body.image = value("image").trim();
  if (kind === "resource") body.resource_slug = value("resource_slug");
  if (kind === "weights") {
    body.weights_source = value("weights_source").trim();
    if (value("framework") !== "auto") body.framework = value("framework");
    if (form.elements.namedItem("allow_insecure_http").checked) body.allow_insecure_http = true;
  }
  if (kind !== "resource" && value("command").trim()) {
    try {
      body.command = splitCommand(value("command"));
    } catch (error) {
      if (!(error instanceof ParseError)) throw error;
      errors.command = error.message;
    }
  }
  Object.assign(body, gpuFields(form, kind === "resource" ? chosenResource(form, resources) : null));
  if (value("budget_max_usd").trim()) body.budget_max_usd = value("budget_max_usd").trim(); // a decimal string: exact
  try {
    const env = parseEnvVars(value("env_vars"));
    if (Object.keys(env).length) body.env_vars = env;
  } catch (error) {
    if (!(error instanceof ParseError)) throw error;
    errors.env_vars = error.message;
  }
  const config = deployConfig(value("deploy_config.port").trim(), value("deploy_config.health_path").trim());
  if (config) body.deploy_config = config;
  if (body.target === "prism_node" && value("node_id")) body.node_id = value("node_id");
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

function clearErrors(view) {
  for (const node of view.form.querySelectorAll(".field-error")) node.remove();
  for (const control of view.form.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
    control.setAttribute("aria-describedby", control.dataset.hints || "");
  }
  setText(view.formError, "");
}

/** Shows each field's message after its field, the rest in #form-error; focuses the first. */
function showErrors(view, message, fields) {
  const unplaced = [];
  let serial = 0;
  for (const [path, text] of Object.entries(fields || {})) {
    const control = controlFor(view.form, path);
    if (!control) {
      unplaced.push(`${path}: ${text}`);
      continue;
    }
    serial += 1;
    const note = el("p", { class: "field-error", id: `field-error-${serial}`, dataset: { field: path } }, errorMessage(path, control, text));
    const anchor = lastErrorAfter(control) || fieldAnchor(control);
    anchor.after(note);
    control.setAttribute("aria-invalid", "true");
    const described = (control.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    control.setAttribute("aria-describedby", [note.id, ...described].join(" "));
  }
  setText(view.formError, unplaced.length ? `${message} (${unplaced.join("; ")})` : message);
  const firstInvalid = [...view.form.elements].find((control) => control.getAttribute("aria-invalid") === "true");
  if (firstInvalid) firstInvalid.focus();
  else view.formError.focus();
}

/** "env_vars.1A.[key]" on env_vars says which variable: "1A (name): …". */
function errorMessage(path, control, text) {
  if (path === control.name || !path.startsWith(`${control.name}.`)) return text;
  const detail = path.slice(control.name.length + 1).replace(/\.\[key\]$/, " (name)");
  return `${detail}: ${text}`;
}

/** The shown control an error path names: "env_vars.HF_TOKEN" -> env_vars, "command.2" -> command. */
function controlFor(form, path) {
  const parts = path.split(".");
  for (let length = parts.length; length > 0; length -= 1) {
    const control = form.elements.namedItem(parts.slice(0, length).join("."));
    if (control instanceof HTMLElement && !control.closest("[hidden]")) return control;
  }
  return null;
}

/** What an error follows: the control, or a checkbox's label (which comes after the box). */
function fieldAnchor(control) {
  return control.type === "checkbox" ? control.nextElementSibling : control;
}

function lastErrorAfter(control) {
  let node = fieldAnchor(control);
  let last = null;
  while (node.nextElementSibling && node.nextElementSibling.classList.contains("field-error")) {
    node = node.nextElementSibling;
    last = node;
  }
  return last;
}

function field(name, label, control, hint = "") {
  const id = `create-${name.replace(/\W/g, "-")}`;
  control.id = id;
  control.name = name;
  const hintNode = hint ? el("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintNode) {
    control.dataset.hints = hintNode.id;
    control.setAttribute("aria-describedby", hintNode.id);
  }
  return el("div", { class: "field" }, el("label", { for: id }, label), control, hintNode);
}

const input = (attrs = {}) => el("input", { type: "text", autocomplete: "off", spellcheck: "false", ...attrs });
const options = (pairs) => pairs.map(([value, label]) => el("option", { value }, label));

function buildForm() {
  const formError = el("p", { id: "form-error", class: "error-text", role: "alert", tabindex: "-1" });
  const resourceSelect = el("select"); // filled when the marketplace list arrives
  const resourceInfo = el("div", { id: "resource-info", class: "resource-info", "aria-live": "polite" }, "Loading the marketplace…");
  const resourceGroup = el("div", { dataset: { forms: "resource" } }, field("resource_slug", "Marketplace resource", resourceSelect), resourceInfo);
  resourceSelect.setAttribute("aria-describedby", "resource-info");
  resourceSelect.dataset.hints = "resource-info";
  const nodeSelect = el("select", {}, el("option", { value: "" }, "Any online node that fits"));
  const nodeField = field("node_id", "Node", nodeSelect, "Which of your nodes runs it.");
  const gpuCheckbox = el("input", { type: "checkbox", id: "create-gpu", name: "gpu", checked: true, "aria-describedby": "create-gpu-hint" });
  gpuCheckbox.dataset.hints = "create-gpu-hint";
  const gpuTypeField = field("gpu_type", "GPU type", input({ placeholder: "any" }), "For example A100, H100 or RTX4090. Required on cloud targets.");
  const submit = el("button", { type: "submit" }, "Create deployment");
  const form = el(
    "form",
    { id: "create-form", novalidate: true, class: "create-form" },
    formError,
    el(
      "fieldset",
      { class: "choices" },
      el("legend", {}, "What to run"),
      FORMS.map(([value, label], i) =>
        el("div", { class: "choice" }, el("input", { type: "radio", name: "form", id: `create-form-${value}`, value, checked: i === 0 }), el("label", { for: `create-form-${value}` }, label)),
      ),
    ),
    field("name", "Name", input(), "1-63 lowercase letters, digits and hyphens."),
    field("target", "Where it runs", el("select", {}, options(TARGETS))),
    nodeField,
    el("div", { dataset: { forms: "image" } }, field("image", "Image", input({ placeholder: "nginx:1.27" }), "An OCI image reference, e.g. ghcr.io/org/model:tag.")),
    resourceGroup,
    el(
      "div",
      { dataset: { forms: "weights" } },
      field("weights_source", "Weights", input({ placeholder: "hf://org/model" }), "hf://org/model[@revision], r2://bucket/path, https://… or an absolute path on your node."),
      el(
        "div",
        { class: "field checkbox" },
        el("input", { type: "checkbox", id: "create-allow_insecure_http", name: "allow_insecure_http" }),
        el("label", { for: "create-allow_insecure_http" }, "Allow an http:// weights URL (unencrypted)"),
      ),
      field("framework", "Framework", el("select", {}, options(FRAMEWORKS.map((f) => [f, f]))), "auto: the node picks the engine for the kind of model."),
    ),
    el(
      "div",
      { dataset: { forms: "image weights" } },
      field("command", "Command", input({ placeholder: "python3 serve.py --port {port}" }), "Split into arguments like a shell would (quotes group words), but never run through a shell. A JSON array works too. Empty: the image's or engine's own."),
    ),
    el(
      "fieldset",
      {},
      el("legend", {}, "Hardware and budget"),
      el("div", { class: "field checkbox" }, gpuCheckbox, el("label", { for: "create-gpu" }, "Needs a GPU"), el("p", { class: "hint", id: "create-gpu-hint" }, "Unchecked: runs on CPU.")),
      gpuTypeField,
      field("budget_max_usd", "Budget (USD)", input({ inputmode: "decimal", placeholder: "25" }), "Stops it once this much is spent. Required on cloud targets."),
    ),
    field("env_vars", "Environment variables", el("textarea", { rows: "4", spellcheck: "false" }), "One NAME=value a line. Values are sent once and never shown again."),
    el(
      "fieldset",
      {},
      el("legend", {}, "Serving"),
      field("deploy_config.port", "Port", input({ inputmode: "numeric" }), "The port the model listens on. Empty: a free port the node picks (8000 on cloud targets)."),
      field("deploy_config.health_path", "Health path", input({ placeholder: "/health" }), "Probed to tell whether it is healthy."),
    ),
    el("div", { class: "button-row" }, submit),
  );
  const root = el("div", { class: "page-create" }, el("h1", {}, "Create deployment"), el("section", { class: "panel", "aria-label": "Create deployment form" }, form));
  return { root, form, formError, resourceSelect, resourceInfo, resourceGroup, nodeSelect, nodeField, gpuTypeField, submit };
}
