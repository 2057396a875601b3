// A deployment's cost panel: the cumulative cost chart, when the budget runs out, and the
// ledger. Fed by two calls: the deployment itself (budget, time left) and its cost entries.

import { renderCostChart } from "./chart.js";
import { el, renderIfChanged, setText, svgEl } from "./dom.js";
import { formatDuration, formatTime, formatUsd, secondsBetween, toDate, toNumber } from "./format.js";

export function buildCostPanel() {
  const summary = el("p", { id: "cost-summary" }, "Loading…");
  const exhaustion = el("p", { id: "budget-exhaustion", class: "callout" }, "—");
  const chart = svgEl("svg", { id: "cost-chart", role: "img", "aria-label": "Cost chart: loading", class: "cost-chart" });
  const ledgerBody = el("tbody");
  const ledger = el(
    "table",
    { id: "ledger", class: "data-table responsive" },
    el("caption", {}, "Ledger: each billed period, newest first"),
    el(
      "thead",
      {},
      el("tr", {}, ["Period", "Amount", "Price per hour", "Total after"].map((label) => el("th", { scope: "col" }, label))),
    ),
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
    el("div", { class: "table-wrap ledger-wrap", tabindex: "0", role: "region", "aria-label": "Ledger" }, ledger),
  );
  const state = { deployment: null, deploymentAt: null, costs: null };

  function render() {
    const { deployment, costs } = state;
    if (!deployment) return;
    const now = state.deploymentAt || new Date();
    const exhaustAt = exhaustionTime(deployment, now);
    setText(summary, summaryText(deployment));
    setText(exhaustion, exhaustionText(deployment, exhaustAt, now));
    if (!costs) return;
    const points = costPoints(costs, now);
    const budget = toNumber(deployment.budget_max_usd);
    const since = toDate(deployment.created_at);
    const label = chartLabel(points, budget, exhaustAt, costs);
    renderCostChart(chart, { points, since, budget, now, exhaustAt, label });
    renderLedger(ledgerBody, ledger, costs.items || []);
    setText(ledgerNote, ledgerNoteText(costs));
  }

  // Redrawn at the new width so the chart's text keeps its size.
  const onResize = () => render();
  window.addEventListener("resize", onResize);

  return {
    root,
    updateDeployment(deployment) {
      state.deployment = deployment;
      state.deploymentAt = new Date();
      render();
    },
    updateCosts(costs) {
      state.costs = costs;
      render();
    },
    unmount: () => window.removeEventListener("resize", onResize),
  };
}

function summaryText(deployment) {
  const price = toNumber(deployment.price_per_hour_usd);
  const parts = [`${formatUsd(deployment.cost_accrued_usd)} so far`];
  if (price !== null) parts.push(`at ${formatUsd(price)} per hour`);
  if (toNumber(deployment.budget_max_usd) !== null) {
    parts.push(`budget ${formatUsd(deployment.budget_max_usd)}, ${formatUsd(deployment.budget_remaining_usd)} left`);
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

/** Cumulative cost, oldest first: before the first period, after each, and now. */
function costPoints(costs, now) {
  const items = [...(costs.items || [])].reverse();
  const points = [];
  if (items.length) {
    const first = items[0];
    const before = (toNumber(first.cost_after_usd) ?? 0) - (toNumber(first.amount_usd) ?? 0);
    points.push({ at: toDate(first.period_start), usd: Math.max(0, before) });
  }
  for (const item of items) points.push({ at: toDate(item.period_end), usd: toNumber(item.cost_after_usd) ?? 0 });
  const current = toNumber(costs.cost_accrued_usd);
  if (points.length || (current !== null && current > 0)) {
    const lastAt = points.length ? points.at(-1).at : now;
    points.push({ at: now > lastAt ? now : lastAt, usd: current ?? 0 });
  }
  return points.filter((point) => point.at);
}

function chartLabel(points, budget, exhaustAt, costs) {
  if (points.length === 0) return "Cost chart: no charges yet.";
  const first = points[0].at;
  const last = points.at(-1);
  let label = `Cumulative cost chart: ${formatUsd(last.usd)} spent since ${formatTime(first)}`;
  if (budget !== null) label += ` of a ${formatUsd(budget)} budget`;
  if (exhaustAt) label += `; at this rate the budget runs out at ${formatTime(exhaustAt)}`;
  if (costs.next_token) label += "; older entries not shown";
  return `${label}.`;
}

function ledgerNoteText(costs) {
  const count = (costs.items || []).length;
  if (count === 0) return "No charges yet: nothing has been billed.";
  const more = costs.next_token ? " (the newest; older entries are not shown)" : "";
  return `${count} ${count === 1 ? "entry" : "entries"}${more}.`;
}

function renderLedger(tbody, table, items) {
  table.hidden = items.length === 0;
  const newest = items[0];
  const signature = `${items.length}|${newest ? newest.period_end + newest.cost_after_usd : ""}`;
  renderIfChanged(tbody, signature, () => items.map(ledgerRow));
}

function ledgerRow(item) {
  const seconds = secondsBetween(item.period_start, item.period_end);
  return el(
    "tr",
    {},
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
