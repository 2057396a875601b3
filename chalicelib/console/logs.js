// A deployment's log lines, read through its node: loaded on open and on the button, never
// polled (each load is a round trip to the node).

import { api, isAbort, PAGE_SIZES } from "./api.js";
import { el, setText, showError } from "./dom.js";
import { formatTime } from "./format.js";

const NO_LOGS = "No logs to show.";
const LOADING = "Loading…";

export function buildLogsPanel(id, signal) {
  const view = buildLogsView();
  const { root, button } = view;

  async function load() {
    const hadFocus = document.activeElement === button;
    button.disabled = true; // one load at a time
    root.setAttribute("aria-busy", "true");
    setText(view.status, LOADING);
    try {
      showLines(view, (await api.logs(id, { signal })).lines || []);
    } catch (error) {
      if (!isAbort(error)) showFailure(view, error);
    } finally {
      button.disabled = false;
      root.removeAttribute("aria-busy");
      // Disabling the button may drop its focus to the page; the reader who pressed it gets it back.
      const focusLost = !document.activeElement || document.activeElement === document.body;
      if (hadFocus && focusLost && root.isConnected) button.focus();
    }
  }

  button.addEventListener("click", load);
  return { root, load };
}

function buildLogsView() {
  const pre = el("pre", { id: "logs", class: "logs", tabindex: "0", "aria-label": "Log lines" }, LOADING);
  const status = el("span", { class: "muted", "aria-live": "polite" });
  // Why there are no logs when that is expected (not placed yet, an image on a cloud instance).
  const info = el("p", { id: "logs-info", class: "info-text", hidden: true });
  const button = el(
    "button",
    { id: "refresh-logs", type: "button", class: "button-secondary" },
    "Refresh logs",
  );
  const root = el(
    "section",
    { id: "logs-panel", class: "panel", "aria-labelledby": "logs-heading" },
    el(
      "div",
      { class: "heading-row" },
      el("h2", { id: "logs-heading" }, `Logs (last ${PAGE_SIZES.logLines} lines)`),
      button,
      status,
    ),
    info,
    pre,
  );
  return { root, pre, status, info, button };
}

function showLines(view, lines) {
  setText(view.pre, lines.length ? lines.join("\n") : "No log lines yet.");
  view.pre.scrollTop = view.pre.scrollHeight; // the newest lines are the ones wanted
  setText(view.status, `Loaded ${formatTime(new Date())}`);
  view.info.hidden = true;
  showError(view.root, null);
}

function showFailure(view, error) {
  setText(view.status, "");
  const expected = error.status === 409; // the API says why this deployment has no logs to read
  if (expected || view.pre.textContent === LOADING) setText(view.pre, NO_LOGS);
  view.info.hidden = !expected;
  setText(view.info, expected ? `No logs here: ${error.message}.` : "");
  showError(view.root, expected ? null : error, "Could not load logs: ");
}
