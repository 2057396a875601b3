// The cumulative cost chart, drawn as plain SVG: cost over time, the budget as a horizontal line
// and, when it fits, a dashed projection from now to where the budget runs out.

import { svgEl } from "./dom.js";
import { formatUsd, timeZoneName } from "./format.js";

const HEIGHT = 260;
const MARGIN = { top: 18, right: 18, bottom: 48, left: 72 };
const MIN_SPAN_MS = 5_000; // keeps a brand-new deployment's chart from dividing by zero

/**
 * data: {points: [{at: Date, usd: number}] oldest first (the last one is now), since: Date
 *        (where the time axis starts when there are no points), budget: number | null,
 *        now: Date, exhaustAt: Date | null, label: string}
 */
export function renderCostChart(svg, data) {
  const width = Math.max(280, Math.round(svg.getBoundingClientRect().width) || 640);
  svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
  svg.setAttribute("aria-label", data.label);
  const plot = {
    left: MARGIN.left,
    right: width - MARGIN.right,
    top: MARGIN.top,
    bottom: HEIGHT - MARGIN.bottom,
  };
  const scales = buildScales(data, plot);
  svg.replaceChildren(
    svgEl("title", {}, data.label),
    ...yAxis(scales, plot),
    ...xAxis(scales, plot),
    ...budgetLine(data, scales, plot),
    ...costLine(data, scales, plot),
    ...projection(data, scales),
  );
}

/** Whether the budget's end is near enough to draw: the past keeps at least a quarter of the width. */
function projectionFits(data, start) {
  if (!data.exhaustAt || data.budget === null) return false;
  const ahead = data.exhaustAt - data.now;
  return ahead >= 0 && ahead <= 3 * Math.max(data.now - start, MIN_SPAN_MS);
}

function buildScales(data, plot) {
  const first = data.points.length ? data.points[0].at : data.since || data.now;
  let start = first.getTime();
  let end = data.now.getTime();
  const fits = projectionFits(data, start);
  if (fits) end = data.exhaustAt.getTime();
  if (end - start < MIN_SPAN_MS) start = end - MIN_SPAN_MS;
  const highest = Math.max(0, data.budget ?? 0, ...data.points.map((point) => point.usd));
  const yTicks = niceTicks(highest || 0.01);
  const yMax = yTicks.at(-1);
  return {
    tickUsd: usdTickFormat(yTicks[1] - yTicks[0], yMax),
    fits,
    start,
    end,
    yTicks,
    x: (date) => plot.left + ((date.getTime() - start) / (end - start)) * (plot.right - plot.left),
    y: (usd) => plot.bottom - (usd / yMax) * (plot.bottom - plot.top),
  };
}

/** 0 .. a round number at or above max, in 3-6 round steps (1, 2 or 5 times a power of ten). */
function niceTicks(max) {
  const raw = max / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || 10 * power;
  const ticks = [];
  for (let value = 0; value < max + step * 0.999; value += step) ticks.push(Number(value.toPrecision(12)));
  return ticks.length > 1 ? ticks : [0, step];
}

/** As many decimals as the step needs ($0.005, $20), compact for large amounts ($20K). */
function usdTickFormat(step, max) {
  const decimals = Math.min(4, Math.max(0, -Math.floor(Math.log10(step))));
  const options = {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: decimals,
    maximumFractionDigits: decimals,
  };
  if (max >= 10_000)
    Object.assign(options, { notation: "compact", minimumFractionDigits: 0, maximumFractionDigits: 1 });
  return new Intl.NumberFormat(undefined, options);
}

