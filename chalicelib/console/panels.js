// The deployment page's read-only panels: status timeline, weights pull progress, health and
// request metrics. Each builds its DOM once and updates it from the latest poll.

import { isTerminal } from "./api.js";
import { definitionList, el, renderIfChanged, setText, statusBadge } from "./dom.js";
import {
  formatCount,
  formatDuration,
  formatMegabytes,
  formatMs,
  formatRelative,
  formatTime,
  secondsBetween,
  toNumber,
} from "./format.js";

// The API keeps the first status and the newest 19 (STATUS_HISTORY_MAX in the store).
const HISTORY_MAX = 20;

export function buildTimelinePanel() {
  const list = el("ol", { id: "timeline", class: "timeline" });
  const note = el("p", { class: "muted", hidden: true });
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
  setText(note, "No status history was kept for this deployment (it predates the history).");
  // Only the durations move between polls; the rest stays put (and selectable).
  [...list.children].forEach((item, i) => setText(item.querySelector(".duration"), durationText(history, i, now)));
}

function timelineItem(entry, index, deployment) {
  const item = el(
    "li",
    { dataset: { status: entry.status } },
    statusBadge(entry.status),
    el("span", { class: "began" }, "began ", el("time", { datetime: entry.at }, formatTime(entry.at))),
    el("span", { class: "duration" }),
  );
  const isLast = index === deployment.status_history.length - 1;
  if (entry.status === "failed" && isLast && (deployment.failure_reason || deployment.failure_message)) {
    item.append(
      el(
        "p",
        { class: "failure" },
        el("strong", {}, deployment.failure_reason || "failed"),
        deployment.failure_message ? `: ${deployment.failure_message}` : "",
      ),
    );
  }
  return item;
}

function durationText(history, index, now) {
  const entry = history[index];
  const next = history[index + 1];
  if (next) {
    const spent = formatDuration(secondsBetween(entry.at, next.at));
    // Between the first and the newest 19, older changes may have been dropped.
    return index === 0 && history.length >= HISTORY_MAX ? `until the next shown change (${spent}; some changes not kept)` : `for ${spent}`;
  }
  if (isTerminal(entry.status)) return "(final)";
  return `${formatDuration(secondsBetween(entry.at, now))} so far`;
}

/** Weights pull: bytes and a rate measured from bytes_done between successive polls. */
function buildPullProgress() {
  const progress = el("progress", { id: "pull-progress", "aria-labelledby": "pull-label", "aria-describedby": "pull-progress-text" });
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
    if (!sample || bytes < sample.bytes) sample = { bytes, at: now };
    else if (bytes > sample.bytes) {
      rate = (bytes - sample.bytes) / Math.max(0.001, (now - sample.at) / 1000);
      sample = { bytes, at: now };
    } else if (now - sample.at > 15000) rate = 0; // no progress for a while: stalled
    if (total !== null && total > 0) {
      progress.max = total;
      progress.value = Math.min(bytes, total);
    } else progress.removeAttribute("value"); // indeterminate: the size is not known yet
    const rateText = rate === null ? "measuring…" : `${(rate / 1e6).toFixed(1)} MB/s`;
    const sizeText = total !== null ? `${formatMegabytes(bytes)} of ${formatMegabytes(total)}` : `${formatMegabytes(bytes)} so far`;
    setText(text, `${sizeText} · ${rateText}`);
  }

  return { root, update };
}

export function buildHealthPanel() {
  const current = el("div", { class: "health-current" }, el("p", { class: "muted" }, "Loading…"));
  const history = el("ul", { id: "health-history", class: "health-history" });
  const root = el(
    "section",
    { id: "health", class: "panel", "aria-labelledby": "health-heading" },
    el("h2", { id: "health-heading" }, "Health"),
    current,
    el("h3", {}, "Serving history"),
    history,
  );
  return {
    root,
    updateProbe(health) {
      const signature = JSON.stringify(health);
      renderIfChanged(current, signature, () => probeFacts(health));
    },
    updateHistory(deployment, now = new Date()) {
      renderHealthHistory(history, deployment.status_history || [], now);
    },
  };
}

function probeFacts(health) {
  const state = health.healthy === null || health.healthy === undefined ? "unknown" : health.healthy ? "healthy" : "unhealthy";
  const stateText = { healthy: "Healthy", unhealthy: "Unhealthy", unknown: "Unknown" }[state];
  const checked = health.checked_at
    ? `${formatTime(health.checked_at)} (${formatRelative(health.checked_at)})`
    : "Never";
  return definitionList([
    ["Current probe", el("span", { class: "health-state", dataset: { health: state } }, stateText)],
    ["Consecutive failures", formatCount(health.consecutive_failures)],
    ["Latency", formatMs(health.latency_ms)],
    ["Checked at", checked],
    ["Fresh", health.stale ? "No: the last known state, not a fresh probe" : "Yes"],
  ]);
}

/** The running and unhealthy periods, from the status history: how it has served. */
function renderHealthHistory(list, history, now) {
  const periods = [];
  history.forEach((entry, i) => {
    if (entry.status !== "running" && entry.status !== "unhealthy") return;
    const next = history[i + 1];
    periods.push({ status: entry.status, from: entry.at, to: next ? next.at : null });
  });
  const items = periods.map((period) => {
    const label = period.status === "running" ? "Healthy (running)" : "Unhealthy";
    const length = formatDuration(secondsBetween(period.from, period.to || now));
    const span = period.to ? `for ${length}` : `${length} so far`;
    return [period.status, `${label} from ${formatTime(period.from)}, ${span}`];
  });
  const signature = JSON.stringify(items);
  renderIfChanged(list, signature, () =>
    items.length
      ? items.map(([status, text]) => el("li", { dataset: { status } }, text))
      : el("li", { class: "muted" }, "Not served yet: no running or unhealthy period."),
  );
}

export function buildRequestMetricsPanel() {
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const root = el(
    "section",
    { id: "request-metrics", class: "panel", "aria-labelledby": "metrics-heading" },
    el("h2", { id: "metrics-heading" }, "Requests"),
    body,
  );
  return {
    root,
    update(deployment) {
      const metrics = deployment.request_metrics;
      renderIfChanged(body, JSON.stringify(metrics), () =>
        metrics ? metricFacts(metrics) : el("p", { class: "muted" }, "No requests reported"),
      );
    },
  };
}

function metricFacts(m) {
  const windowText = `over the last ${formatDuration(toNumber(m.window_s))}`;
  return definitionList([
    ["Requests", formatCount(m.requests_total)],
    ["By status", `2xx ${formatCount(m.status_2xx)} · 3xx ${formatCount(m.status_3xx)} · 4xx ${formatCount(m.status_4xx)} · 5xx ${formatCount(m.status_5xx)}`],
    ["Refused (no or wrong endpoint key)", formatCount(m.unauthorized)],
    ["In flight", formatCount(m.in_flight)],
    ["Latency p50 / p95 / p99", `${formatMs(m.latency_p50_ms)} / ${formatMs(m.latency_p95_ms)} / ${formatMs(m.latency_p99_ms)} (${windowText})`],
    ["Reported at", formatTime(m.reported_at)],
  ]);
}
