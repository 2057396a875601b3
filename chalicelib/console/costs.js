// A deployment's cost panel: the cumulative cost chart, when the budget runs out, and the
// ledger. Fed by the deployment itself (budget, time left) and its cost entries: the whole
// ledger (up to one call's most) on open, then only the newest periods, merged in.

import { api, isAbort, PAGE_SIZES } from "./api.js";
import { renderCostChart } from "./chart.js";
import { dataTable, el, setText, showError, svgEl } from "./dom.js";
import { formatDuration, formatTime, formatUsd, secondsBetween, toDate, toNumber } from "./format.js";

export function buildCostPanel(id, signal) {
  const view = buildCostView();
  // ledger: {items (newest first), truncated (older periods not shown), costAccrued} or null
  const state = { deployment: null, deploymentAt: null, ledger: null };
  const render = () => renderCosts(view, state);

  /** Loads what is new; true when the ledger shown is up to date. */
  async function refresh() {
    try {
      if (state.ledger) {
        const newest = await api.costs(id, { limit: PAGE_SIZES.costsOnRefresh, signal });
        state.ledger = mergeNewest(state.ledger, newest);
      }
      // On open, and when the newest page no longer reaches what is shown (a long pause).
      if (!state.ledger) state.ledger = ledgerFrom(await api.costs(id, { signal }));
      render();
      showError(view.root, null);
      return true;
    } catch (error) {
      if (!isAbort(error)) showError(view.root, error, "Could not load costs: ");
      return false;
    }
  }

  // Redrawn at the new width so the chart's text keeps its size.
  const onResize = () => render();
  window.addEventListener("resize", onResize);

  return {
    root: view.root,
    refresh,
    update(deployment) {
      state.deployment = deployment;
      state.deploymentAt = new Date();
      render();
    },
    unmount: () => window.removeEventListener("resize", onResize),
  };
}

function buildCostView() {
  const summary = el("p", { id: "cost-summary" }, "Loading…");
  const exhaustion = el("p", { id: "budget-exhaustion", class: "callout" }, "—");
  const chart = svgEl("svg", {
    id: "cost-chart",
    role: "img",
    "aria-label": "Cost chart: loading",
    class: "cost-chart",
  });
  const ledgerBody = el("tbody");
  const headings = ["Period", "Amount", "Price per hour", "Total after"];
  const ledger = dataTable(
    "ledger",
    el("caption", {}, "Ledger: each billed period, newest first"),
    headings,
    ledgerBody,
  );
  const ledgerNote = el("p", { class: "muted" });
  const root = el(
    "section",
    { id: "costs", class: "panel", "aria-labelledby": "costs-heading" },
    el("h2", { id: "costs-heading" }, "Cost"),
    summary,
    exhaustion,
    el("div", { class: "chart-wrap" }, chart),
    ledgerNote,
    el(
      "div",
      { class: "table-wrap ledger-wrap", tabindex: "0", role: "region", "aria-label": "Ledger" },
      ledger,
    ),
  );
  return { root, summary, exhaustion, chart, ledger, ledgerBody, ledgerNote };
}

function ledgerFrom(page) {
  return { items: page.items || [], truncated: Boolean(page.next_token), costAccrued: page.cost_accrued_usd };
}

/**
 * The newest page merged into the shown ledger by period_start (newest first, no duplicates);
 * null when the page does not reach back to the shown entries: periods in between are missing.
 */
function mergeNewest(ledger, page) {
  const newest = page.items || [];
  const byStart = new Map(ledger.items.map((item) => [item.period_start, item]));
  if (page.next_token && !newest.some((item) => byStart.has(item.period_start))) return null;
  for (const item of newest) byStart.set(item.period_start, item);
  const items = [...byStart.values()].sort((a, b) => toDate(b.period_start) - toDate(a.period_start));
  const kept = items.slice(0, PAGE_SIZES.costsOnOpen); // as many as the first call shows
  return {
    items: kept,
    truncated: ledger.truncated || kept.length < items.length,
    costAccrued: page.cost_accrued_usd,
  };
}

function renderCosts(view, { deployment, deploymentAt, ledger }) {
  if (!deployment) return;
  const now = deploymentAt || new Date();
  const exhaustAt = exhaustionTime(deployment, now);
  setText(view.summary, summaryText(deployment));
  setText(view.exhaustion, exhaustionText(deployment, exhaustAt, now));
  if (!ledger) return;
  const points = costPoints(ledger, now);
  const budget = toNumber(deployment.budget_max_usd);
  const since = toDate(deployment.created_at);
  const label = chartLabel(points, budget, exhaustAt, ledger);
  renderCostChart(view.chart, { points, since, budget, now, exhaustAt, label });
  view.ledger.hidden = ledger.items.length === 0;
  renderLedgerRows(view.ledgerBody, ledger.items);
  setText(view.ledgerNote, ledgerNoteText(ledger));
}

