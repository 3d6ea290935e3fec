// Models: lineage (dataset version → job → artifacts → evals → alias), export checks, alias state
// per replica, the gate's decisions with their evidence, promote and roll back (confirmed).
import { api } from "./api.js";
import { badge, confirmDialog, fill, fmt, guarded, h, link, modelLink, table } from "./ui.js";

function aliasTable(ctx, aliases, { only } = {}) {
  const rows = only ? aliases.filter((a) => a.model === only || a.previous === only) : aliases;
  return table([
    { label: "alias", get: (a) => h("code", {}, a.id) },
    { label: "serves", get: (a) => modelLink(a.model) },
    { label: "previous", get: (a) => modelLink(a.previous) },
    { label: "replicas", get: (a) => {
      const reps = Object.entries(a.replicas || {});
      return reps.length ? h("ul", { class: "plain" }, reps.map(([r, m]) =>
        h("li", {}, h("code", {}, r), " → ", modelLink(m), " ", m === a.model ? badge("ready", "in sync") : badge("pending", "behind"))))
        : h("span", { class: "muted" }, "no replica reported");
    } },
    { label: "state", get: (a) => a.converged ? badge("succeeded", "converged") : badge("pending", "converging") },
    { label: "updated", get: (a) => fmt.time(a.updated_at) },
    { label: "", get: (a) => a.previous ? rollbackButton(ctx, a.id) : h("span", { class: "hint" }, "no previous version") },
  ], rows, { empty: only ? "No alias serves this version." : "No alias yet." });
}

function rollbackButton(ctx, alias) {
  return h("button", { type: "button", class: "danger", dataset: { rollback: alias }, onclick: async () => {
    if (!(await confirmDialog(`Roll "${alias}" back to its previous model? Traffic flips at once.`, "Roll back"))) return;
    const r = await guarded(() => api("/v1/promotions/rollback", { method: "POST", json: { alias } }));
    if (r) { await ctx.reload(); notice(`Rolled back: ${alias} → ${r.candidate || r.model_id || "previous"} (${r.status})`); }
  } }, `Roll back ${alias}`);
}

function notice(text) {
  const el = h("p", { class: "panel", role: "status", id: "notice" }, text);
  document.getElementById("notice")?.remove();
  document.getElementById("main").prepend(el);
}

export async function list(ctx) {
  ctx.reload = () => list(ctx);
  const [aliases, jobs, decisions, deployments] = await Promise.all([
    api("/v1/aliases", { signal: ctx.signal }),
    api("/v1/jobs?limit=100&status=succeeded", { signal: ctx.signal }),
    api("/v1/promotions?limit=100", { signal: ctx.signal }),
    api("/v1/deployments", { signal: ctx.signal }).catch(() => ({ data: [] })),
  ]);
  const latest = {};
  for (const p of decisions.data) if (p.kind === "gate" && p.model_id && !latest[p.model_id]) latest[p.model_id] = p;
  const servedBy = (mv) => aliases.data.filter((a) => a.model === mv).map((a) => a.id);
  const versions = jobs.data.filter((j) => j.model_id);
  fill(ctx.main, 
    h("h1", {}, "Models"),
    h("section", { class: "panel", "aria-labelledby": "al-h" }, h("h2", { id: "al-h" }, "Aliases (what applications call)"),
      aliasTable(ctx, aliases.data)),
    h("section", { class: "panel", "aria-labelledby": "mv-h" }, h("h2", { id: "mv-h" }, "Model versions"),
      table([
        { label: "version", get: (j) => link(`#/models/${j.model_id}`, j.model_id) },
        { label: "gate", get: (j) => latest[j.model_id] ? badge(latest[j.model_id].status) : h("span", { class: "muted" }, "not gated") },
        { label: "serving as", get: (j) => servedBy(j.model_id).map((a) => h("code", {}, a, " ")) },
        { label: "job", get: (j) => link(`#/jobs/${j.id}`, j.id) },
        { label: "dataset", get: (j) => link(`#/datasets/${j.dataset_id}`, j.dataset_id) },
        { label: "final loss", get: (j) => fmt.num(j.progress?.loss, 4) },
        { label: "finished", get: (j) => fmt.time(j.finished_at) },
      ], versions, { empty: "No model version yet: a succeeded job produces one." })),
    h("section", { class: "panel", "aria-labelledby": "dep-h" }, h("h2", { id: "dep-h" }, "Deployments (engines)"),
      table([
        { label: "served name", get: (d) => modelLink(d.model) },
        { label: "state", get: (d) => badge(d.state) }, { label: "desired", get: (d) => d.desired },
        { label: "engine", get: (d) => d.engine || "–" },
        { label: "replicas", get: (d) => (d.replicas || []).map((r) => `${r.replica}: ${r.state}`).join(", ") || "–" },
      ], deployments.data)),
    h("section", { class: "panel", "aria-labelledby": "pd-h" }, h("h2", { id: "pd-h" }, "Decisions"),
      decisionsTable(decisions.data)));
}

