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

/** A table that turns into stacked cards on narrow screens (style.css: .responsive). */
export function dataTable(id, caption, headings, tbody) {
  const head = el("tr", {}, headings.map((label) => el("th", { scope: "col" }, label)));
  return el("table", { id, class: "data-table responsive" }, caption, el("thead", {}, head), tbody);
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

function errorText(error) {
  if (error && error.message) return error.message;
  return String(error);
}

/** A status badge: the status is always in the text; the colour only repeats it. */
export function statusBadge(status) {
  return el("span", { class: "status-badge", dataset: { status } }, status);
}

export function updateStatusBadge(badge, status) {
  if (badge.dataset.status !== status) badge.dataset.status = status;
  setText(badge, status);
}

/** Sets a node's content to a string or one node, leaving it alone when it would not change. */
function setContent(node, value) {
  if (value instanceof Node) {
    const same = node.childNodes.length === 1 && node.firstChild.isEqualNode(value);
    if (!same) node.replaceChildren(value);
  } else if (node.children.length) node.replaceChildren(value ?? "");
  else setText(node, value);
}

/**
 * Fills a <dl class="facts"> from [term, value] pairs (null pairs skipped); a value may be a
 * string or a node. Only the values that changed are touched, so a selection elsewhere stays.
 */
export function updateFacts(list, pairs) {
  const shown = pairs.filter(Boolean);
  renderIfChanged(list, shown.map(([term]) => term).join("\n"), () =>
    shown.flatMap(([term]) => [el("dt", {}, term), el("dd")]),
  );
  const values = list.querySelectorAll(":scope > dd");
  shown.forEach(([, value], index) => setContent(values[index], value ?? "—"));
}

const copyTimers = new WeakMap(); // copy button -> the timer that puts its own label back
const copyLabels = new WeakMap(); // copy button -> its own label

/**
 * Copies text; where the clipboard API is refused, selects it for Ctrl+C instead. The button
 * says which for a while; `announcer` (a polite live region) says it to screen readers.
 */
export async function copyText(text, sourceNode, button, announcer) {
  if (!copyLabels.has(button)) copyLabels.set(button, button.textContent);
  let outcome = "Copied";
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents(sourceNode);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    outcome = "Selected: press Ctrl+C (⌘C) to copy";
  }
  setText(button, outcome);
  setText(announcer, outcome);
  clearTimeout(copyTimers.get(button));
  const restore = () => {
    setText(button, copyLabels.get(button));
    setText(announcer, "");
  };
  copyTimers.set(button, setTimeout(restore, 4000));
}
