// One deployment (#/deployments/<id>): every 5 s one call each for the deployment, its health
// and its costs; logs on open and on request. Stopping asks first, in a dialog.

import { api, isAbort, isTerminal } from "./api.js";
import { buildCostPanel } from "./costs.js";
import { TARGET_LABELS, gpuText } from "./deployments.js";
import { copyText, definitionList, el, renderIfChanged, setText, showError, updateStatusBadge } from "./dom.js";
import { formatDuration, formatTime, formatUsd } from "./format.js";
import { buildHealthPanel, buildRequestMetricsPanel, buildTimelinePanel } from "./panels.js";
import { startPolling } from "./poll.js";

const REFRESH_MS = 5000;
const LOG_TAIL = 200;

export function mountDeployment(container, id, { flash } = {}) {
  const controller = new AbortController();
  const signal = controller.signal;
  const header = buildHeader(id);
  const overview = buildOverviewPanel();
  const timeline = buildTimelinePanel();
  const health = buildHealthPanel();
  const costs = buildCostPanel();
  const metrics = buildRequestMetricsPanel();
  const logs = buildLogsPanel(id, signal);
  const stop = buildStopDialog(id, header);
  container.append(
    el(
      "div",
      { class: "page-deployment" },
      header.root,
      flash ? endpointKeyOnce(flash) : null,
      overview.root,
      el("div", { class: "panel-grid" }, timeline.root, health.root),
      costs.root,
      metrics.root,
      logs.root,
      stop.dialog,
    ),
  );

  function render(deployment, now = new Date()) {
    header.update(deployment);
    overview.update(deployment);
    timeline.update(deployment, now);
    health.updateHistory(deployment, now);
    costs.updateDeployment(deployment);
    metrics.update(deployment);
    stop.update(deployment);
  }

  async function refreshDetail() {
    try {
      const deployment = await api.getDeployment(id, { signal });
      const now = new Date();
      render(deployment, now);
      showError(header.root, null);
      setText(header.lastRefresh, `Last refreshed ${formatTime(now)}`);
    } catch (error) {
      if (!isAbort(error)) showError(header.root, error, "Could not refresh this deployment: ");
    }
  }

  async function refreshHealth() {
    try {
      health.updateProbe(await api.health(id, { signal }));
      showError(health.root, null);
    } catch (error) {
      if (!isAbort(error)) showError(health.root, error, "Could not load health: ");
    }
  }

  async function refreshCosts() {
    try {
      costs.updateCosts(await api.costs(id, { limit: 500, signal }));
      showError(costs.root, null);
    } catch (error) {
      if (!isAbort(error)) showError(costs.root, error, "Could not load costs: ");
    }
  }

  // Just created: the create call's answer shows at once, before the first refresh.
  if (flash && flash.deployment && flash.deployment.id === id) render(flash.deployment);
  const poller = startPolling(() => Promise.all([refreshDetail(), refreshHealth(), refreshCosts()]), REFRESH_MS);
  stop.onStopped = () => poller.now();
  logs.load();

  return () => {
    poller.stop();
    controller.abort();
    costs.unmount();
    if (stop.dialog.open) stop.dialog.close();
  };
}

function buildHeader(id) {
  const heading = el("h1", {}, id);
  const badge = el("span", { id: "status", class: "status-badge", dataset: { status: "" } }, "loading");
  const message = el("p", { class: "status-message", hidden: true });
  const lastRefresh = el("p", { id: "last-refresh", class: "muted", "aria-live": "polite" }, "Loading…");
  const stopButton = el("button", { id: "stop", type: "button", class: "button-danger", hidden: true }, "Stop deployment");
  const root = el(
    "div",
    { class: "panel page-heading deployment-heading" },
    el("p", { class: "breadcrumb" }, el("a", { href: "#/deployments" }, "Deployments"), " / ", el("span", { class: "mono" }, id)),
    el("div", { class: "heading-row" }, heading, badge, stopButton),
    message,
    lastRefresh,
  );
  return {
    root,
    lastRefresh,
    stopButton,
    heading,
    update(deployment) {
      setText(heading, deployment.name);
      updateStatusBadge(badge, deployment.status);
      message.hidden = !deployment.status_message;
      setText(message, deployment.status_message || "");
    },
  };
}

/** The endpoint key from the create call: the API keeps only its hash, so this is its one showing. */
function endpointKeyOnce(flash) {
  const status = el("span", { class: "copy-status", "aria-live": "polite" });
  if (!flash.endpointKey) {
    return el(
      "section",
      { id: "endpoint-key-once", class: "panel notice", "aria-labelledby": "endpoint-key-heading" },
      el("h2", { id: "endpoint-key-heading" }, "Created"),
      el("p", {}, "This endpoint has no endpoint key: ", authText(flash.endpointAuth)),
    );
  }
  const code = el("code", { id: "endpoint-key", class: "secret" }, flash.endpointKey);
  const copy = el("button", { id: "copy-endpoint-key", type: "button" }, "Copy key");
  copy.addEventListener("click", () => copyText(flash.endpointKey, code, status));
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

function buildOverviewPanel() {
  const url = el("code", { id: "endpoint-url" }, "No endpoint yet");
  const copyStatus = el("span", { class: "copy-status", "aria-live": "polite" });
  const copy = el("button", { id: "copy-endpoint", type: "button", class: "button-secondary", disabled: true }, "Copy URL");
  const auth = el("p", { class: "muted" });
  const facts = el("div");
  let currentUrl = null;
  copy.addEventListener("click", () => currentUrl && copyText(currentUrl, url, copyStatus));
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
      renderIfChanged(facts, JSON.stringify(deployment, omitVolatile), () => definitionList(detailFacts(deployment)));
    },
  };
}