function decisionsTable(rows) {
  return table([
    { label: "decision", get: (p) => badge(p.status) }, { label: "kind", get: (p) => p.kind },
    { label: "alias", get: (p) => p.alias || "–" }, { label: "model", get: (p) => modelLink(p.model_id || p.candidate) },
    { label: "previous", get: (p) => modelLink(p.previous) },
    { label: "eval", get: (p) => p.eval_id ? link(`#/evals/${p.eval_id}`, p.eval_id) : "–" },
    { label: "when", get: (p) => fmt.time(p.created_at) },
  ], rows, { empty: "No decision yet." });
}

function evidence(p) {
  const checks = p.evidence?.checks || [];
  return h("article", { class: "sample", dataset: { promotion: p.id } },
    h("header", {}, badge(p.status), h("strong", {}, `${p.kind} decision`), h("code", {}, p.id),
      h("span", { class: "hint" }, fmt.time(p.created_at)),
      p.eval_id ? link(`#/evals/${p.eval_id}`, `evaluation ${p.eval_id}`) : null),
    p.reasons?.length ? h("ul", {}, p.reasons.map((r) => h("li", {}, r))) : null,
    p.error ? h("p", { class: "error" }, typeof p.error === "string" ? p.error : `${p.error.code || ""}: ${p.error.message || ""}`) : null,
    checks.length ? table([
      { label: "check", get: (c) => c.check }, { label: "value", get: (c) => fmt.num(c.value, 4) },
      { label: "95% interval", get: (c) => c.ci_low == null ? "–" : `${fmt.num(c.ci_low, 3)} .. ${fmt.num(c.ci_high, 3)}` },
      { label: "rule", get: (c) => `${c.op} ${fmt.num(c.threshold, 4)}` },
      { label: "result", get: (c) => c.verdict === "inconclusive" ? badge("inconclusive", c.rows_needed ? `inconclusive (~${c.rows_needed} ${c.unit || "rows"})` : "inconclusive")
        : c.passed == null ? badge("info", "n/a") : badge(String(c.passed), c.passed ? "passed" : "failed") },
    ], checks) : null,
    p.evidence?.table ? h("details", {}, h("summary", {}, "Eval table"), h("pre", {}, p.evidence.table)) : null);
}

