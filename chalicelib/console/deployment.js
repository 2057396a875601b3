// One deployment (#/deployments/<id>): every 5 s the deployment itself, then the newest of its
// costs; logs on open and on request, a live health probe only on request. Polling ends for
// good once it has ended (after one last look at its costs) or when it is not found. Stopping
// asks first, in a dialog.

import { api, isAbort, isTerminal } from "./api.js";
import { buildCostPanel } from "./costs.js";
import { el, renderIfChanged, setText, showError, updateStatusBadge } from "./dom.js";
import { formatTime } from "./format.js";
import { buildLogsPanel } from "./logs.js";
import { buildOverviewPanel, endpointKeyOnce } from "./overview.js";
import { buildHealthPanel, buildRequestMetricsPanel, buildTimelinePanel } from "./panels.js";
import { REFRESH_MS, startPolling } from "./poll.js";

export function mountDeployment(container, id, { flash } = {}) {
  const controller = new AbortController();
  const signal = controller.signal;
  const view = buildDeploymentView(id, signal, flash);
  container.append(view.root);
  const render = (deployment, now = new Date()) => view.parts.forEach((part) => part.update(deployment, now));
  let logsAsked = false;

  async function refresh() {
    let deployment;
    try {
      deployment = await api.getDeployment(id, { signal });
    } catch (error) {
      if (isAbort(error)) return;
      if (error.status === 404) showNotFound();
      else showError(view.header.root, error, "Could not refresh this deployment: ");
      return;
    }
    const now = new Date();
    render(deployment, now);
    showError(view.header.root, null);
    if (!logsAsked) view.logs.load(); // once it is known to exist: no logs call for a 404
    logsAsked = true;
    // Once it has ended nothing changes any more: its last costs, then no more polls.
    const ended = (await view.costs.refresh()) && isTerminal(deployment.status);
    if (ended) poller.stop();
    const refreshed = `Last refreshed ${formatTime(now)}`;
    setText(
      view.header.lastRefresh,
      ended ? `${refreshed}. It has ended, so it is not refreshed any more.` : refreshed,
    );
  }

  function stopEverything() {
    poller.stop();
    controller.abort();
    view.costs.unmount();
    if (view.stop.dialog.open) view.stop.dialog.close();
  }

  /** One view instead of an error per panel; no more polls for what does not exist. */
  function showNotFound() {
    stopEverything();
    const hadFocus = container.contains(document.activeElement);
    const notFound = notFoundView(id);
    container.replaceChildren(notFound);
    if (hadFocus) notFound.querySelector("h1").focus();
  }

  // Just created: the create call's answer shows at once, before the first refresh.
  if (flash && flash.deployment && flash.deployment.id === id) render(flash.deployment);
  const poller = startPolling(refresh, REFRESH_MS.deployment);
  view.stop.onStopped = (deployment) => {
    render(deployment); // the DELETE's answer is the deployment: shown before the dialog closes
    poller.now();
  };
  return stopEverything;
}

function buildDeploymentView(id, signal, flash) {
  const header = buildHeader(id);
  const overview = buildOverviewPanel();
  const timeline = buildTimelinePanel();
  const health = buildHealthPanel(id);
  const costs = buildCostPanel(id, signal);
  const metrics = buildRequestMetricsPanel();
  const logs = buildLogsPanel(id, signal);
  const stop = buildStopDialog(id, header);
  const root = el(
    "div",
    { class: "page-deployment" },
    header.root,
    flash ? endpointKeyOnce(flash, id) : null,
    overview.root,
    el("div", { class: "panel-grid" }, timeline.root, health.root),
    costs.root,
    metrics.root,
    logs.root,
    stop.dialog,
  );
  return {
    root,
    header,
    costs,
    logs,
    stop,
    parts: [header, overview, timeline, health, costs, metrics, stop],
  };
}

function notFoundView(id) {
  return el(
    "section",
    { id: "not-found", class: "panel", "aria-labelledby": "not-found-heading" },
    el("h1", { id: "not-found-heading", tabindex: "-1" }, "Deployment not found"),
    el("p", {}, "No deployment ", el("code", {}, id), " exists for this API key: it may have been mistyped."),
    el("p", {}, el("a", { href: "#/deployments" }, "Back to the deployments")),
  );
}

function buildHeader(id) {
  const heading = el("h1", {}, id);
  // Focusable by script: where focus goes after a stop, since the Stop button goes away.
  const badge = el(
    "span",
    { id: "status", class: "status-badge", tabindex: "-1", dataset: { status: "" } },
    "loading",
  );
  const failure = el("p", { id: "failure", class: "failure", hidden: true });
  const message = el("p", { class: "status-message", hidden: true });
  const lastRefresh = el("p", { id: "last-refresh", class: "muted" }, "Loading…");
  // Polite and out of sight: a status change is announced, the timed refreshes are not.
  const announcer = el("p", { class: "visually-hidden", "aria-live": "polite" });
  const stopButton = el(
    "button",
    { id: "stop", type: "button", class: "button-danger", hidden: true },
    "Stop deployment",
  );
  const root = el(
    "div",
    { class: "panel page-heading deployment-heading" },
    el(
      "p",
      { class: "breadcrumb" },
      el("a", { href: "#/deployments" }, "Deployments"),
      " / ",
      el("span", { class: "mono" }, id),
    ),
    el("div", { class: "heading-row" }, heading, badge, stopButton),
    failure,
    message,
    lastRefresh,
    announcer,
  );
  let shownStatus = null;
  function update(deployment) {
    setText(heading, deployment.name);
    updateStatusBadge(badge, deployment.status);
    if (shownStatus !== null && shownStatus !== deployment.status) {
      setText(announcer, `Status: ${deployment.status}`);
    }
    shownStatus = deployment.status;
    renderFailure(failure, deployment);
    message.hidden = !deployment.status_message;
    setText(message, deployment.status_message || "");
  }
  return { root, lastRefresh, stopButton, badge, update };
}

/** Why it failed, beside its status: the timeline may hold no history to tell it. */
function renderFailure(node, deployment) {
  const { status, failure_reason: reason, failure_message: text } = deployment;
  node.hidden = status !== "failed" && !reason && !text;
  renderIfChanged(node, JSON.stringify([node.hidden, reason, text]), () => {
    if (node.hidden) return [];
    if (!reason && !text) return ["It failed; no reason was recorded."];
    return [el("strong", {}, reason || "failed"), text ? `: ${text}` : ""];
  });
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
  let stopSent = false;

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
      const deployment = await api.stopDeployment(id);
      stopSent = true;
      self.onStopped(deployment);
      dialog.close();
    } catch (failure) {
      setText(error, `Could not stop it: ${failure.message}`);
      confirm.disabled = false;
    }
  });
  // Escape closes it natively. Cancelled: back to the Stop button; stopped: to the status,
  // which stays (the button is disabled or hidden by then).
  dialog.addEventListener("close", () => {
    const button = header.stopButton;
    const target = stopSent || button.hidden || button.disabled ? header.badge : button;
    stopSent = false;
    if (target.isConnected) target.focus();
  });
  return self;
}
