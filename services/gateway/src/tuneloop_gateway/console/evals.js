// Evaluations: base vs candidate vs production, with intervals, per-field accuracy, the
// forgetting suite and a per-example side-by-side view with the differences highlighted.
import { api } from "./api.js";
import { badge, diffView, fill, fmt, guarded, h, link, modelLink, table, wordDiff } from "./ui.js";

export async function list(ctx) {
  const [runs, datasets, models] = await Promise.all([
    api("/v1/evals?limit=50", { signal: ctx.signal }),
    api("/v1/datasets?limit=100", { signal: ctx.signal }).catch(() => ({ data: [] })),
    api("/v1/models", { signal: ctx.signal }).catch(() => ({ data: [] })),
  ]);
  fill(ctx.main, 
    h("h1", {}, "Evaluations"),
    h("section", { class: "panel", "aria-labelledby": "n-h" }, h("h2", { id: "n-h" }, "Run an evaluation"),
      newEvalForm(datasets.data, models.data, ctx.query.get("dataset"))),
    h("section", { class: "panel", "aria-labelledby": "r-h" }, h("h2", { id: "r-h" }, "Runs"),
      table([
        { label: "eval", get: (r) => link(`#/evals/${r.id}`, r.id) },
        { label: "status", get: (r) => badge(r.status) },
        { label: "targets", get: (r) => (r.config?.targets || []).map((t) => `${t.name}=${t.model}`).join(", ") || "–" },
        { label: "name", get: (r) => r.name || "–" },
        { label: "dataset", get: (r) => dsOf(r) ? link(`#/datasets/${dsOf(r)}`, dsOf(r)) : "rows/file" },
        { label: "created", get: (r) => fmt.time(r.created_at) },
      ], runs.data, { empty: "No evaluation yet (the gate runs one for every succeeded job)." })));
}

function newEvalForm(datasets, models, preselect) {
  const ds = h("select", { id: "eval-dataset" }, datasets.map((d) =>
    h("option", { value: d.id, selected: d.id === preselect }, `${d.name || d.id} (${d.id}, ${d.counts?.eval ?? "?"} eval rows)`)));
  const boxes = models.map((m, i) => {
    const cb = h("input", { type: "checkbox", value: m.id, id: `eval-t-${i}`, checked: i < 2 });
    return h("span", {}, cb, " ", h("label", { for: cb.id, style: "display:inline" }, m.id), "  ");
  });
  const maxEx = h("input", { id: "eval-max", type: "number", min: "1", value: "50" });
  const general = h("input", { id: "eval-general", type: "checkbox", checked: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Evaluate");
  const form = h("form", {},
    h("div", { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: ds.id }, "Dataset version (its eval split)"), ds),
      h("div", { class: "field" }, h("label", { for: maxEx.id }, "Max examples"), maxEx),
      h("div", {}, general, " ", h("label", { for: general.id, style: "display:inline" }, "general-capability suite (forgetting)"))),
    h("fieldset", {}, h("legend", {}, "Targets (the first is the baseline)"), boxes),
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const targets = [...form.querySelectorAll("fieldset input:checked")].map((c) => ({ name: c.value, model: c.value }));
    const body = { dataset_id: ds.value, targets, max_examples: Number(maxEx.value), general_suite: general.checked };
    submit.disabled = true;
    const run = await guarded(() => api("/v1/evals", { method: "POST", json: body }));
    submit.disabled = false;
    if (run) location.hash = `#/evals/${run.id}`;
  });
  return form;
}

const dsOf = (r) => r.config?.dataset_id || r.config?.source?.dataset_id;

const METRICS = [
  ["task_score", "task score"], ["exact_match", "exact match"], ["json_valid", "JSON valid"],
  ["rouge1", "ROUGE-1"], ["rouge2", "ROUGE-2"], ["rougeL", "ROUGE-L"], ["general", "general suite (forgetting)"],
];