export async function detail(ctx, id) {
  ctx.reload = () => detail(ctx, id);
  const [mv, aliases, gate, runs] = await Promise.all([
    api(`/v1/models/${id}`, { signal: ctx.signal }),
    api("/v1/aliases", { signal: ctx.signal }).catch(() => ({ data: [] })),
    api("/v1/promotions/gate", { signal: ctx.signal }).catch(() => ({ alias: "production" })),
    api("/v1/evals?limit=100", { signal: ctx.signal }).catch(() => ({ data: [] })),
  ]);
  const promotions = mv.promotions || [];
  const evalIds = [...new Set([...promotions.map((p) => p.eval_id),
    ...runs.data.filter((r) => (r.config?.targets || []).some((t) => t.model === id)).map((r) => r.id)].filter(Boolean))];
  const serving = aliases.data.filter((a) => a.model === id).map((a) => a.id);
  const art = mv.artifacts || {};
  const artifacts = [
    art.merged && ["merged 16-bit", art.merged.key, art.merged.bytes, art.merged.dtype],
    art.adapter && ["LoRA adapter", art.adapter.key, art.adapter.bytes, ""],
    art.checkpoints && ["checkpoints", art.checkpoints.key, null, ""],
    ...(art.gguf || []).map((g) => ["GGUF " + g.quant, g.key || g.error, g.bytes, g.error ? "failed" : ""]),
  ].filter(Boolean);

  const aliasInput = h("input", { id: "promote-alias", value: gate.alias || "production", required: true });
  const note = h("input", { id: "promote-note", placeholder: "why (kept with the decision)" });
  const promote = h("button", { type: "button", class: "primary", id: "promote" }, "Promote…");
  promote.addEventListener("click", async () => {
    const alias = aliasInput.value.trim();
    if (!alias) return;
    if (!(await confirmDialog(`Point "${alias}" at ${id}? It is deployed if needed, smoke-tested, then traffic flips (blue/green).`, "Promote"))) return;
    promote.disabled = true;
    promote.textContent = "Promoting (deploy + smoke test)…";
    const r = await guarded(() => api("/v1/promotions", { method: "POST", json: { alias, model_id: id, ...(note.value ? { note: note.value } : {}) } }));
    promote.disabled = false;
    promote.textContent = "Promote…";
    if (r) { await ctx.reload(); notice(`Promoted: ${alias} → ${id} (${r.status})`); }
  });
  const rollAlias = serving[0] || gate.alias || "production";
  const rollback = h("button", { type: "button", class: "danger", id: "rollback" }, `Roll back ${rollAlias}…`);
  rollback.addEventListener("click", async () => {
    if (!(await confirmDialog(`Roll "${rollAlias}" back to its previous model? Traffic flips at once.`, "Roll back"))) return;
    rollback.disabled = true;
    const r = await guarded(() => api("/v1/promotions/rollback", { method: "POST", json: { alias: rollAlias } }));
    rollback.disabled = false;
    if (r) { await ctx.reload(); notice(`Rolled back: ${rollAlias} (${r.status})`); }
  });

  const m = mv.metrics || {};
  fill(ctx.main, 
    h("h1", {}, "Model version ", h("code", {}, id)),
    h("ol", { class: "lineage", "aria-label": "Lineage" },
      h("li", {}, "dataset ", link(`#/datasets/${mv.dataset_id}`, mv.dataset_id)),
      h("li", {}, "job ", link(`#/jobs/${mv.job_id}`, mv.job_id)),
      h("li", {}, `artifacts (${artifacts.length})`),
      h("li", {}, evalIds.length ? ["evals ", evalIds.map((e, i) => [i ? ", " : "", link(`#/evals/${e}`, e)])] : "not evaluated yet"),
      h("li", { id: "lineage-alias" }, serving.length ? ["alias ", serving.map((a) => h("code", {}, a))] : "no alias")),
    h("section", { class: "panel", "aria-labelledby": "act-h" }, h("h2", { id: "act-h" }, "Ship it"),
      h("div", { class: "toolbar" },
        h("div", { class: "field" }, h("label", { for: aliasInput.id }, "Alias"), aliasInput),
        h("div", { class: "field" }, h("label", { for: note.id }, "Note"), note), promote, rollback),
      h("p", { class: "hint" }, "Promote bypasses the gate (a manual decision, recorded); the gate's own decisions are below."),
      aliasTable(ctx, aliases.data, { only: id })),
    h("section", { class: "panel", "aria-labelledby": "g-h" }, h("h2", { id: "g-h" }, "Gate decisions and evidence"),
      promotions.length ? promotions.map(evidence) : h("p", { class: "muted" }, "No decision for this version yet.")),
    h("div", { class: "grid two" },
      h("section", { class: "panel", "aria-labelledby": "ex-h" }, h("h2", { id: "ex-h" }, "Export checks"),
        table([{ label: "check", get: (c) => c.kind }, { label: "result", get: (c) => badge(String(c.passed), c.passed ? "passed" : "failed") },
          { label: "detail", get: (c) => typeof c.detail === "string" ? c.detail : JSON.stringify(c.detail) }], mv.export_checks || [],
        { empty: "No export check recorded." })),
      h("section", { class: "panel", "aria-labelledby": "ar-h" }, h("h2", { id: "ar-h" }, "Artifacts"),
        table([{ label: "what", get: (r) => r[0] }, { label: "key", get: (r) => h("code", {}, r[1]) },
          { label: "size", get: (r) => fmt.bytes(r[2]) }, { label: "", get: (r) => r[3] || "" }], artifacts))),
    h("div", { class: "grid two" },
      h("section", { class: "panel", "aria-labelledby": "tm-h" }, h("h2", { id: "tm-h" }, "Training metrics"),
        table([{ label: "metric", get: (r) => r[0] }, { label: "value", get: (r) => r[1] }], [
          ["best eval loss", fmt.num(m.best_eval_loss, 4)], ["best checkpoint", m.best_checkpoint || "–"],
          ["first / final train loss", `${fmt.num(m.first_train_loss, 4)} / ${fmt.num(m.final_train_loss, 4)}`],
          ["final eval loss", fmt.num(m.final_eval_loss, 4)], ["steps", `${fmt.num(m.global_step)} / ${fmt.num(m.max_steps)}`],
          ["stopped early", String(m.stopped_early ?? "–")], ["rows (train / eval)", `${fmt.num(m.train_rows)} / ${fmt.num(m.eval_rows)}`],
          ["tokens", fmt.num(m.num_tokens)]])),
      h("section", { class: "panel", "aria-labelledby": "cf-h" }, h("h2", { id: "cf-h" }, "Configuration"),
        h("p", {}, `base `, h("code", {}, mv.base_model), ` · backend ${mv.config?.resolved_backend || mv.backend}`),
        h("details", {}, h("summary", {}, "Hyperparameters and export"), h("pre", {}, JSON.stringify(mv.config, null, 2))),
        mv.base_revision ? h("p", { class: "hint" }, "base revision: ", JSON.stringify(mv.base_revision)) : null)));
}
