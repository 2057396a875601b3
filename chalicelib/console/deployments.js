// The deployments list (#/deployments?status=running&page=2): one list call per refresh (the call
// `prism deploy list` makes), rows updated in place by id so polling never loses the reader's
// focus or selection. The filter and page live in the URL, so Back from a deployment returns
// to them; the page tokens that reach page 2 and on are kept in the tab's sessionStorage.

import { api, ALL_STATUSES, isAbort } from "./api.js";
import { dataTable, el, renderIfChanged, setText, showError, statusBadge } from "./dom.js";
import {
  formatAge,
  formatDuration,
  formatTime,
  formatUsd,
  gpuText,
  secondsBetween,
  targetLabel,
  toNumber,
} from "./format.js";
import { REFRESH_MS, startPolling } from "./poll.js";

const PAGE_TOKENS_STORAGE = "prism.deploymentPages"; // {status, tokens}: tokens[n - 2] opens page n

const COLUMNS = [
  ["name", "Name"],
  ["target", "Target"],
  ["status", "Status"],
  ["gpu", "GPU"],
  ["endpoint", "Endpoint"],
  ["cost", "Cost so far"],
  ["budget", "Budget left"],
  ["age", "Age"],
];

/** Where the list is: the status filter ("" for all), the page number and the page tokens. */
function listPosition(query) {
  const status = ALL_STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const asked = Number.parseInt(query.get("page") || "1", 10);
  let stored = {};
  try {
    stored = JSON.parse(sessionStorage.getItem(PAGE_TOKENS_STORAGE)) || {};
  } catch {
    // an unreadable entry: start again from the first page
  }
  const tokens = stored.status === status && Array.isArray(stored.tokens) ? stored.tokens : [];
  // A page whose token this tab never saw (a pasted URL) opens as the first page.
  const number = asked > 1 && typeof tokens[asked - 2] === "string" ? asked : 1;
  return { status, number, tokens: tokens.slice(0, number - 1) };
}

function listHash({ status, number }) {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (number > 1) query.set("page", String(number));
  const text = query.toString();
  return text ? `#/deployments?${text}` : "#/deployments";
}

/** Keeps the position in the URL (no new history entry) and its tokens in sessionStorage. */
function savePosition(position) {
  if (location.hash !== listHash(position)) history.replaceState(history.state, "", listHash(position));
  sessionStorage.setItem(
    PAGE_TOKENS_STORAGE,
    JSON.stringify({ status: position.status, tokens: position.tokens }),
  );
}

export function mountDeploymentList(container, { query }) {
  const view = buildView();
  container.append(view.root);
  const position = listPosition(query);
  savePosition(position);
  const controller = new AbortController();
  let generation = 0; // bumped when the filter or page changes: older answers are dropped

  async function refresh() {
    const asked = generation;
    try {
      const page = await api.listDeployments({
        statuses: position.status ? [position.status] : null,
        nextToken: position.number > 1 ? position.tokens[position.number - 2] : null,
        signal: controller.signal,
      });
      if (asked !== generation) return;
      position.tokens = position.tokens.slice(0, position.number - 1);
      if (page.next_token) position.tokens.push(page.next_token);
      savePosition(position);
      renderRows(view, page.items || [], position.status);
      renderPager(view, position);
      setText(view.lastRefresh, `Last refreshed ${formatTime(new Date())}`);
      showError(view.panel, null);
    } catch (error) {
      if (isAbort(error) || asked !== generation) return;
      showError(view.panel, error, "Could not refresh the list: ");
    }
  }

  const poller = startPolling(refresh, REFRESH_MS.deployments);

  function goTo(status, number) {
    generation += 1;
    if (status !== position.status) position.tokens = [];
    Object.assign(position, { status, number, tokens: position.tokens.slice(0, number - 1) });
    savePosition(position);
    // The buttons change with the answer: disabling the one just pressed would drop its focus.
    setText(view.pageLabel, `Page ${number}`);
    poller.now();
  }

  view.filter.value = position.status;
  view.filter.addEventListener("change", () => goTo(view.filter.value, 1));
  view.next.addEventListener("click", () => {
    // Only once the answer gave the next page's token (a second quick press waits for it).
    if (position.tokens.length >= position.number) goTo(position.status, position.number + 1);
  });
  view.prev.addEventListener("click", () => {
    if (position.number > 1) goTo(position.status, position.number - 1);
  });
  renderPager(view, position);

  return () => {
    poller.stop();
    controller.abort();
  };
}