export async function detail(ctx, id) {
  const run = await api(`/v1/evals/${id}`, { signal: ctx.signal });
  if (run.status === "running") {
    const prog = Object.entries(run.progress || {});
    fill(ctx.main, h("h1", {}, "Evaluation ", h("code", {}, id), " ", badge(run.status)),
      h("p", { class: "muted spinner", "aria-live": "polite" }, "Generating answers for every target; this page refreshes by itself"),
      prog.length ? h("ul", { id: "eval-progress" }, prog.map(([name, p]) =>
        h("li", {}, h("strong", {}, name), ` ${p.done} / ${p.total} done`, p.failed ? ` (${p.failed} failed after retries)` : ""))) : null);
    setTimeout(() => { if (!ctx.signal.aborted) detail(ctx, id).catch(() => {}); }, 2000);
    return;
  }
  const rep = run.report;
  if (!rep) {
    fill(ctx.main, h("h1", {}, "Evaluation ", h("code", {}, id), " ", badge(run.status)),
      h("p", { class: "error" }, run.error ? `${run.error.code || ""}: ${run.error.message || JSON.stringify(run.error)}` : "No report."));
    return;
  }
  const targets = rep.targets || [];
  fill(ctx.main, 
    h("h1", {}, "Evaluation ", h("code", {}, id), " ", badge(run.status)),
    h("p", { class: "muted" }, `${rep.n_examples} held-out examples, ${rep.n_general || 0} general-suite items, metric `,
      h("code", {}, rep.task?.primary_metric || rep.task?.kind || "–"),
      dsOf(run) ? [" · dataset ", link(`#/datasets/${dsOf(run)}`, dsOf(run))] : null,
      run.config?.source?.model_id ? [" · model ", modelLink(run.config.source.model_id)] : null),
    rep.advice?.length ? h("section", { class: "panel", "aria-labelledby": "a-h" }, h("h2", { id: "a-h" }, "Is it worth shipping?"),
      h("ul", { id: "eval-advice" }, rep.advice.map((a) => h("li", {}, a)))) : null,
    failedPanel(rep),
    h("section", { class: "panel", "aria-labelledby": "m-h" }, h("h2", { id: "m-h" }, "Metrics (95% intervals)"),
      metricTable(targets, rep.baseline), comparisons(rep)),
    fieldsPanel(targets),
    h("section", { class: "panel", "aria-labelledby": "s-h" }, h("h2", { id: "s-h" }, "Per example, side by side"),
      await samplesView(ctx, id, targets, rep)));
}

function metricTable(targets, baseline) {
  const rows = METRICS.filter(([k]) => targets.some((t) => t.metrics?.[k] != null));
  const best = {};
  for (const [k] of rows) {
    const values = targets.map((t) => t.metrics?.[k]?.value ?? -Infinity);
    best[k] = new Set(values).size > 1 ? Math.max(...values) : null;   // a tie highlights nobody
  }
  return h("div", { class: "scroll" }, h("table", { id: "metric-table" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "metric"), targets.map((t) =>
      h("th", { scope: "col" }, t.name, t.name === baseline ? " (baseline)" : t.role === "base_kshot" ? ` (base, ${t.shots}-shot prompt)`
        : t.role && t.role !== t.name ? ` (${t.role})` : "", h("br"),
        t.model !== t.name ? h("span", { class: "hint" }, modelLink(t.model)) : null, " ", t.status && t.status !== "succeeded" ? badge(t.status) : null)))),
    h("tbody", {}, rows.map(([k, label]) => h("tr", {}, h("th", { scope: "row" }, label), targets.map((t) => {
      const m = t.metrics?.[k];
      const top = m && m.value === best[k] && targets.length > 1;
      return h("td", { class: top ? "best-cell" : null }, top ? h("strong", {}, fmt.ci(m)) : fmt.ci(m));
    }))),
    h("tr", {}, h("th", { scope: "row" }, "latency p50 / p95 (ms)"), targets.map((t) => {
      const l = t.metrics?.latency_ms;
      return h("td", {}, l ? `${fmt.num(l.p50, 0)} / ${fmt.num(l.p95, 0)}` : "–");
    })),
    h("tr", {}, h("th", { scope: "row" }, "tokens/s"), targets.map((t) => h("td", {}, fmt.num(t.metrics?.tokens_per_s, 1)))))));
}

