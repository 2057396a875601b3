// The create form's DOM, and its field errors: each beside the field it names, with
// aria-describedby and aria-invalid, focus on the first. Fields are named by the API's field paths.

import { el, setText } from "./dom.js";
import { targetLabel } from "./format.js";

const FORMS = [
  ["image", "A container image"],
  ["resource", "A marketplace resource"],
  ["weights", "Model weights and a command"],
];

/** The hint under a control, named by its aria-describedby (kept there when errors come and go). */
function hintFor(control, hint) {
  if (!hint) return null;
  const node = el("p", { class: "hint", id: `${control.id}-hint` }, hint);
  control.dataset.hints = node.id;
  control.setAttribute("aria-describedby", node.id);
  return node;
}

function field(name, label, control, hint = "") {
  control.id = `create-${name.replace(/\W/g, "-")}`;
  control.name = name;
  return el(
    "div",
    { class: "field" },
    el("label", { for: control.id }, label),
    control,
    hintFor(control, hint),
  );
}

function checkbox(name, label, { checked = false, hint = "" } = {}) {
  const box = el("input", { type: "checkbox", id: `create-${name}`, name, checked });
  return el("div", { class: "field checkbox" }, box, el("label", { for: box.id }, label), hintFor(box, hint));
}

const input = (attrs = {}) =>
  el("input", { type: "text", autocomplete: "off", spellcheck: "false", ...attrs });

/** Filled from the API's own description (fillChoices); empty, the API's default applies. */
const choiceSelect = () => el("select", { disabled: true }, el("option", { value: "" }, "Loading…"));

const targetOption = (value) => (targetLabel(value) === value ? value : `${targetLabel(value)} (${value})`);

/** choices: the API's {values, default} for framework and target, or null when not to be had. */
export function fillChoices(form, choices) {
  for (const [name, label] of [
    ["framework", (value) => value],
    ["target", targetOption],
  ]) {
    const select = form.elements.namedItem(name);
    const { values, default: chosen } = choices ? choices[name] : { values: [], default: null };
    select.replaceChildren(
      ...values.map((value) => el("option", { value, selected: value === chosen }, label(value))),
    );
    if (!values.length) select.append(el("option", { value: "" }, "The API's default"));
    select.disabled = !values.length;
  }
}

function formChoices() {
  return el(
    "fieldset",
    { class: "choices" },
    el("legend", {}, "What to run"),
    FORMS.map(([value, label], i) =>
      el(
        "div",
        { class: "choice" },
        el("input", { type: "radio", name: "form", id: `create-form-${value}`, value, checked: i === 0 }),
        el("label", { for: `create-form-${value}` }, label),
      ),
    ),
  );
}

function resourceFields() {
  const select = el("select"); // filled when the marketplace list arrives
  const info = el(
    "div",
    { id: "resource-info", class: "resource-info", "aria-live": "polite" },
    "Loading the marketplace…",
  );
  const group = el(
    "div",
    { dataset: { forms: "resource" } },
    field("resource_slug", "Marketplace resource", select),
    info,
  );
  select.setAttribute("aria-describedby", "resource-info");
  select.dataset.hints = "resource-info";
  return { group, select, info };
}

function weightsFields() {
  const sources =
    "hf://org/model[@revision], r2://bucket/path, s3://bucket/path, https://… " +
    "or an absolute path on your node.";
  return el(
    "div",
    { dataset: { forms: "weights" } },
    field("weights_source", "Weights", input({ placeholder: "hf://org/model" }), sources),
    checkbox("allow_insecure_http", "Allow an http:// weights URL (unencrypted)"),
    field("framework", "Framework", choiceSelect(), "auto: the node picks the engine for the kind of model."),
  );
}

function sourceFields() {
  const command = input({ placeholder: "python3 serve.py --port {port}" });
  const commandHint =
    "Split into arguments like a shell would (quotes group words), but never run through a shell. " +
    "A JSON array works too. Empty: the image's or engine's own.";
  const resource = resourceFields();
  const nodes = el(
    "div",
    {},
    el(
      "div",
      { dataset: { forms: "image" } },
      field(
        "image",
        "Image",
        input({ placeholder: "nginx:1.27" }),
        "An OCI image reference, e.g. ghcr.io/org/model:tag.",
      ),
    ),
    resource.group,
    weightsFields(),
    el("div", { dataset: { forms: "image weights" } }, field("command", "Command", command, commandHint)),
  );
  return { nodes, resource };
}

