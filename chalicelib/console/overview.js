// A deployment's endpoint and details panel, and the endpoint key shown once after a create.

import { copyText, el, setText, updateFacts } from "./dom.js";
import { formatDuration, formatTime, formatUsd, gpuText, targetLabel } from "./format.js";

/** The endpoint key from the create call: the API keeps only its hash, so this is its one showing. */
export function endpointKeyOnce(flash, id) {
  if (!flash.endpointKey) {
    // A retried create (same Idempotency-Key) gets the first answer without its key.
    const text =
      flash.endpointAuth === "key"
        ? [
            "Its endpoint key went to the first answer to this create and is not shown again. ",
            "For a new one: ",
            el("code", {}, `prism deploy rotate-key ${id}`),
            ".",
          ]
        : ["This endpoint has no endpoint key: ", authText(flash.endpointAuth)];
    return el(
      "section",
      { id: "endpoint-key-once", class: "panel notice", "aria-labelledby": "endpoint-key-heading" },
      el("h2", { id: "endpoint-key-heading" }, "Created"),
      el("p", {}, text),
    );
  }
  const status = el("span", { class: "visually-hidden", "aria-live": "polite" });
  const code = el("code", { id: "endpoint-key", class: "secret" }, flash.endpointKey);
  const copy = el("button", { id: "copy-endpoint-key", type: "button" }, "Copy key");
  copy.addEventListener("click", () => copyText(flash.endpointKey, code, copy, status));
  return el(
    "section",
    { id: "endpoint-key-once", class: "panel notice", "aria-labelledby": "endpoint-key-heading" },
    el("h2", { id: "endpoint-key-heading" }, "Endpoint key"),
    el(
      "p",
      {},
      el("strong", {}, "Copy it now: it will not be shown again. "),
      "Send it with each request as ",
      el("code", {}, "Authorization: Bearer <endpoint key>"),
      ". PRISM keeps only its hash.",
    ),
    el("div", { class: "copy-row" }, code, copy, status),
  );
}

function authText(auth) {
  if (auth === "key") return "requests need Authorization: Bearer <endpoint key>.";
  if (auth === "public") return "public: anyone who can reach the URL may call it.";
  if (auth === "none") return "unprotected: the image serves this URL itself and PRISM does not check a key.";
  return auth || "—";
}

export function buildOverviewPanel() {
  const url = el("code", { id: "endpoint-url" }, "No endpoint yet");
  const copyStatus = el("span", { class: "visually-hidden", "aria-live": "polite" });
  const copy = el(
    "button",
    { id: "copy-endpoint", type: "button", class: "button-secondary", disabled: true },
    "Copy URL",
  );
  const auth = el("p", { class: "muted" });
  const facts = el("dl", { class: "facts" });
  let currentUrl = null;
  copy.addEventListener("click", () => currentUrl && copyText(currentUrl, url, copy, copyStatus));
  const root = el(
    "section",
    { id: "overview", class: "panel", "aria-labelledby": "overview-heading" },
    el("h2", { id: "overview-heading" }, "Endpoint and details"),
    el("div", { class: "copy-row" }, url, copy, copyStatus),
    auth,
    facts,
  );
  return {
    root,
    update(deployment) {
      currentUrl = deployment.endpoint_url;
      setText(url, currentUrl || "No endpoint yet");
      copy.disabled = !currentUrl;
      setText(auth, `Endpoint access: ${authText(deployment.endpoint_auth)}`);
      updateFacts(facts, detailFacts(deployment));
    },
  };
}

function sourceText(d) {
  const source = d.image
    ? `image ${d.image}`
    : d.resource_slug
      ? `marketplace resource ${d.resource_slug}`
      : d.weights_source;
  return [source || "—", d.weights_revision ? ` (revision ${d.weights_revision})` : ""].join("");
}

function detailFacts(d) {
  const config = d.deploy_config || {};
  const engine = [
    d.framework,
    d.engine ? ` → ${d.engine}` : "",
    d.engine_reason ? ` (${d.engine_reason})` : "",
  ];
  const command = d.command && d.command.length ? el("code", {}, d.command.map(quoteArg).join(" ")) : null;
  return [
    ["ID", el("span", { class: "mono" }, d.id)],
    ["Target", targetLabel(d.target)],
    ["Source", sourceText(d)],
    d.resource_slug && d.weights_source ? ["Weights", d.weights_source] : null,
    ["Framework / engine", engine.join("")],
    ["Command", command || "— (the image's own)"],
    ["GPU", gpuText(d)],
    ["Node", d.node_id ? el("span", { class: "mono" }, d.node_id) : "—"],
    ["Port / health path", `${config.port ?? "picked by the node"} · ${config.health_path || "—"}`],
    ["Restart policy", restartText(config)],
    ["Restarts", lastExitText(d)],
    ["Env vars", d.env_var_names && d.env_var_names.length ? d.env_var_names.join(", ") : "—"],
    ["Price per hour", d.price_per_hour_usd === null ? "Free / not billed" : formatUsd(d.price_per_hour_usd)],
    ["Created", formatTime(d.created_at)],
    ["Updated", formatTime(d.updated_at)],
  ];
}

function quoteArg(arg) {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`;
}

function restartText(config) {
  if (!config.restart) return "—";
  const limit = config.restart === "on-failure" ? `, up to ${config.max_restarts}` : "";
  const unhealthy = config.unhealthy_timeout_s
    ? `; unhealthy for ${formatDuration(config.unhealthy_timeout_s)} counts as a failure`
    : "";
  return `${config.restart}${limit}${unhealthy}`;
}

function lastExitText(d) {
  if (!d.last_exit) return String(d.restarts ?? 0);
  const exit = d.last_exit;
  const code = exit.exit_code === null ? "" : `, exit code ${exit.exit_code}`;
  const message = exit.message ? `: ${exit.message}` : "";
  return `${d.restarts}; last: ${exit.cause}${code} at ${formatTime(exit.at)}${message}`;
}
