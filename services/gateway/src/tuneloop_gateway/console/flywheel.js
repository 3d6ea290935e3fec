// The flywheel (docs/flywheel.md): the captured-traffic review queue, and canaries with their
// live comparison of the stable model and the candidate.
import { api } from "./api.js";
import { badge, cards, confirmDialog, fill, fmt, guarded, h, link, modelLink, table } from "./ui.js";

function field(label, input) {
  input.id = input.id || `f-${Math.random().toString(36).slice(2, 8)}`;
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

const last = (msgs) => (msgs && msgs.length ? String(msgs[msgs.length - 1].content ?? "") : "");

/** #/captures?status=pending: rows captured from opted-in traffic (masked), to accept, edit or reject. */
export async function captures(ctx) {
  const status = ctx.query.get("status") || "pending";
  const rating = ctx.query.get("rating") || "";
  const q = new URLSearchParams({ status, limit: "100" });
  if (rating) q.set("rating", rating);
  const [rows, accepted] = await Promise.all([
    api(`/v1/captures?${q}`, { signal: ctx.signal }),
    api("/v1/captures?status=accepted&limit=1", { signal: ctx.signal }),
  ]);
  const review = async (body) => {
    if (await guarded(() => api("/v1/captures/review", { method: "POST", json: body }))) captures(ctx);
  };
  const statusSel = h("select", { id: "cap-status" },
    ["pending", "accepted", "rejected"].map((s) => h("option", { value: s, selected: s === status }, s)));
  const ratingSel = h("select", { id: "cap-rating" },
    [["", "any"], ["up", "thumbs up"], ["down", "thumbs down"], ["none", "no feedback"]].map(
      ([v, l]) => h("option", { value: v, selected: v === rating }, l)));
  const go = () => { location.hash = `#/captures?status=${statusSel.value}${ratingSel.value ? `&rating=${ratingSel.value}` : ""}`; };
  statusSel.addEventListener("change", go);
  ratingSel.addEventListener("change", go);
  const base = h("input", { id: "cap-base", placeholder: "ds-... (optional)", pattern: "ds-[a-z0-9]+" });
  const publish = h("button", { type: "submit", class: "primary", id: "cap-publish", disabled: !accepted.total },
    `Publish ${accepted.total || 0} accepted row(s) as a dataset version`);
  const form = h("form", { class: "toolbar", id: "cap-publish-form" }, field("Extend dataset version", base), publish);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const json = base.value.trim() ? { base_dataset_id: base.value.trim() } : {};
    const out = await guarded(() => api("/v1/captures/publish", { method: "POST", json }));
    if (out) location.hash = `#/datasets/${out.dataset.id}`;
  });
  fill(ctx.main,
    h("h1", {}, "Captured traffic"),
    h("p", { class: "muted" }, "Generations of opted-in keys on capture-enabled aliases, masked before storage. ",
      "Accepted rows become a new dataset version whose lineage names these requests."),
    h("div", { class: "toolbar" }, field("Show", statusSel), field("Feedback", ratingSel)),
    form,
    h("section", { class: "panel", "aria-labelledby": "cap-h" }, h("h2", { id: "cap-h" }, `${rows.total} ${status} row(s)`),
      rows.data.length ? rows.data.map((r) => captureCard(r, review)) : h("p", { class: "muted" }, "No rows here.")));
}

function captureCard(r, review) {
  const fb = r.feedback || {};
  const edit = h("textarea", { rows: 3, "aria-label": `Corrected answer for ${r.id}`, class: "cap-edit" });
  edit.value = r.edited_output || fb.correction || r.output || "";
  return h("div", { class: "sample", dataset: { capture: r.id } },
    h("header", {}, h("code", {}, r.id), badge(r.status),
      fb.rating ? badge(fb.rating === "up" ? "passed" : "failed", fb.rating === "up" ? "👍 up" : "👎 down") : null,
      r.canary ? h("span", { class: "badge info" }, `canary ${r.canary.arm}`) : null,
      h("span", { class: "muted" }, `${r.model} → ${r.served_model || "?"} · ${fmt.time(r.created_at)}`),
      r.status !== "accepted" ? h("button", { type: "button", onclick: () => review({ accept: [r.id] }) }, "Accept") : null,
      r.status !== "rejected" ? h("button", { type: "button", onclick: () => review({ reject: [r.id] }) }, "Reject") : null),
    h("div", {}, h("span", { class: "badge info" }, "prompt"), " ", h("span", { class: "out" }, last(r.messages))),
    h("div", {}, h("span", { class: "badge info" }, "answer"), " ", h("span", { class: "out" }, r.output || "")),
    fb.correction ? h("div", {}, h("span", { class: "badge info" }, "correction"), " ", h("span", { class: "out" }, fb.correction)) : null,
    h("details", {}, h("summary", {}, "Edit the answer, then accept"), edit,
      h("button", { type: "button", onclick: () => review({ edit: [{ id: r.id, output: edit.value }] }) }, "Save and accept")));
}

/** #/canaries: every canary, newest first. */
export async function canaries(ctx) {
  const list = await api("/v1/canaries?limit=50", { signal: ctx.signal });
  fill(ctx.main,
    h("h1", {}, "Canaries"),
    h("p", { class: "muted" }, "A candidate gets a weighted share of an alias's live traffic (or a mirror of it) and is ",
      "compared with the stable model; it is rolled back on its own when it crosses a limit."),
    table([{ label: "id", get: (c) => link(`#/canaries/${c.id}`, c.id) }, { label: "alias", get: (c) => c.alias },
      { label: "stable", get: (c) => modelLink(c.stable) }, { label: "candidate", get: (c) => modelLink(c.candidate) },
      { label: "mode", get: (c) => c.mode === "shadow" ? "shadow" : `${Math.round(c.weight * 100)} %` },
      { label: "status", get: (c) => badge(c.status === "rolled_back" ? "failed" : c.status, c.status) }],
    list.data, { empty: "No canary yet: POST /v1/canaries or `tuneloop canary start`." }));
}

