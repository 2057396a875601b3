// Building and updating DOM without innerHTML: every API-provided string goes in as text.

/**
 * el("a", {href: "#/x", class: "link", dataset: {id: "1"}}, "text", child)
 * Attribute values and children are set as attributes / text nodes, never parsed as HTML.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  node.append(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

/** Sets text only when it differs, so an unchanged cell keeps the reader's text selection. */
export function setText(node, text) {
  const value = text ?? "";
  if (node.textContent !== value) node.textContent = value;
}

// What each node was last rendered from: re-rendering is skipped while that stays the same.
const renderedFrom = new WeakMap();

/** Replaces node's children with render()'s result only when `signature` changed. */
export function renderIfChanged(node, signature, render) {
  if (renderedFrom.get(node) === signature) return false;
  renderedFrom.set(node, signature);
  node.replaceChildren(...[render()].flat().filter(Boolean));
  return true;
}

/** Shows (or with error null, clears) an error in a panel's own role="alert" element. */
export function showError(container, error, prefix = "") {
  let box = container.querySelector(":scope > .panel-error");
  if (!error) {
    if (box) box.remove();
    return;
  }
  if (!box) {
    box = el("p", { class: "panel-error", role: "alert" });
    // Under the panel's heading, so the error reads as part of that panel.
    const heading = container.querySelector(":scope > h2, :scope > .heading-row");
    if (heading) heading.after(box);
    else container.prepend(box);
  }
  setText(box, prefix + errorText(error));
}

export function errorText(error) {
  if (error && error.message) return error.message;
  return String(error);
}

/** A status badge: the status is always in the text; the colour only repeats it. */
export function statusBadge(status, attrs = {}) {
  return el("span", { class: "status-badge", dataset: { status }, ...attrs }, status);
}

export function updateStatusBadge(badge, status) {
  if (badge.dataset.status !== status) badge.dataset.status = status;
  setText(badge, status);
}

/** A <dl> from [term, value] pairs; a value may be a string or a node. */
export function definitionList(pairs, attrs = {}) {
  return el(
    "dl",
    { class: "facts", ...attrs },
    pairs.filter(Boolean).flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value ?? "—")]),
  );
}

const copyTimers = new WeakMap(); // status node -> the timer that clears its "Copied"

/** Copies text, falling back to selecting it for Ctrl+C where the clipboard API is refused. */
export async function copyText(text, sourceNode, statusNode) {
  try {
    await navigator.clipboard.writeText(text);
    setText(statusNode, "Copied");
  } catch {
    const range = document.createRange();
    range.selectNodeContents(sourceNode);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setText(statusNode, "Selected: press Ctrl+C (⌘C) to copy");
  }
  clearTimeout(copyTimers.get(statusNode));
  copyTimers.set(statusNode, setTimeout(() => setText(statusNode, ""), 4000));
}
