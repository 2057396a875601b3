// The console's shell: sign-in, the hash router (#/deployments, #/deployments/<id>, #/create,
// #/nodes), the nav's current link and the footer's time zone. Pages live in their own modules;
// each mount returns a function that stops its polling when the reader leaves.

import { api, ApiError, clearApiKey, getApiKey, setApiKey, setUnauthorizedHandler } from "./api.js";
import { el, setText } from "./dom.js";
import { timeZoneName } from "./format.js";
import { mountDeploymentList } from "./deployments.js";
import { mountDeployment } from "./deployment.js";
import { mountCreateForm } from "./create.js";
import { mountNodes } from "./nodes.js";

const page = document.getElementById("page");
const signinView = document.getElementById("signin-view");
const signinForm = document.getElementById("signin");
const signinError = document.getElementById("signin-error");
const signinInfo = document.getElementById("signin-info");
const keyInput = document.getElementById("api-key");
const nav = document.getElementById("main-nav");

let unmountPage = null;
let pendingFlash = null; // one-time data for the next page (the endpoint key after a create)
let firstRoute = true;

/** The page a hash names, and its query: "#/deployments?status=running&page=2". */
function parseRoute(hash) {
  const route = hash.replace(/^#\/?/, "");
  const queryAt = route.includes("?") ? route.indexOf("?") : route.length;
  return { ...pageFor(route.slice(0, queryAt)), query: new URLSearchParams(route.slice(queryAt + 1)) };
}

function pageFor(path) {
  const parts = path.split("/").filter(Boolean);
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "deployments")) {
    return { name: "deployments", navHref: "#/deployments" };
  }
  if (parts[0] === "deployments" && parts.length === 2) {
    return { name: "deployment", id: safeDecode(parts[1]), navHref: "#/deployments" };
  }
  if (path === "create") return { name: "create", navHref: "#/create" };
  if (path === "nodes") return { name: "nodes", navHref: "#/nodes" };
  return { name: "not-found", navHref: null };
}

function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** Goes to a page, handing it data it shows once (never put in the URL or history). */
function navigate(hash, flash = null) {
  pendingFlash = flash ? { hash, ...flash } : null;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function leavePage() {
  if (unmountPage) unmountPage();
  unmountPage = null;
  page.replaceChildren();
}

function route() {
  if (location.hash === "#content") return; // the skip link without its script
  leavePage();
  if (!getApiKey()) {
    showSignin();
    return;
  }
  showApp();
  const current = parseRoute(location.hash);
  markCurrentNavLink(current.navHref);
  const flash = pendingFlash && pendingFlash.hash === location.hash ? pendingFlash : null;
  pendingFlash = null;
  const context = { navigate, flash, query: current.query };
  if (current.name === "deployments") unmountPage = mountDeploymentList(page, context);
  else if (current.name === "deployment") unmountPage = mountDeployment(page, current.id, context);
  else if (current.name === "create") unmountPage = mountCreateForm(page, context);
  else if (current.name === "nodes") unmountPage = mountNodes(page, context);
  else renderNotFound();
  // Keyboard and screen reader users land on the new page's heading, not the old link.
  if (!firstRoute) focusHeading();
  firstRoute = false;
}

function focusHeading() {
  const heading = page.querySelector("h1");
  if (!heading) return;
  heading.tabIndex = -1;
  heading.focus({ preventScroll: false });
}

function markCurrentNavLink(href) {
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === href) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function renderNotFound() {
  page.append(
    el("h1", {}, "Page not found"),
    el(
      "p",
      {},
      "There is no such page in the console. ",
      el("a", { href: "#/deployments" }, "Go to deployments"),
      ".",
    ),
  );
}

function showApp() {
  signinView.hidden = true;
  nav.hidden = false;
}

/**
 * The sign-in form with at most one message: error (role=alert; invalidKey when it is about the
 * key typed) or info (neutral, such as after signing out).
 */
function showSignin({ error = "", info = "", invalidKey = false } = {}) {
  leavePage();
  nav.hidden = true;
  signinView.hidden = false;
  setText(signinError, error);
  setText(signinInfo, info);
  signinInfo.hidden = !info;
  if (invalidKey) keyInput.setAttribute("aria-invalid", "true");
  else keyInput.removeAttribute("aria-invalid");
  keyInput.focus();
}

async function onSigninSubmit(event) {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    showSignin({ error: "Enter an API key.", invalidKey: true });
    return;
  }
  const button = signinForm.querySelector("button[type=submit]");
  button.disabled = true;
  setText(signinError, "");
  setText(signinInfo, "");
  signinInfo.hidden = true;
  try {
    await api.checkKey(key);
    setApiKey(key);
    keyInput.value = "";
    keyInput.removeAttribute("aria-invalid");
    route();
    focusHeading();
  } catch (error) {
    const rejected = error instanceof ApiError && error.status === 401;
    showSignin(
      rejected
        ? { error: "That API key was not accepted. Check it and try again.", invalidKey: true }
        : { error: `Could not sign in: ${error.message}` },
    );
  } finally {
    button.disabled = false;
  }
}

function signOut(messages) {
  clearApiKey();
  showSignin(messages);
}

function onSkipLinkClick(event) {
  // The URL's hash is the router's, so the skip link moves focus itself.
  event.preventDefault();
  const main = document.getElementById("content");
  main.focus();
  main.scrollIntoView();
}

setUnauthorizedHandler((error) =>
  signOut({
    error: `You were signed out: the API no longer accepts this API key (${error.message}). Sign in again.`,
  }),
);
signinForm.addEventListener("submit", onSigninSubmit);
document.getElementById("signout").addEventListener("click", () => signOut({ info: "You signed out." }));
document.getElementById("skip-link").addEventListener("click", onSkipLinkClick);
setText(document.getElementById("time-zone"), timeZoneName());
window.addEventListener("hashchange", route);
route();