function summaryText(deployment) {
  const price = toNumber(deployment.price_per_hour_usd);
  const parts = [`${formatUsd(deployment.cost_accrued_usd)} so far`];
  if (price !== null) parts.push(`at ${formatUsd(price)} per hour`);
  if (toNumber(deployment.budget_max_usd) !== null) {
    parts.push(
      `budget ${formatUsd(deployment.budget_max_usd)}, ${formatUsd(deployment.budget_remaining_usd)} left`,
    );
  }
  return parts.join(" · ");
}

function exhaustionTime(deployment, now) {
  const seconds = toNumber(deployment.budget_seconds_left);
  if (seconds === null || toNumber(deployment.budget_max_usd) === null) return null;
  return new Date(now.getTime() + seconds * 1000);
}

function exhaustionText(deployment, exhaustAt, now) {
  if (toNumber(deployment.budget_max_usd) === null) return "No budget";
  if (!exhaustAt) return "Not billed now";
  const seconds = secondsBetween(now, exhaustAt);
  if (seconds <= 0) return "Budget is used up";
  return `Budget runs out at ${formatTime(exhaustAt)} (in ${formatDuration(seconds)})`;
}

/** Cumulative cost, oldest first: before the first shown period, after each, and now. */
function costPoints(ledger, now) {
  const items = [...ledger.items].reverse();
  const points = [];
  if (items.length) {
    const first = items[0];
    const before = (toNumber(first.cost_after_usd) ?? 0) - (toNumber(first.amount_usd) ?? 0);
    points.push({ at: toDate(first.period_start), usd: Math.max(0, before) });
  }
  for (const item of items)
    points.push({ at: toDate(item.period_end), usd: toNumber(item.cost_after_usd) ?? 0 });
  const current = toNumber(ledger.costAccrued);
  if (points.length || (current !== null && current > 0)) {
    const lastAt = points.length ? points.at(-1).at : now;
    points.push({ at: now > lastAt ? now : lastAt, usd: current ?? 0 });
  }
  return points.filter((point) => point.at);
}

function chartLabel(points, budget, exhaustAt, ledger) {
  if (points.length === 0) return "Cost chart: no charges yet.";
  const total = formatUsd(points.at(-1).usd);
  const from = formatTime(points[0].at);
  let label = ledger.truncated
    ? `Cumulative cost chart of the newest ${ledger.items.length} billed periods, ` +
      `from ${from}: ${total} in all`
    : `Cumulative cost chart: ${total} spent since ${from}`;
  if (budget !== null) label += ` of a ${formatUsd(budget)} budget`;
  if (exhaustAt) label += `; at this rate the budget runs out at ${formatTime(exhaustAt)}`;
  return `${label}.`;
}

function ledgerNoteText(ledger) {
  const count = ledger.items.length;
  if (count === 0) return "No charges yet: nothing has been billed.";
  const more = ledger.truncated ? " (the newest; older entries are not shown)" : "";
  return `${count} ${count === 1 ? "entry" : "entries"}${more}.`;
}

const rowSignatures = new WeakMap(); // ledger row -> the entry it shows, as JSON

/** Rows keyed by period: a new period adds a row, the rest (and any selection in them) stay. */
function renderLedgerRows(tbody, items) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.period, row]));
  items.forEach((item, index) => {
    const signature = JSON.stringify(item);
    let row = existing.get(item.period_start);
    existing.delete(item.period_start);
    if (!row || rowSignatures.get(row) !== signature) {
      const fresh = ledgerRow(item);
      rowSignatures.set(fresh, signature);
      if (row) row.replaceWith(fresh);
      row = fresh;
    }
    if (tbody.rows[index] !== row) tbody.insertBefore(row, tbody.rows[index] || null);
  });
  for (const gone of existing.values()) gone.remove();
}

function ledgerRow(item) {
  const seconds = secondsBetween(item.period_start, item.period_end);
  return el(
    "tr",
    { dataset: { period: item.period_start } },
    el(
      "td",
      { dataset: { label: "Period" } },
      // One child: in the narrow card layout each child of a cell is a grid item.
      el(
        "span",
        {},
        el("time", { datetime: item.period_start }, formatTime(item.period_start)),
        " – ",
        el("time", { datetime: item.period_end }, formatTime(item.period_end)),
        ` (${formatDuration(seconds)})`,
      ),
    ),
    el("td", { dataset: { label: "Amount" }, class: "number" }, formatUsd(item.amount_usd)),
    el("td", { dataset: { label: "Price per hour" }, class: "number" }, formatUsd(item.price_per_hour_usd)),
    el("td", { dataset: { label: "Total after" }, class: "number" }, formatUsd(item.cost_after_usd)),
  );
}