/** #/canaries/cny-...: the live comparison, refreshed while the canary runs. */
export async function canary(ctx, id) {
  const c = await api(`/v1/canaries/${id}`, { signal: ctx.signal });
  const cmp = c.comparison || {};
  const arm = c.mode === "shadow" ? "shadow" : "candidate";
  const rows = [["stable", c.stable, cmp.stable || {}], [arm, c.candidate, cmp[arm] || {}]];
  const quality = cmp.quality || {};
  const act = async (path, json, text) => {
    const r = await guarded(() => api(`/v1/canaries/${id}/${path}`, { method: "POST", json }));
    if (r) { await canary(ctx, id); notice(text(r)); }
  };
  const running = c.status === "running";
  const weight = h("input", { id: "cny-weight", type: "number", min: 0, max: 1, step: 0.01, value: c.weight });
  fill(ctx.main,
    h("h1", { style: "overflow-wrap: anywhere" }, "Canary ", h("code", {}, id), " ",
      badge(c.status === "rolled_back" ? "failed" : c.status, c.status)),
    // the model names are in the comparison table (it scrolls in its own box on a phone)
    cards([["alias", c.alias], ["mode", c.mode], ["weight", `${Math.round(c.weight * 100)} %`, "weight"]]),
    h("section", { class: "panel", "aria-labelledby": "cmp-h" }, h("h2", { id: "cmp-h" }, "Live comparison"),
      h("div", { class: "scroll" }, h("table", { id: "canary-compare" },
        h("thead", {}, h("tr", {}, ["arm", "model", "requests", "errors", "error rate", "fallbacks", "p50 latency", "p95 latency",
          "rated", "thumbs up"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows.map(([name, model, s]) => {
          const qa = quality[name] || {};
          return h("tr", { dataset: { arm: name } }, h("th", { scope: "row" }, name), h("td", {}, modelLink(model)),
            h("td", { dataset: { field: "requests" } }, fmt.num(s.requests ?? 0)), h("td", {}, fmt.num(s.errors ?? 0)),
            h("td", {}, s.error_rate == null ? "–" : `${(s.error_rate * 100).toFixed(1)} %`), h("td", {}, fmt.num(s.fallbacks ?? 0)),
            h("td", {}, s.latency_p50_s == null ? "–" : `${fmt.num(s.latency_p50_s)} s`),
            h("td", {}, s.latency_p95_s == null ? "–" : `${fmt.num(s.latency_p95_s)} s`),
            h("td", {}, fmt.num((qa.up ?? 0) + (qa.down ?? 0))), h("td", {}, qa.up_share == null ? "–" : `${Math.round(qa.up_share * 100)} %`));
        })))),
      h("p", { class: "hint" }, `Limits: error rate > ${c.limits.max_error_rate}`,
        c.limits.max_latency_ratio ? `, p95 latency > ${c.limits.max_latency_ratio}× the stable model's` : "",
        c.limits.max_p95_latency_s ? `, p95 latency > ${c.limits.max_p95_latency_s} s` : "",
        ` (judged after ${c.limits.min_requests} requests) roll it back.`)),
    running ? h("div", { class: "toolbar" }, field("Weight (0–1)", weight),
      h("button", { type: "button", id: "cny-set-weight", onclick: async () => {
        const r = await guarded(() => api(`/v1/canaries/${id}`, { method: "PATCH", json: { weight: Number(weight.value) } }));
        if (r) { await canary(ctx, id); notice(`Weight: ${r.weight}`); }
      } }, "Set weight"),
      h("button", { type: "button", class: "primary", id: "cny-promote", onclick: async () => {
        if (!(await confirmDialog(`Point "${c.alias}" at ${c.candidate}? The promotion is recorded with this comparison.`, "Promote"))) return;
        await act("promote", {}, (r) => `Promoted: ${c.alias} → ${c.candidate} (${r.promotion.status})`);
      } }, "Promote"),
      h("button", { type: "button", class: "danger", id: "cny-rollback", onclick: async () => {
        if (!(await confirmDialog(`Stop sending "${c.alias}" traffic to ${c.candidate}?`, "Roll back"))) return;
        await act("rollback", { reason: "from the console" }, () => "Rolled back");
      } }, "Roll back")) : null,
    h("section", { class: "panel", "aria-labelledby": "ev-h" }, h("h2", { id: "ev-h" }, "Events"),
      table([{ label: "when", get: (e) => fmt.time(e.at) }, { label: "event", get: (e) => e.event },
        { label: "detail", get: (e) => e.detail }], [...(c.events || [])].reverse(), { caption: null })),
    c.promotion_id ? h("p", {}, "Promotion decision: ", h("code", {}, c.promotion_id)) : null);
  if (running && !ctx.polling) {
    ctx.polling = true;
    ctx.every(3000, () => guarded(() => !ctx.signal.aborted && canary(ctx, id)));
  }
}

function notice(text) {
  document.getElementById("notice")?.remove();
  document.getElementById("main").prepend(h("p", { class: "panel", role: "status", id: "notice" }, text));
}