function hardwareFields() {
  const gpuTypeField = field(
    "gpu_type",
    "GPU type",
    input({ placeholder: "any" }),
    "For example A100, H100 or RTX4090. Required on cloud targets.",
  );
  const budget = input({ inputmode: "decimal", placeholder: "25" });
  const fieldset = el(
    "fieldset",
    {},
    el("legend", {}, "Hardware and budget"),
    checkbox("gpu", "Needs a GPU", { checked: true, hint: "Unchecked: runs on CPU." }),
    gpuTypeField,
    field(
      "budget_max_usd",
      "Budget (USD)",
      budget,
      "Stops it once this much is spent. Required on cloud targets.",
    ),
  );
  return { fieldset, gpuTypeField };
}

function servingFields() {
  const portHint =
    "The port the model listens on. Empty: a free port the node picks (8000 on cloud targets).";
  return el(
    "fieldset",
    {},
    el("legend", {}, "Serving"),
    field("deploy_config.port", "Port", input({ inputmode: "numeric" }), portHint),
    field(
      "deploy_config.health_path",
      "Health path",
      input({ placeholder: "/health" }),
      "Probed to tell whether it is healthy.",
    ),
  );
}

export function buildForm() {
  const formError = el("p", { id: "form-error", class: "error-text", role: "alert", tabindex: "-1" });
  const nodeSelect = el("select", {}, el("option", { value: "" }, "Any online node that fits"));
  const nodeField = field("node_id", "Node", nodeSelect, "Which of your nodes runs it.");
  const sources = sourceFields();
  const hardware = hardwareFields();
  const envHint = "One NAME=value a line. Values are sent once and never shown again.";
  const submit = el("button", { type: "submit" }, "Create deployment");
  const form = el(
    "form",
    { id: "create-form", novalidate: true, class: "create-form" },
    formError,
    formChoices(),
    field("name", "Name", input(), "1-63 lowercase letters, digits and hyphens."),
    field("target", "Where it runs", choiceSelect()),
    nodeField,
    sources.nodes,
    hardware.fieldset,
    field("env_vars", "Environment variables", el("textarea", { rows: "4", spellcheck: "false" }), envHint),
    servingFields(),
    el("div", { class: "button-row" }, submit),
  );
  return {
    form,
    formError,
    submit,
    nodeSelect,
    nodeField,
    gpuTypeField: hardware.gpuTypeField,
    resourceSelect: sources.resource.select,
    resourceInfo: sources.resource.info,
    resourceGroup: sources.resource.group,
  };
}

export function clearErrors(view) {
  for (const node of view.form.querySelectorAll(".field-error")) node.remove();
  for (const control of view.form.querySelectorAll("[aria-invalid]")) {
    control.removeAttribute("aria-invalid");
    control.setAttribute("aria-describedby", control.dataset.hints || "");
  }
  setText(view.formError, "");
}

/**
 * Each field's message after its field; #form-error counts them and adds only what no shown
 * field holds (message when there is nothing else). Focus goes to the first invalid field.
 */
export function showErrors(view, message, fields) {
  const placed = new Set();
  const unplaced = [];
  for (const [path, text] of Object.entries(fields || {})) {
    const control = controlFor(view.form, path);
    if (control) {
      markInvalid(control, path, text, placed.size + unplaced.length);
      placed.add(text);
    } else unplaced.push([path, text]);
  }
  // The API may repeat one message for fields not shown ("give exactly one of …").
  const rest = unplaced.filter(([, text]) => !placed.has(text)).map(([path, text]) => `${path}: ${text}`);
  const invalid = [...view.form.elements].filter(
    (control) => control.getAttribute("aria-invalid") === "true",
  );
  const count =
    invalid.length === 1 ? "1 field needs attention." : `${invalid.length} fields need attention.`;
  const summary = invalid.length ? [count, ...rest].join(" ") : message;
  setText(view.formError, `Not created: ${summary}`);
  if (invalid.length) invalid[0].focus();
  else view.formError.focus();
}

function markInvalid(control, path, text, serial) {
  const note = el(
    "p",
    { class: "field-error", id: `field-error-${serial}`, dataset: { field: path } },
    errorMessage(path, control, text),
  );
  (lastErrorAfter(control) || fieldAnchor(control)).after(note);
  control.setAttribute("aria-invalid", "true");
  const described = (control.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  control.setAttribute("aria-describedby", [note.id, ...described].join(" "));
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