// Fields shown elsewhere that change on every poll; they would re-render the details needlessly.
const VOLATILE = new Set(["cost_accrued_usd", "budget_remaining_usd", "budget_seconds_left", "request_metrics", "bytes_done"]);
function omitVolatile(key, value) {
  return VOLATILE.has(key) ? undefined : value;
}

function detailFacts(d) {
  const config = d.deploy_config || {};
  const source = d.image ? `image ${d.image}` : d.resource_slug ? `marketplace resource ${d.resource_slug}` : d.weights_source;
  return [
    ["ID", el("span", { class: "mono" }, d.id)],
    ["Target", TARGET_LABELS[d.target] || d.target],
    ["Source", [source || "—", d.weights_revision ? ` (revision ${d.weights_revision})` : ""].join("")],
    d.resource_slug && d.weights_source ? ["Weights", d.weights_source] : null,
    ["Framework / engine", [d.framework, d.engine ? ` → ${d.engine}` : "", d.engine_reason ? ` (${d.engine_reason})` : ""].join("")],
    ["Command", d.command && d.command.length ? el("code", {}, d.command.map(quoteArg).join(" ")) : "— (the image's own)"],
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
  const unhealthy = config.unhealthy_timeout_s ? `; unhealthy for ${formatDuration(config.unhealthy_timeout_s)} counts as a failure` : "";
  return `${config.restart}${limit}${unhealthy}`;
}

function lastExitText(d) {
  if (!d.last_exit) return String(d.restarts ?? 0);
  const exit = d.last_exit;
  const code = exit.exit_code === null ? "" : `, exit code ${exit.exit_code}`;
  const message = exit.message ? `: ${exit.message}` : "";
  return `${d.restarts}; last: ${exit.cause}${code} at ${formatTime(exit.at)}${message}`;
}

function buildLogsPanel(id, signal) {
  const pre = el("pre", { id: "logs", class: "logs", tabindex: "0", "aria-label": "Log lines" }, "Loading…");
  const status = el("span", { class: "muted", "aria-live": "polite" });
  const button = el("button", { id: "refresh-logs", type: "button", class: "button-secondary" }, "Refresh logs");
  const root = el(
    "section",
    { id: "logs-panel", class: "panel", "aria-labelledby": "logs-heading" },
    el("div", { class: "heading-row" }, el("h2", { id: "logs-heading" }, `Logs (last ${LOG_TAIL} lines)`), button, status),
    pre,
  );

  let latest = 0; // a click while a load runs starts another; only the newest answer shows

  async function load() {
    const mine = ++latest;
    root.setAttribute("aria-busy", "true");
    setText(status, "Loading…");
    try {
      const answer = await api.logs(id, { tail: LOG_TAIL, signal });
      if (mine !== latest) return;
      const lines = answer.lines || [];
      setText(pre, lines.length ? lines.join("\n") : "No log lines yet.");
      pre.scrollTop = pre.scrollHeight; // the newest lines are the ones wanted
      setText(status, `Loaded ${formatTime(new Date())}`);
      showError(root, null);
    } catch (error) {
      if (isAbort(error) || mine !== latest) return;
      setText(status, "");
      if (pre.textContent === "Loading…") setText(pre, "No logs to show.");
      showError(root, error, "Could not load logs: ");
    } finally {
      if (mine === latest) root.removeAttribute("aria-busy");
    }
  }

  button.addEventListener("click", load);
  return { root, load };
}

function buildStopDialog(id, header) {
  const error = el("p", { class: "error-text", role: "alert" });
  const confirm = el("button", { id: "stop-confirm", type: "button", class: "button-danger" }, "Stop it");
  const cancel = el("button", { id: "stop-cancel", type: "button", class: "button-secondary" }, "Cancel");
  const question = el("p", { id: "stop-dialog-text" }, "Stop this deployment?");
  const dialog = el(
    "dialog",
    { id: "stop-dialog", "aria-labelledby": "stop-dialog-heading", "aria-describedby": "stop-dialog-text" },
    el("h2", { id: "stop-dialog-heading" }, "Stop deployment"),
    question,
    error,
    el("div", { class: "button-row" }, cancel, confirm),
  );
  const self = { dialog, onStopped: () => {}, update };
  let name = id;

  function update(deployment) {
    name = deployment.name;
    const terminal = isTerminal(deployment.status);
    header.stopButton.hidden = terminal;
    header.stopButton.disabled = terminal || deployment.status === "stopping";
    setText(header.stopButton, deployment.status === "stopping" ? "Stopping…" : "Stop deployment");
    if (terminal && dialog.open) dialog.close();
  }

  header.stopButton.addEventListener("click", () => {
    setText(question, `Stop ${name}? It stops serving requests and stops billing. This cannot be undone.`);
    setText(error, "");
    confirm.disabled = false;
    dialog.showModal();
    cancel.focus(); // the safe choice is the default one
  });
  cancel.addEventListener("click", () => dialog.close());
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    setText(error, "");
    try {
      await api.stopDeployment(id);
      dialog.close();
      self.onStopped();
    } catch (failure) {
      setText(error, `Could not stop it: ${failure.message}`);
      confirm.disabled = false;
    }
  });
  // Escape closes it natively; either way focus goes back where the reader was.
  dialog.addEventListener("close", () => {
    const target = header.stopButton.hidden || header.stopButton.disabled ? header.heading : header.stopButton;
    if (target === header.heading) header.heading.tabIndex = -1;
    if (document.body.contains(target)) target.focus();
  });
  return self;
}
