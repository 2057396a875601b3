// The deployment page's read-only panels: status timeline, weights pull progress, health and
// request metrics. Each builds its DOM once and updates it from the latest poll.

import { api, isTerminal } from "./api.js";
import { el, renderIfChanged, setText, showError, statusBadge, updateFacts } from "./dom.js";
import {
  formatBytes,
  formatCount,
  formatDuration,
  formatMs,
  formatRelative,
  formatTime,
  secondsBetween,
  toNumber,
} from "./format.js";

const NO_HISTORY = "No history kept for this deployment.";

export function buildTimelinePanel() {
  const list = el("ol", { id: "timeline", class: "timeline" });
  const note = el("p", { class: "muted", hidden: true }, NO_HISTORY);
  const pull = buildPullProgress();
  const root = el(
    "section",
    { id: "timeline-panel", class: "panel", "aria-labelledby": "timeline-heading" },
    el("h2", { id: "timeline-heading" }, "Status timeline"),
    pull.root,
    list,
    note,
  );
  return {
    root,
    update(deployment, now = new Date()) {
      pull.update(deployment, now);
      renderTimeline(list, note, deployment, now);
    },
  };
}

function renderTimeline(list, note, deployment, now) {
  const history = deployment.status_history || [];
  const signature = JSON.stringify([history, deployment.failure_reason, deployment.failure_message]);
  renderIfChanged(list, signature, () => history.map((entry, i) => timelineItem(entry, i, deployment)));
  note.hidden = history.length > 0;
  // Only the durations move between polls; the rest stays put (and selectable).
  [...list.children].forEach((item, i) =>
    setText(item.querySelector(".duration"), durationText(history, i, now)),
  );
}

function timelineItem(entry, index, deployment) {
  const item = el(
    "li",
    { dataset: { status: entry.status } },
    statusBadge(entry.status),
    el("span", { class: "began" }, "began ", el("time", { datetime: entry.at }, formatTime(entry.at))),
    el("span", { class: "duration" }),
  );
  // The failure also shows beside the status at the top, which holds even with no history.
  const last = index === deployment.status_history.length - 1;
  if (entry.status === "failed" && last && (deployment.failure_reason || deployment.failure_message)) {
    const message = deployment.failure_message ? `: ${deployment.failure_message}` : "";
    item.append(
      el("p", { class: "failure" }, el("strong", {}, deployment.failure_reason || "failed"), message),
    );
  }
  return item;
}

function durationText(history, index, now) {
  const entry = history[index];
  const next = history[index + 1];
  if (next) return `for ${formatDuration(secondsBetween(entry.at, next.at))}`;
  if (isTerminal(entry.status)) return "(final)";
  return `${formatDuration(secondsBetween(entry.at, now))} so far`;
}

const STALLED_AFTER_MS = 15_000; // no new bytes for this long reads as a stalled pull

/** Weights pull: bytes and a rate measured from bytes_done between successive polls. */
function buildPullProgress() {
  const progress = el("progress", {
    id: "pull-progress",
    "aria-labelledby": "pull-label",
    "aria-describedby": "pull-progress-text",
  });
  const text = el("span", { id: "pull-progress-text" });
  const root = el(
    "div",
    { class: "pull", hidden: true },
    el("span", { id: "pull-label", class: "pull-label" }, "Pulling weights"),
    progress,
    text,
  );
  let sample = null; // the last {bytes, at} where bytes_done changed
  let rate = null;

  function measure(bytes, now) {
    if (!sample || bytes < sample.bytes) sample = { bytes, at: now };
    else if (bytes > sample.bytes) {
      rate = (bytes - sample.bytes) / Math.max(0.001, (now - sample.at) / 1000);
      sample = { bytes, at: now };
    } else if (now - sample.at > STALLED_AFTER_MS) rate = 0;
  }

  function update(deployment, now) {
    const done = toNumber(deployment.bytes_done);
    const total = toNumber(deployment.bytes_total);
    const pulling = deployment.status === "pulling" && (total !== null || done !== null);
    root.hidden = !pulling;
    if (!pulling) {
      sample = null;
      rate = null;
      return;
    }
    const bytes = done ?? 0;
    measure(bytes, now);
    if (total !== null && total > 0) {
      progress.max = total;
      progress.value = Math.min(bytes, total);
    } else progress.removeAttribute("value"); // indeterminate: the size is not known yet
    const rateText = rate === null ? "measuring…" : `${formatBytes(rate)}/s`;
    const sizeText =
      total !== null ? `${formatBytes(bytes)} of ${formatBytes(total)}` : `${formatBytes(bytes)} so far`;
    setText(text, `${sizeText} · ${rateText}`);
  }

  return { root, update };
}