function comparisons(rep) {
  const c = rep.comparisons || [];
  if (!c.length) return null;
  return h("div", {}, h("h3", {}, "Against the baselines (zero-shot and k-shot) and production"), table([
    { label: "target", get: (r) => r.target }, { label: "vs", get: (r) => r.vs },
    { label: "uplift (paired, 95% CI)", get: (r) => fmt.ci(r.uplift) },
    { label: "general-suite drop", get: (r) => r.general_drop == null ? "–" : fmt.ci(r.general_drop) },
  ], c));
}

function failedPanel(rep) {
  const failed = rep.failed_requests || [];
  if (!failed.length) return null;
  return h("section", { class: "panel", "aria-labelledby": "f-h", id: "eval-failed" },
    h("h2", { id: "f-h" }, `Failed requests (${rep.n_failed_requests ?? failed.length})`),
    h("p", { class: "hint" }, "These generations still failed after their retries (timeouts, unreachable or overloaded engines). ",
      "They are not scored as wrong answers: every metric covers the answers only, the run is incomplete and a gate on it is inconclusive. ",
      "Run it again: only these are generated again."),
    table([
      { label: "target", get: (f) => f.target },
      { label: "where", get: (f) => f.suite === "task" ? `example ${f.index + 1}${f.line ? ` (line ${f.line})` : ""}` : `general ${f.id || f.index}` },
      { label: "attempts", get: (f) => String(f.attempts ?? "–") },
      { label: "error", get: (f) => f.error },
    ], failed.slice(0, 200)));
}

