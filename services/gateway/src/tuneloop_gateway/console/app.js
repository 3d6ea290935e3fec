// tuneloop console: a hash-routed single page on the gateway's public API.
import { api, session } from "./api.js";
import { badge, clearErrors, fill, guarded, h, link, modelLink, table } from "./ui.js";
import * as datasets from "./datasets.js";
import * as jobs from "./jobs.js";
import * as evals from "./evals.js";
import * as models from "./models.js";
import * as playground from "./playground.js";
import * as flywheel from "./flywheel.js";

const ROUTES = [
  [/^#\/datasets\/?$/, datasets.list, "datasets"],
  [/^#\/datasets\/(ds-[\w-]+)$/, datasets.detail, "datasets"],
  [/^#\/synthetic\/(syn-[\w-]+)$/, datasets.synthetic, "datasets"],
  [/^#\/jobs\/?$/, jobs.list, "jobs"],
  [/^#\/jobs\/(job-[\w-]+)$/, jobs.detail, "jobs"],
  [/^#\/evals\/?$/, evals.list, "evals"],
  [/^#\/evals\/(eval-[\w-]+)$/, evals.detail, "evals"],
  [/^#\/models\/?$/, models.list, "models"],
  [/^#\/models\/(mv-[\w-]+)$/, models.detail, "models"],
  [/^#\/playground\/?$/, playground.view, "playground"],
  [/^#\/captures\/?$/, flywheel.captures, "captures"],
  [/^#\/canaries\/?$/, flywheel.canaries, "canaries"],
  [/^#\/canaries\/(cny-[\w-]+)$/, flywheel.canary, "canaries"],
  [/^#?\/?$/, overview, ""],
];

let current = null; // {controller, charts, timers}

function cleanup() {
  if (!current) return;
  current.controller.abort();
  current.charts.forEach((c) => c.destroy());
  current.timers.forEach((t) => clearInterval(t));
}

async function route() {
  if (!session.key) { askKey(); return; }
  cleanup();
  clearErrors();
  const hash = location.hash || "#/";
  const main = document.getElementById("main");
  const ctx = { controller: new AbortController(), charts: [], timers: [], main };
  ctx.signal = ctx.controller.signal;
  ctx.every = (ms, fn) => ctx.timers.push(setInterval(fn, ms));
  current = ctx;
  const [path, query] = hash.split("?");
  ctx.query = new URLSearchParams(query || "");
  const found = ROUTES.find(([re]) => re.test(path));
  document.querySelectorAll("[data-nav]").forEach((a) => {
    if (found && a.dataset.nav === found[2]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  fill(main, h("p", { class: "muted spinner" }, "Loading"));
  if (!found) { fill(main, h("h1", {}, "Not found"), link("#/", "Back to the overview")); return; }
  const args = path.match(found[0]).slice(1);
  try {
    await found[1](ctx, ...args);
  } catch (e) {
    if (e.name === "AbortError") return;
    fill(main, h("h1", {}, "Could not load this page"));
    guarded(() => { throw e; });
  }
  document.title = `${main.querySelector("h1")?.textContent || "console"} · tuneloop`;
}

async function overview(ctx) {
  let aliases, jobList, decisions;
  try {
    [aliases, jobList, decisions] = await Promise.all([
      api("/v1/aliases", { signal: ctx.signal }),
      api("/v1/jobs?limit=8", { signal: ctx.signal }),
      api("/v1/promotions?limit=8", { signal: ctx.signal }),
    ]);
  } catch (e) {
    if (e.status === 403) { location.hash = "#/playground"; return; }   // an inference-scoped key
    throw e;
  }
  fill(ctx.main, 
    h("h1", {}, "Overview"),
    h("p", { class: "muted" }, "Data → training → evaluation → serving. Is this fine-tune worth shipping? ",
      "Each decision below links to its evidence."),
    h("div", { class: "grid two" },
      h("section", { class: "panel", "aria-labelledby": "ov-alias" }, h("h2", { id: "ov-alias" }, "Served aliases"),
        table([{ label: "alias", get: (a) => a.id }, { label: "model", get: (a) => modelLink(a.model) },
          { label: "previous", get: (a) => a.previous ? modelLink(a.previous) : "–" },
          { label: "replicas", get: (a) => a.converged ? badge("converged", "converged") : badge("pending", "converging") }],
        aliases.data, { empty: "No alias yet: the gate sets one when a fine-tune passes." })),
      h("section", { class: "panel", "aria-labelledby": "ov-dec" }, h("h2", { id: "ov-dec" }, "Latest gate decisions"),
        table([{ label: "decision", get: (p) => badge(p.status) }, { label: "kind", get: (p) => p.kind },
          { label: "model", get: (p) => modelLink(p.model_id || p.candidate) },
          { label: "eval", get: (p) => p.eval_id ? link(`#/evals/${p.eval_id}`, p.eval_id) : "–" }],
        decisions.data))),
    h("section", { class: "panel", "aria-labelledby": "ov-jobs" }, h("h2", { id: "ov-jobs" }, "Latest jobs"),
      jobs.jobsTable(jobList.data)));
}

function askKey(message) {
  const dlg = document.getElementById("login");
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("signout").hidden = true;
  document.getElementById("main").replaceChildren(h("h1", {}, "tuneloop console"),
    h("p", { class: "muted" }, "Sign in with an API key to continue."));
  if (!dlg.open) dlg.showModal();
  document.getElementById("login-key").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const input = document.getElementById("login-key");
  session.key = input.value.trim();
  try {
    await api("/v1/models");
  } catch (e) {
    session.key = null;
    document.getElementById("login-error").textContent = `${e.message} (${e.code})`;
    return;
  }
  input.value = "";
  document.getElementById("login").close();
  document.getElementById("signout").hidden = false;
  route();
}

function init() {
  session.onUnauthorized = () => { session.key = null; askKey("The key was refused (401). Sign in again."); };
  document.getElementById("login-form").addEventListener("submit", signIn);
  document.getElementById("login").addEventListener("cancel", (e) => e.preventDefault());
  document.getElementById("signout").addEventListener("click", () => { session.key = null; cleanup(); askKey(); });
  document.getElementById("signout").hidden = !session.key;
  window.addEventListener("hashchange", route);
  route();
}

init();