/** Health as last recorded (from the deployment, no extra call) and a live probe on request. */
export function buildHealthPanel(id) {
  const recorded = el("dl", { class: "facts" });
  const probeButton = el(
    "button",
    { id: "probe-health", type: "button", class: "button-secondary" },
    "Probe now",
  );
  const probeResult = el("p", { id: "probe-result", role: "status" });
  const history = el("ul", { id: "health-history", class: "health-history" });
  const root = el(
    "section",
    { id: "health", class: "panel", "aria-labelledby": "health-heading" },
    el("div", { class: "heading-row" }, el("h2", { id: "health-heading" }, "Health"), probeButton),
    recorded,
    probeResult,
    el("h3", {}, "Serving history"),
    history,
  );
  probeButton.addEventListener("click", async () => {
    probeButton.disabled = true;
    setText(probeResult, "Probing…");
    try {
      setText(probeResult, probeText(await api.probeHealth(id)));
      showError(root, null);
    } catch (error) {
      setText(probeResult, "");
      showError(root, error, "Could not probe it: ");
    } finally {
      probeButton.disabled = false;
    }
  });
  return {
    root,
    update(deployment, now = new Date()) {
      updateFacts(recorded, lastProbeFacts(deployment.last_probe || {}, now));
      renderHealthHistory(history, deployment.status_history || [], now);
    },
  };
}

function healthState(probe) {
  if (probe.healthy === null || probe.healthy === undefined) return "unknown";
  return probe.healthy ? "healthy" : "unhealthy";
}

const HEALTH_TEXT = { healthy: "Healthy", unhealthy: "Unhealthy", unknown: "Unknown" };

function lastProbeFacts(probe, now) {
  const state = healthState(probe);
  const checked = probe.checked_at
    ? `${formatTime(probe.checked_at)} (${formatRelative(probe.checked_at, now)})`
    : "Never";
  return [
    ["Last probe", el("span", { class: "health-state", dataset: { health: state } }, HEALTH_TEXT[state])],
    ["Consecutive failures", formatCount(probe.consecutive_failures)],
    ["Latency", formatMs(probe.latency_ms)],
    ["Checked at", checked],
  ];
}

/** The /health answer: a fresh probe through the node, or (stale) the last known state. */
function probeText(health) {
  const state = HEALTH_TEXT[healthState(health)];
  const latency = toNumber(health.latency_ms) === null ? "" : `, ${formatMs(health.latency_ms)}`;
  const failures = health.consecutive_failures
    ? `, ${formatCount(health.consecutive_failures)} failures in a row`
    : "";
  if (!health.stale) return `Probed at ${formatTime(health.checked_at)}: ${state}${latency}${failures}.`;
  const checked = health.checked_at ? `checked ${formatTime(health.checked_at)}` : "never checked";
  return `No fresh probe (no node answered for it): the last known state is ${state}, ${checked}.`;
}

/** The running and unhealthy periods, from the status history: how it has served. */
function servingPeriods(history, now) {
  const periods = [];
  history.forEach((entry, i) => {
    if (entry.status !== "running" && entry.status !== "unhealthy") return;
    const next = history[i + 1];
    const label = entry.status === "running" ? "Healthy (running)" : "Unhealthy";
    const length = formatDuration(secondsBetween(entry.at, next ? next.at : now));
    const span = next ? `for ${length}` : `${length} so far`;
    periods.push({ status: entry.status, text: `${label} from ${formatTime(entry.at)}, ${span}` });
  });
  return periods;
}

function renderHealthHistory(list, history, now) {
  let items = servingPeriods(history, now);
  if (history.length === 0) items = [{ status: "", text: NO_HISTORY }];
  else if (items.length === 0)
    items = [{ status: "", text: "Not served yet: no running or unhealthy period." }];
  // Item by item: a period that did not change keeps its text node (and the reader's selection).
  while (list.children.length > items.length) list.lastElementChild.remove();
  while (list.children.length < items.length) list.append(el("li"));
  items.forEach(({ status, text }, i) => {
    const item = list.children[i];
    if (!status) delete item.dataset.status;
    else if (item.dataset.status !== status) item.dataset.status = status;
    item.classList.toggle("muted", !status);
    setText(item, text);
  });
}

export function buildRequestMetricsPanel() {
  const facts = el("dl", { class: "facts", hidden: true });
  const none = el("p", { class: "muted" }, "Loading…");
  const root = el(
    "section",
    { id: "request-metrics", class: "panel", "aria-labelledby": "metrics-heading" },
    el("h2", { id: "metrics-heading" }, "Requests"),
    facts,
    none,
  );
  return {
    root,
    update(deployment) {
      const metrics = deployment.request_metrics;
      facts.hidden = !metrics;
      none.hidden = Boolean(metrics);
      if (metrics) updateFacts(facts, metricFacts(metrics));
      else setText(none, "No requests reported");
    },
  };
}

function metricFacts(m) {
  const windowText = `over the last ${formatDuration(toNumber(m.window_s))}`;
  const byStatus = [
    `2xx ${formatCount(m.status_2xx)}`,
    `3xx ${formatCount(m.status_3xx)}`,
    `4xx ${formatCount(m.status_4xx)}`,
    `5xx ${formatCount(m.status_5xx)}`,
  ].join(" · ");
  const latency = [m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms].map(formatMs).join(" / ");
  return [
    ["Requests", formatCount(m.requests_total)],
    ["By status", byStatus],
    ["Refused (no or wrong endpoint key)", formatCount(m.unauthorized)],
    ["In flight", formatCount(m.in_flight)],
    ["Latency p50 / p95 / p99", `${latency} (${windowText})`],
    ["Reported at", formatTime(m.reported_at)],
  ];
}