function fieldsPanel(targets) {
  const names = [...new Set(targets.flatMap((t) => Object.keys(t.metrics?.fields || {})))];
  if (!names.length) return null;
  return h("section", { class: "panel", "aria-labelledby": "f-h" }, h("h2", { id: "f-h" }, "Per-field accuracy"),
    h("div", { class: "scroll" }, h("table", { id: "field-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "field"), targets.map((t) => h("th", { scope: "col" }, t.name)))),
      h("tbody", {}, names.map((f) => h("tr", {}, h("th", { scope: "row" }, f),
        targets.map((t) => h("td", {}, fmt.ci(t.metrics?.fields?.[f])))))))));
}

async function loadAll(ctx, id) {
  const all = [];
  for (let offset = 0; ; offset += 500) {
    const page = await api(`/v1/evals/${id}/samples?offset=${offset}&limit=500`, { signal: ctx.signal });
    all.push(...page.data);
    if (!page.has_more) return all;
  }
}

function score(sample, name) {
  const o = sample.outputs?.[name];
  if (!o) return null;
  if (o.error) return null;  // a failed request is not a wrong answer
  if (sample.suite === "general") return o.correct ? 1 : 0;
  return o.task_score ?? (o.exact_match ? 1 : 0);
}

function text(v) {
  if (v == null) return "";
  if (typeof v === "string") return v;
  if (Array.isArray(v) && v.every((m) => m && m.role)) {
    const user = v.filter((m) => m.role !== "assistant");
    return user.map((m) => (user.length > 1 ? `[${m.role}] ` : "") + m.content).join("\n");
  }
  return Array.isArray(v) ? v.join(" | ") : JSON.stringify(v);
}

async function samplesView(ctx, id, targets, rep) {
  const samples = await loadAll(ctx, id);
  const names = targets.map((t) => t.name);
  const baseline = rep.baseline || names[0];
  // B defaults to the model under test: the candidate, else the first target that is neither
  // the baseline nor the prompted (k-shot) baseline the gateway adds to every task eval
  const cand = targets.find((t) => t.role === "candidate")?.name
    || targets.find((t) => t.name !== baseline && t.role !== "base_kshot")?.name
    || names.find((n) => n !== baseline) || baseline;
  const opt = (sel) => names.map((n) => h("option", { value: n, selected: n === sel }, n));
  const a = h("select", { id: "cmp-a" }, opt(baseline));
  const b = h("select", { id: "cmp-b" }, opt(cand));
  const suite = h("select", { id: "cmp-suite" }, h("option", { value: "task" }, "held-out task"),
    h("option", { value: "general" }, "general suite (forgetting)"));
  const filter = h("select", { id: "cmp-filter" },
    h("option", { value: "all" }, "all examples"),
    h("option", { value: "b-wrong-a-right" }, "B wrong / A right (regressions)"),
    h("option", { value: "b-right-a-wrong" }, "B right / A wrong (wins)"),
    h("option", { value: "differ" }, "outputs differ"));
  const count = h("p", { class: "hint", id: "cmp-count", "aria-live": "polite" });
  const list = h("div", { id: "samples" });
  const render = () => {
    const A = a.value, B = b.value;
    let items = samples.filter((s) => s.suite === suite.value);
    const f = filter.value;
    const both = (s) => score(s, A) != null && score(s, B) != null;
    if (f === "b-wrong-a-right") items = items.filter((s) => both(s) && score(s, B) < score(s, A));
    if (f === "b-right-a-wrong") items = items.filter((s) => both(s) && score(s, B) > score(s, A));
    if (f === "differ") items = items.filter((s) => s.outputs?.[A]?.output !== s.outputs?.[B]?.output);
    count.textContent = `${items.length} example(s) shown` + (items.length > 100 ? " (first 100)" : "");
    fill(list, ...items.slice(0, 100).map((s) => sampleCard(s, A, B)));
  };
  for (const el of [a, b, suite, filter]) el.addEventListener("change", render);
  render();
  return h("div", {},
    h("p", { class: "hint" }, "Each answer is compared with the other column word by word: ",
      h("del", { class: "diff" }, "only in A"), " ", h("ins", { class: "diff" }, "only in B"),
      ". In the task suite, right/wrong is the example's score (B lower than A = a regression); in the general suite, correct or not."),
    h("div", { class: "toolbar" },
      ...[["A (reference side)", a], ["B (compared)", b], ["Suite", suite], ["Filter", filter]].map(([l, el]) =>
        h("div", { class: "field" }, h("label", { for: el.id }, l), el))),
    count, list);
}

function sampleCard(s, A, B) {
  const oa = s.outputs?.[A] || {}, ob = s.outputs?.[B] || {};
  const parts = wordDiff(oa.output ?? oa.error ?? "", ob.output ?? ob.error ?? "");
  const sa = score(s, A), sb = score(s, B);
  const verdict = sa == null || sb == null ? badge("incomplete", "not answered")
    : sb > sa ? badge("succeeded", "B better") : sb < sa ? badge("failed", "B worse") : badge("info", "same score");
  const col = (name, o, sc, side) => h("div", { class: "side", dataset: { target: name } },
    h("strong", {}, name), " ", h("span", { class: "hint" }, `score ${fmt.num(sc, 2)}`,
      o.latency_ms != null ? ` · ${fmt.num(o.latency_ms, 0)} ms` : ""),
    o.error ? h("p", { class: "error" }, o.error) : null, diffView(parts, side));
  return h("article", { class: "sample", dataset: { index: s.index, suite: s.suite } },
    h("header", {}, h("strong", {}, s.suite === "task" ? `example ${s.index + 1}${s.line ? ` (line ${s.line})` : ""}` : `general ${s.id || s.index}`), verdict),
    h("details", {}, h("summary", {}, "Prompt"), h("pre", {}, text(s.prompt))),
    h("div", { class: "sbs" },
      h("div", { class: "side" }, h("strong", {}, "reference"), h("div", { class: "out" }, text(s.reference))),
      col(A, oa, sa, "a"), col(B, ob, sb, "b")));
}
