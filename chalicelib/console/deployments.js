// The deployments list (#/deployments): one list call per refresh (the call `prism deploy list`
// makes), rows updated in place by id so polling never loses the reader's focus or selection.

import { api, ALL_STATUSES, isAbort } from "./api.js";
import { el, renderIfChanged, setText, showError, statusBadge } from "./dom.js";
import { formatAge, formatDuration, formatTime, formatUsd, secondsBetween, toNumber } from "./format.js";
import { startPolling } from "./poll.js";

const REFRESH_MS = 5000;
const PAGE_SIZE = 50;

export const TARGET_LABELS = { prism_node: "PRISM node", runpod: "RunPod", lambda: "Lambda Cloud" };

// Kept across visits, so coming back from a deployment shows the same filter.
let statusFilter = "";

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

export function mountDeploymentList(container) {
  const view = buildView();
  container.append(view.root);
  const pages = { tokens: [], current: null, next: null }; // tokens of the pages before this one
  const controller = new AbortController();
  let generation = 0; // bumped when the filter or page changes: older answers are dropped

  async function refresh() {
    const asked = generation;
    try {
      const statuses = statusFilter ? [statusFilter] : null;
      const page = await api.listDeployments({
        statuses,
        limit: PAGE_SIZE,
        nextToken: pages.current,
        signal: controller.signal,
      });
      if (asked !== generation) return;
      pages.next = page.next_token || null;
      renderRows(view, page.items || []);
      renderPager(view, pages);
      setText(view.lastRefresh, `Last refreshed ${formatTime(new Date())}`);
      showError(view.panel, null);
    } catch (error) {
      if (isAbort(error) || asked !== generation) return;
      showError(view.panel, error, "Could not refresh the list: ");
    }
  }

  const poller = startPolling(refresh, REFRESH_MS);

  function goTo(token, tokens) {
    generation += 1;
    pages.current = token;
    pages.tokens = tokens;
    pages.next = null;
    renderPager(view, pages);
    poller.now();
  }

  view.filter.value = statusFilter;
  view.filter.addEventListener("change", () => {
    statusFilter = view.filter.value;
    goTo(null, []);
  });
  view.next.addEventListener("click", () => goTo(pages.next, [...pages.tokens, pages.current]));
  view.prev.addEventListener("click", () => goTo(pages.tokens.at(-1), pages.tokens.slice(0, -1)));

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
  const lastRefresh = el("p", { id: "last-refresh", class: "muted", "aria-live": "polite" }, "Loading…");
  const tbody = el("tbody");
  const table = el(
    "table",
    { id: "deployments", class: "data-table responsive" },
    el("caption", { class: "visually-hidden" }, "Deployments, newest first"),
    el("thead", {}, el("tr", {}, COLUMNS.map(([, label]) => el("th", { scope: "col" }, label)))),
    tbody,
  );
  const empty = el("p", { id: "deployments-empty", class: "empty-state", hidden: true });
  const prev = el("button", { id: "prev-page", type: "button", class: "button-secondary", disabled: true }, "Previous page");
  const next = el("button", { id: "next-page", type: "button", class: "button-secondary", disabled: true }, "Next page");
  const pageLabel = el("span", { class: "muted" });
  const panel = el(
    "section",
    { class: "panel", "aria-labelledby": "deployments-heading" },
    el("h2", { id: "deployments-heading", class: "visually-hidden" }, "List"),
    el("div", { class: "table-wrap" }, table),
    empty,
    el("nav", { class: "pager", "aria-label": "Pages" }, prev, pageLabel, next),
  );
  const root = el(
    "div",
    { class: "page-deployments" },
    el(
      "div",
      { class: "page-heading" },
      el("h1", {}, "Deployments"),
      el("a", { href: "#/create", class: "button-link" }, "Create deployment"),
    ),
    el(
      "div",
      { class: "toolbar" },
      el("div", { class: "field inline" }, el("label", { for: "status-filter" }, "Status"), filter),
      lastRefresh,
    ),
    panel,
  );
  return { root, panel, filter, lastRefresh, tbody, table, empty, prev, next, pageLabel };
}

function renderPager(view, pages) {
  view.prev.disabled = pages.tokens.length === 0;
  view.next.disabled = !pages.next;
  setText(view.pageLabel, `Page ${pages.tokens.length + 1}`);
}

function renderRows(view, items) {
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
    statusFilter ? `No deployments are ${statusFilter}.` : "No deployments yet. Create one to run a model.",
  );
}

function createRow(id) {
  const row = el("tr", { dataset: { id } });
  for (const [key, label] of COLUMNS) row.append(el("td", { dataset: { label, column: key } }));
  return row;
}

function updateRow(row, item) {
  const cells = Object.fromEntries([...row.cells].map((cell) => [cell.dataset.column, cell]));
  renderIfChanged(cells.name, `${item.id}|${item.name}`, () =>
    el("a", { class: "deployment-link", href: `#/deployments/${encodeURIComponent(item.id)}` }, item.name),
  );
  setText(cells.target, TARGET_LABELS[item.target] || item.target);
  renderIfChanged(cells.status, item.status, () => statusBadge(item.status));
  setText(cells.gpu, gpuText(item));
  renderIfChanged(cells.endpoint, item.endpoint_url || "", () =>
    item.endpoint_url ? el("code", { class: "endpoint" }, item.endpoint_url) : "—",
  );
  setText(cells.cost, formatUsd(item.cost_accrued_usd));
  setText(cells.budget, budgetText(item));
  const age = formatAge(secondsBetween(item.created_at));
  renderIfChanged(cells.age, age, () =>
    el("time", { datetime: item.created_at, title: `Created ${formatTime(item.created_at)}` }, age),
  );
}

export function gpuText(item) {
  if (!item.gpu) return "No GPU";
  const kind = item.gpu_type || "Any GPU";
  const held = item.gpu_indices && item.gpu_indices.length ? ` (GPU ${item.gpu_indices.join(", ")})` : "";
  return kind + held;
}

function budgetText(item) {
  if (toNumber(item.budget_max_usd) === null) return "No budget";
  const left = formatUsd(item.budget_remaining_usd);
  const seconds = toNumber(item.budget_seconds_left);
  return seconds === null ? left : `${left} · ${formatDuration(seconds)} left`;
}