function buildView() {
  const filter = el(
    "select",
    { id: "status-filter", name: "status" },
    el("option", { value: "" }, "All statuses"),
    ALL_STATUSES.map((status) => el("option", { value: status }, status)),
  );
  const lastRefresh = el("p", { id: "last-refresh", class: "muted" }, "Loading…");
  const tbody = el("tbody");
  const table = dataTable(
    "deployments",
    el("caption", { class: "visually-hidden" }, "Deployments, newest first"),
    COLUMNS.map(([, label]) => label),
    tbody,
  );
  const empty = el("p", { id: "deployments-empty", class: "empty-state", hidden: true });
  const prev = el(
    "button",
    { id: "prev-page", type: "button", class: "button-secondary", disabled: true },
    "Previous page",
  );
  const next = el(
    "button",
    { id: "next-page", type: "button", class: "button-secondary", disabled: true },
    "Next page",
  );
  const pageLabel = el("span", { class: "muted" });
  const panel = el(
    "section",
    { class: "panel", "aria-labelledby": "deployments-heading" },
    el("h2", { id: "deployments-heading", class: "visually-hidden" }, "List"),
    el("div", { class: "table-wrap" }, table),
    empty,
    el("nav", { class: "pager", "aria-label": "Pages" }, prev, pageLabel, next),
  );
  const heading = el(
    "div",
    { class: "page-heading" },
    el("h1", {}, "Deployments"),
    el("a", { href: "#/create", class: "button-link" }, "Create deployment"),
  );
  const toolbar = el(
    "div",
    { class: "toolbar" },
    el("div", { class: "field inline" }, el("label", { for: "status-filter" }, "Status"), filter),
    lastRefresh,
  );
  const root = el("div", { class: "page-deployments" }, heading, toolbar, panel);
  return { root, panel, filter, lastRefresh, tbody, table, empty, prev, next, pageLabel };
}

function renderPager(view, position) {
  const focused = document.activeElement;
  view.prev.disabled = position.number === 1;
  view.next.disabled = position.tokens.length < position.number;
  setText(view.pageLabel, `Page ${position.number}`);
  // On the first or last page the pressed button goes disabled: the other one keeps the focus.
  const [pressed, other] = focused === view.next ? [view.next, view.prev] : [view.prev, view.next];
  if (focused === pressed && pressed.disabled && !other.disabled) other.focus();
}

function renderRows(view, items, status) {
  const existing = new Map([...view.tbody.rows].map((row) => [row.dataset.id, row]));
  items.forEach((item, index) => {
    let row = existing.get(item.id);
    existing.delete(item.id);
    if (!row) row = createRow(item.id);
    updateRow(row, item);
    // Moved only when out of place: moving a row that holds focus would drop the focus.
    if (view.tbody.rows[index] !== row) view.tbody.insertBefore(row, view.tbody.rows[index] || null);
  });
  for (const gone of existing.values()) gone.remove();
  view.empty.hidden = items.length > 0;
  view.table.hidden = items.length === 0;
  setText(
    view.empty,
    status ? `No deployments are ${status}.` : "No deployments yet. Create one to run a model.",
  );
}

function createRow(id) {
  const row = el("tr", { dataset: { id } });
  for (const [key, label] of COLUMNS) row.append(el("td", { dataset: { label, column: key } }));
  // The age ticks on every poll: its <time> stays and only its text changes.
  row.cells[COLUMNS.findIndex(([key]) => key === "age")].append(el("time"));
  return row;
}

function updateRow(row, item) {
  const cells = Object.fromEntries([...row.cells].map((cell) => [cell.dataset.column, cell]));
  renderIfChanged(cells.name, `${item.id}|${item.name}`, () =>
    el("a", { class: "deployment-link", href: `#/deployments/${encodeURIComponent(item.id)}` }, item.name),
  );
  setText(cells.target, targetLabel(item.target));
  renderIfChanged(cells.status, item.status, () => statusBadge(item.status));
  setText(cells.gpu, gpuText(item));
  renderIfChanged(cells.endpoint, item.endpoint_url || "", () =>
    item.endpoint_url ? el("code", { class: "endpoint" }, item.endpoint_url) : "—",
  );
  setText(cells.cost, formatUsd(item.cost_accrued_usd));
  setText(cells.budget, budgetText(item));
  const age = cells.age.firstElementChild;
  if (age.getAttribute("datetime") !== item.created_at) {
    age.setAttribute("datetime", item.created_at);
    age.title = `Created ${formatTime(item.created_at)}`;
  }
  setText(age, formatAge(secondsBetween(item.created_at)));
}

function budgetText(item) {
  if (toNumber(item.budget_max_usd) === null) return "No budget";
  const left = formatUsd(item.budget_remaining_usd);
  const seconds = toNumber(item.budget_seconds_left);
  return seconds === null ? left : `${left} · ${formatDuration(seconds)} left`;
}
