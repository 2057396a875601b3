// Your nodes (#/nodes): two calls per refresh, the nodes and one page of active deployments,
// grouped by node in the browser to show what runs where and which deployment holds each GPU.

import { ACTIVE_STATUSES, api, isAbort, PAGE_SIZES } from "./api.js";
import { dataTable, el, renderIfChanged, setText, showError, statusBadge } from "./dom.js";
import { formatGpuMemory, formatRelative, formatTime } from "./format.js";
import { REFRESH_MS, startPolling } from "./poll.js";

const COLUMNS = [
  ["name", "Name"],
  ["status", "Status"],
  ["seen", "Last seen"],
  ["agent", "Agent version"],
  ["gpus", "GPUs"],
  ["deployments", "Deployments"],
];

export function mountNodes(container) {
  const view = buildView();
  container.append(view.root);
  const controller = new AbortController();
  const signal = controller.signal;

  async function refresh() {
    const [nodes, deployments] = await Promise.allSettled([
      api.listNodes({ signal }),
      api.listDeployments({ statuses: ACTIVE_STATUSES, limit: PAGE_SIZES.activeDeploymentsOnNodes, signal }),
    ]);
    if (signal.aborted) return;
    const errors = [nodes, deployments].filter((r) => r.status === "rejected" && !isAbort(r.reason));
    const prefix =
      nodes.status === "rejected"
        ? "Could not load your nodes: "
        : "Could not load the deployments on them: ";
    showError(view.panel, errors[0]?.reason || null, prefix);
    if (nodes.status === "rejected") return; // keep what is shown
    const page = deployments.status === "fulfilled" ? deployments.value : null;
    // Cut off: a GPU no loaded deployment holds may still be held by one not loaded.
    const complete = Boolean(page) && !page.next_token;
    renderRows(view, nodes.value.items || [], {
      byNode: groupByNode(page ? page.items || [] : null),
      complete,
    });
    view.truncated.hidden = !(page && page.next_token);
    setText(view.lastRefresh, `Last refreshed ${formatTime(new Date())}`);
  }

  const poller = startPolling(refresh, REFRESH_MS.nodes);
  return () => {
    poller.stop();
    controller.abort();
  };
}

/** node id -> its deployments; null when the deployments could not be loaded (unknown). */
function groupByNode(deployments) {
  if (!deployments) return null;
  const byNode = new Map();
  for (const deployment of deployments) {
    if (!deployment.node_id) continue;
    if (!byNode.has(deployment.node_id)) byNode.set(deployment.node_id, []);
    byNode.get(deployment.node_id).push(deployment);
  }
  return byNode;
}

function buildView() {
  const tbody = el("tbody");
  const table = dataTable(
    "nodes",
    el("caption", { class: "visually-hidden" }, "Your nodes"),
    COLUMNS.map(([, label]) => label),
    tbody,
  );
  const empty = el(
    "p",
    { id: "nodes-empty", class: "empty-state", hidden: true },
    "No nodes registered yet. Run ",
    el("code", {}, "prism node up"),
    " on a machine with GPUs to add one.",
  );
  const truncated = el(
    "p",
    { class: "muted", hidden: true },
    `Only the newest ${PAGE_SIZES.activeDeploymentsOnNodes} active deployments are shown, `,
    "so a GPU none of them holds may still be held.",
  );
  const lastRefresh = el("p", { id: "last-refresh", class: "muted" }, "Loading…");
  const panel = el(
    "section",
    { class: "panel", "aria-labelledby": "nodes-heading" },
    el("h2", { id: "nodes-heading", class: "visually-hidden" }, "Node list"),
    el("div", { class: "table-wrap" }, table),
    empty,
    truncated,
  );
  const root = el(
    "div",
    { class: "page-nodes" },
    el("div", { class: "page-heading" }, el("h1", {}, "Nodes")),
    el("div", { class: "toolbar" }, lastRefresh),
    panel,
  );
  return { root, panel, tbody, table, empty, truncated, lastRefresh };
}

/** deployments: {byNode (null: not loaded), complete (every active deployment was loaded)}. */
function renderRows(view, nodes, deployments) {
  const existing = new Map([...view.tbody.rows].map((row) => [row.dataset.id, row]));
  nodes.forEach((node, index) => {
    let row = existing.get(node.id);
    existing.delete(node.id);
    if (!row) {
      row = el(
        "tr",
        { dataset: { id: node.id } },
        COLUMNS.map(([key, label]) => el("td", { dataset: { label, column: key } })),
      );
    }
    const onNode = deployments.byNode ? deployments.byNode.get(node.id) || [] : null;
    updateRow(row, node, onNode, deployments.complete);
    if (view.tbody.rows[index] !== row) view.tbody.insertBefore(row, view.tbody.rows[index] || null);
  });
  for (const gone of existing.values()) gone.remove();
  view.empty.hidden = nodes.length > 0;
  view.table.hidden = nodes.length === 0;
}

function updateRow(row, node, deployments, complete) {
  const cells = Object.fromEntries([...row.cells].map((cell) => [cell.dataset.column, cell]));
  setText(cells.name, node.name);
  renderIfChanged(cells.status, node.status, () => statusBadge(node.status));
  setText(cells.seen, `${formatTime(node.last_seen_at)} (${formatRelative(node.last_seen_at)})`);
  setText(cells.agent, node.agent_version || "—");
  renderIfChanged(cells.gpus, JSON.stringify([node.gpus, holders(deployments), complete]), () =>
    gpuList(node.gpus || [], deployments, complete),
  );
  const shown = deployments && deployments.map((d) => [d.id, d.name, d.status]);
  renderIfChanged(cells.deployments, JSON.stringify(shown), () => deploymentList(deployments));
}

function holders(deployments) {
  return (deployments || []).map((d) => [d.id, d.name, d.gpu_indices]);
}

function gpuList(gpus, deployments, complete) {
  if (gpus.length === 0) return el("span", { class: "muted" }, "No GPUs");
  return el(
    "ul",
    { class: "plain-list" },
    gpus.map((gpu) => {
      const holder = (deployments || []).find((d) => (d.gpu_indices || []).includes(gpu.index));
      const held = holder ? "held by " : complete ? "free" : "holder unknown";
      return el(
        "li",
        { dataset: { gpuIndex: String(gpu.index) } },
        `GPU ${gpu.index}: ${gpu.name} · ${formatGpuMemory(gpu.memory_total_mb)} · ${held}`,
        holder ? el("a", { href: `#/deployments/${encodeURIComponent(holder.id)}` }, holder.name) : null,
      );
    }),
  );
}

function deploymentList(deployments) {
  if (deployments === null) return el("span", { class: "muted" }, "Unknown");
  if (deployments.length === 0) return el("span", { class: "muted" }, "None");
  return el(
    "ul",
    { class: "plain-list" },
    deployments.map((d) =>
      el(
        "li",
        {},
        el("a", { class: "deployment-link", href: `#/deployments/${encodeURIComponent(d.id)}` }, d.name),
        " ",
        statusBadge(d.status),
      ),
    ),
  );
}