function yAxis(scales, plot) {
  const nodes = [];
  for (const value of scales.yTicks) {
    const y = scales.y(value);
    nodes.push(
      svgEl("line", { class: "grid-line", x1: plot.left, x2: plot.right, y1: y, y2: y }),
      svgEl(
        "text",
        { class: "tick-label", x: plot.left - 8, y: y + 4, "text-anchor": "end" },
        scales.tickUsd.format(value),
      ),
    );
  }
  const middle = (plot.top + plot.bottom) / 2;
  nodes.push(
    svgEl("line", { class: "axis-line", x1: plot.left, x2: plot.left, y1: plot.top, y2: plot.bottom }),
    svgEl(
      "text",
      {
        class: "axis-title",
        x: 14,
        y: middle,
        "text-anchor": "middle",
        transform: `rotate(-90 14 ${middle})`,
      },
      "Cost (USD)",
    ),
  );
  return nodes;
}

function timeTickFormat(spanMs) {
  if (spanMs < 3_600_000) return new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
  if (spanMs < 86_400_000) return new Intl.DateTimeFormat(undefined, { timeStyle: "short" });
  return new Intl.DateTimeFormat(undefined, {
    month: "short",
    day: "numeric",
    hour: "numeric",
    minute: "2-digit",
  });
}

function xAxis(scales, plot) {
  const format = timeTickFormat(scales.end - scales.start);
  const count = Math.max(2, Math.min(5, Math.floor((plot.right - plot.left) / 120) + 1));
  const nodes = [
    svgEl("line", { class: "axis-line", x1: plot.left, x2: plot.right, y1: plot.bottom, y2: plot.bottom }),
  ];
  for (let i = 0; i < count; i += 1) {
    const at = new Date(scales.start + ((scales.end - scales.start) * i) / (count - 1));
    const x = scales.x(at);
    const anchor = i === 0 ? "start" : i === count - 1 ? "end" : "middle";
    nodes.push(
      svgEl("line", { class: "tick-mark", x1: x, x2: x, y1: plot.bottom, y2: plot.bottom + 5 }),
      svgEl(
        "text",
        { class: "tick-label", x, y: plot.bottom + 19, "text-anchor": anchor },
        format.format(at),
      ),
    );
  }
  nodes.push(
    svgEl(
      "text",
      { class: "axis-title", x: (plot.left + plot.right) / 2, y: plot.bottom + 40, "text-anchor": "middle" },
      `Time (${timeZoneName()})`,
    ),
  );
  return nodes;
}

function budgetLine(data, scales, plot) {
  if (data.budget === null) return [];
  const y = scales.y(data.budget);
  return [
    svgEl("line", { class: "budget-line", x1: plot.left, x2: plot.right, y1: y, y2: y }),
    // At the left: the cost starts low there, while the projection meets the line at the right.
    svgEl(
      "text",
      { class: "budget-label", x: plot.left + 6, y: y - 6, "text-anchor": "start" },
      `Budget ${formatUsd(data.budget)}`,
    ),
  ];
}

function costLine(data, scales, plot) {
  if (data.points.length === 0) {
    const x = (plot.left + plot.right) / 2;
    return [
      svgEl(
        "text",
        { class: "chart-empty", x, y: (plot.top + plot.bottom) / 2, "text-anchor": "middle" },
        "No charges yet",
      ),
    ];
  }
  const d = data.points
    .map(
      (point, i) =>
        `${i === 0 ? "M" : "L"}${scales.x(point.at).toFixed(1)},${scales.y(point.usd).toFixed(1)}`,
    )
    .join(" ");
  const last = data.points.at(-1);
  return [
    svgEl("path", { class: "cost-line", d }),
    svgEl("circle", { class: "cost-now", cx: scales.x(last.at), cy: scales.y(last.usd), r: 4 }),
  ];
}

function projection(data, scales) {
  if (!scales.fits || data.points.length === 0) return [];
  const last = data.points.at(-1);
  const from = `${scales.x(last.at).toFixed(1)},${scales.y(last.usd).toFixed(1)}`;
  const to = `${scales.x(data.exhaustAt).toFixed(1)},${scales.y(data.budget).toFixed(1)}`;
  const d = `M${from} L${to}`;
  return [svgEl("path", { class: "projection", d })];
}
