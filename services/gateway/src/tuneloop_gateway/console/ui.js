// DOM helpers: every value from the API goes in as text (never as HTML).

/** h("div", {class: "x", onclick: fn}, child, "text", [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

/** Replace an element's children (null/false children are skipped, unlike replaceChildren). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const fmt = {
  num(x, d = 3) {
    if (x == null || Number.isNaN(x)) return "–";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x)) return x.toLocaleString("en-US");
    return Math.abs(x) >= 1000 ? Math.round(x).toLocaleString("en-US") : x.toFixed(d);
  },
  sci(x) { return x == null ? "–" : Number(x).toExponential(2); },
  time(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–"; },
  dur(s) {
    if (s == null) return "–";
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60), r = s % 60;
    return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : m ? `${m} min ${r} s` : `${r} s`;
  },
  bytes(b) {
    if (b == null) return "–";
    const u = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
  },
  /** A metric with its 95% interval: {value, ci_low, ci_high, n} */
  ci(m, d = 3) {
    if (m == null) return "–";
    if (typeof m !== "object") return fmt.num(m, d);
    const v = fmt.num(m.value, d);
    return m.ci_low != null ? `${v} [${fmt.num(m.ci_low, d)}, ${fmt.num(m.ci_high, d)}]` : v;
  },
};

const GOOD = ["succeeded", "ready", "promoted", "passed", "done", "serving", "accepted", "true"];
const BAD = ["failed", "rejected", "cancelled", "error", "stopped", "false"];
const WARN = ["running", "queued", "validating", "evaluating", "starting", "restarting", "pending", "warning",
  "incomplete", "inconclusive"];

export function badge(status, label) {
  const s = String(status);
  const cls = GOOD.includes(s) ? "good" : BAD.includes(s) ? "bad" : WARN.includes(s) ? "warn" : "info";
  return h("span", { class: `badge ${cls}`, dataset: { status: s } }, label ?? s);
}

/** columns: [{label, get(row) -> node|string, class?}] */
export function table(columns, rows, { caption, rowClass, empty = "Nothing yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "scroll" },
    h("table", {},
      caption ? h("caption", { class: "muted" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", { class: rowClass ? rowClass(r) : null },
        columns.map((c) => h("td", { class: c.class || null }, c.get(r))))))));
}

export function cards(items) {
  return h("div", { class: "cards" }, items.map(([k, v, id]) =>
    h("div", { class: "card" }, h("div", { class: "k" }, k),
      h("div", { class: "v", dataset: id ? { field: id } : {} }, v))));
}

export function link(href, text) { return h("a", { href }, text); }

/** A model version links to its lineage; other served names are shown as code. */
export function modelLink(m) {
  if (!m) return "–";
  return /^mv-/.test(m) ? link(`#/models/${m}`, m) : h("code", {}, m);
}

/** Show an API error (the envelope's message, code, type, param) at the top of the page. */
export function showError(err) {
  const box = document.getElementById("alerts");
  const parts = [err.message || String(err)];
  const meta = [err.code && `code: ${err.code}`, err.type && `type: ${err.type}`,
    err.param && `param: ${err.param}`, err.status && `HTTP ${err.status}`].filter(Boolean);
  const close = h("button", { type: "button", "aria-label": "Dismiss error" }, "×");
  const el = h("div", { class: "alert", dataset: { code: err.code || "" } },
    h("div", { class: "msg" }, h("strong", {}, "Error: "), parts.join(" "),
      meta.length ? h("div", { class: "hint" }, meta.join(" · ")) : null,
      errorDetails(err)),
    close);
  close.addEventListener("click", () => el.remove());
  box.append(el);
  return el;
}

function errorDetails(err) {
  const rows = err.details && Array.isArray(err.details.errors) ? err.details.errors : null;
  if (!rows || !rows.length) return null;
  return table([
    { label: "line", get: (r) => r.line ?? "–" }, { label: "field", get: (r) => r.field ?? "–" },
    { label: "code", get: (r) => r.code ?? "" }, { label: "message", get: (r) => r.message ?? "" },
  ], rows.slice(0, 50), { caption: `${rows.length} problem(s)` });
}

export function clearErrors() { document.getElementById("alerts").replaceChildren(); }

/** Run ``fn``; show its ApiError instead of throwing. Returns fn's value or undefined. */
export async function guarded(fn) {
  try { return await fn(); } catch (e) {
    if (e.name !== "AbortError") showError(e);
    return undefined;
  }
}

/** A native modal dialog (focus trapped, Esc cancels); resolves true when confirmed. */
export function confirmDialog(text, okLabel = "Confirm") {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
  });
}

/** A Chart.js chart in a sized box, with the numbers in a table for screen readers. */
export function chartBox(ctx, { label, config, small = false, id }) {
  const canvas = h("canvas", { role: "img", "aria-label": label });
  const box = h("div", { class: small ? "chart small" : "chart", dataset: id ? { chart: id } : {} }, canvas);
  requestAnimationFrame(() => {
    if (!canvas.isConnected) return;
    const chart = new window.Chart(canvas, config);
    ctx.charts.push(chart);
    box.chart = chart;
    box.dispatchEvent(new Event("chart-ready"));
  });
  return box;
}

/** Word-level diff (LCS) of a against b: [{op: "=", "-", "+", text}] */
export function wordDiff(a, b) {
  const A = String(a ?? "").split(/(\s+)/), B = String(b ?? "").split(/(\s+)/);
  if (A.length * B.length > 400000) return [{ op: "-", text: a }, { op: "+", text: b }];
  const n = A.length, m = B.length;
  const L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--)
    for (let j = m - 1; j >= 0; j--)
      L[i][j] = A[i] === B[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  const push = (op, text) => {
    const last = out[out.length - 1];
    if (last && last.op === op) last.text += text; else out.push({ op, text });
  };
  while (i < n && j < m) {
    if (A[i] === B[j]) { push("=", A[i]); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) push("-", A[i++]);
    else push("+", B[j++]);
  }
  while (i < n) push("-", A[i++]);
  while (j < m) push("+", B[j++]);
  return out;
}

/** Render one side of a diff: side "a" shows deletions, side "b" insertions. */
export function diffView(parts, side) {
  return h("div", { class: "out" }, parts.map((p) => {
    if (p.op === "=") return p.text;
    if (side === "a" && p.op === "-") return h("del", { class: "diff", title: "only here" }, p.text);
    if (side === "b" && p.op === "+") return h("ins", { class: "diff", title: "only here" }, p.text);
    return null;
  }));
}
