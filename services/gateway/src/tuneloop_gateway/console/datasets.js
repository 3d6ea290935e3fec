// Datasets: versions, upload, the quality report, synthetic drafts with review.
import { api } from "./api.js";
import { badge, cards, chartBox, fill, fmt, guarded, h, link, table } from "./ui.js";

export async function list(ctx) {
  const [ds, syn] = await Promise.all([
    api("/v1/datasets?limit=100", { signal: ctx.signal }),
    api("/v1/synthetic/jobs?limit=20", { signal: ctx.signal }).catch(() => ({ data: [] })),
  ]);
  fill(ctx.main, 
    h("h1", {}, "Datasets"),
    h("section", { class: "panel", "aria-labelledby": "up-h" }, h("h2", { id: "up-h" }, "Upload a JSONL file"),
      uploadForm()),
    h("section", { class: "panel", "aria-labelledby": "ver-h" }, h("h2", { id: "ver-h" }, "Versions"),
      table([
        { label: "id", get: (d) => link(`#/datasets/${d.id}`, d.id) },
        { label: "name", get: (d) => d.name || "–" },
        { label: "rows (train / eval)", get: (d) => `${fmt.num(d.counts?.valid)} (${fmt.num(d.counts?.train)} / ${fmt.num(d.counts?.eval)})` },
        { label: "format", get: (d) => d.format || "–" },
        { label: "warnings", get: (d) => d.warnings?.length ? badge("warning", String(d.warnings.length)) : "0" },
        { label: "created", get: (d) => fmt.time(d.created_at) },
      ], ds.data, { empty: "No dataset yet: upload one above." })),
    h("section", { class: "panel", "aria-labelledby": "syn-h" }, h("h2", { id: "syn-h" }, "Synthetic drafts"),
      h("p", { class: "hint" }, "Rows written by a teacher model wait here for review; accepted rows become a new version."),
      table([
        { label: "id", get: (j) => link(`#/synthetic/${j.id}`, j.id) },
        { label: "status", get: (j) => badge(j.status) },
        { label: "pending / accepted / rejected", get: (j) => `${j.rows?.pending ?? 0} / ${j.rows?.accepted ?? 0} / ${j.rows?.rejected ?? 0}` },
        { label: "published", get: (j) => j.dataset_id ? link(`#/datasets/${j.dataset_id}`, j.dataset_id) : "–" },
        { label: "created", get: (j) => fmt.time(j.created_at) },
      ], syn.data, { empty: "No synthetic drafts." }),
      h("details", {}, h("summary", {}, "Start a synthetic-data job"), synthForm())));
}

function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 8)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("span", { class: "hint" }, hint) : null);
}

function uploadForm() {
  const file = h("input", { type: "file", name: "file", accept: ".jsonl,.json,application/jsonl", required: true, id: "upload-file" });
  const name = h("input", { name: "name", id: "upload-name", placeholder: "tickets" });
  const evalSize = h("input", { name: "eval_size", type: "number", min: "1", id: "upload-eval-size", placeholder: "auto" });
  const maxSeq = h("input", { name: "max_seq_length", type: "number", min: "16", id: "upload-max-seq", placeholder: "2048" });
  const onInvalid = h("select", { name: "on_invalid", id: "upload-on-invalid" },
    h("option", { value: "reject" }, "reject the file"), h("option", { value: "skip" }, "skip bad lines"));
  const submit = h("button", { type: "submit", class: "primary" }, "Upload and check");
  const form = h("form", { class: "inline", id: "upload-form" },
    field("File (JSONL)", file, "instruction/input/output or chat messages"), field("Name", name),
    field("Eval rows", evalSize), field("max_seq_length", maxSeq), field("Invalid lines", onInvalid), submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData();
    data.append("file", file.files[0]);
    for (const el of [name, evalSize, maxSeq, onInvalid]) if (el.value) data.append(el.name, el.value);
    submit.disabled = true;
    submit.textContent = "Uploading…";
    const ds = await guarded(() => api("/v1/datasets", { method: "POST", form: data }));
    submit.disabled = false;
    submit.textContent = "Upload and check";
    if (ds) location.hash = `#/datasets/${ds.id}`;
  });
  return form;
}

export async function detail(ctx, id) {
  const [ds, report] = await Promise.all([
    api(`/v1/datasets/${id}`, { signal: ctx.signal }),
    api(`/v1/datasets/${id}/report`, { signal: ctx.signal }),
  ]);
  const c = report.counts || {};
  const warnings = report.warnings || [];
  fill(ctx.main, 
    h("h1", {}, `Dataset ${ds.name || ""} `, h("code", {}, ds.id)),
    h("div", { class: "toolbar" },
      link(`#/jobs?dataset=${ds.id}`, "Fine-tune on this version →"),
      link(`#/evals?dataset=${ds.id}`, "Evaluate models on its eval split →")),
    cards([["lines", fmt.num(c.total_lines), "total"], ["valid", fmt.num(c.valid), "valid"],
      ["invalid", fmt.num(c.invalid), "invalid"], ["train", fmt.num(c.train), "train"],
      ["eval", fmt.num(c.eval), "eval"], ["format", report.format || ds.format],
      ["size", report.size?.level || "–"], ["in use by", String(ds.in_use_by?.length || 0)]]),
    h("section", { class: "panel", "aria-labelledby": "w-h" }, h("h2", { id: "w-h" }, `Warnings (${warnings.length})`),
      warnings.length ? h("ul", { class: "warnings", id: "dataset-warnings" },
        warnings.map((w) => h("li", { dataset: { code: w.code } }, h("strong", {}, w.code), ": ", w.message)))
        : h("p", { class: "muted" }, "None."),
      report.size?.advice ? h("p", { class: "hint" }, "Size advice: ", report.size.advice) : null),
    h("div", { class: "grid two" },
      tokensPanel(ctx, report),
      h("section", { class: "panel", "aria-labelledby": "q-h" }, h("h2", { id: "q-h" }, "Duplicates and leakage"),
        findingsTable(report), h("p", { class: "hint" },
          "Lines of an uploaded eval file are shown negative. Leakage = eval rows that also appear in train."))),
    h("section", { class: "panel", "aria-labelledby": "p-h" }, h("h2", { id: "p-h" }, "Chat-template preview"),
      h("p", { class: "hint" }, "The first rows exactly as training sees them",
        report.tokens?.tokenizer ? ` (tokenizer ${report.tokens.tokenizer})` : " (raw messages: no tokenizer)", "."),
      (report.preview || []).map((p) => h("div", {}, h("h3", {}, `line ${p.line}`),
        h("pre", { class: "preview" }, p.text ?? JSON.stringify(p.messages ?? p, null, 2))))),
    report.errors?.length ? h("section", { class: "panel" }, h("h2", {}, "Line errors"),
      table([{ label: "line", get: (e) => e.line }, { label: "field", get: (e) => e.field ?? "–" },
        { label: "code", get: (e) => e.code }, { label: "message", get: (e) => e.message }], report.errors)) : null,
    h("details", { class: "panel" }, h("summary", {}, "Raw report (JSON)"), h("pre", {}, JSON.stringify(report, null, 2))));
}

function tokensPanel(ctx, report) {
  const t = report.tokens;
  const sec = h("section", { class: "panel", "aria-labelledby": "t-h" }, h("h2", { id: "t-h" }, "Token lengths"));
  if (!t) { sec.append(h("p", { class: "muted" }, report.tokens_note || "No token statistics.")); return sec; }
  const edges = t.histogram.edges, counts = t.histogram.counts, max = t.max_seq_length;
  const labels = counts.map((_, i) => `${edges[i]}–${edges[i + 1]}`);
  const over = counts.map((_, i) => edges[i + 1] > max);
  sec.append(
    h("p", {}, `max_seq_length = ${max}: `, h("strong", { id: "truncated-rows" }, `${fmt.num(t.truncated?.rows || 0)} row(s) truncated`),
      t.truncated?.lines?.length ? h("span", { class: "hint" }, ` (lines ${t.truncated.lines.slice(0, 20).join(", ")}${t.truncated.lines.length > 20 ? ", …" : ""})`) : null),
    chartBox(ctx, {
      id: "token-histogram",
      label: `Histogram of tokens per row; ${t.truncated?.rows || 0} rows exceed max_seq_length ${max}`,
      config: {
        type: "bar",
        data: { labels, datasets: [{ label: "rows", data: counts,
          backgroundColor: over.map((o) => (o ? "#b3261e" : "#0b57d0")) }] },
        options: { maintainAspectRatio: false, animation: false,
          plugins: { legend: { display: false }, title: { display: true, text: `tokens per row (red: beyond max_seq_length ${max})` } },
          scales: { x: { title: { display: true, text: "tokens" } }, y: { title: { display: true, text: "rows" }, beginAtZero: true } } },
      },
    }),
    table(["min", "p50", "p90", "p95", "p99", "max", "mean"].map((k) => ({ label: k, get: (r) => fmt.num(r[k], 1) })), [t]),
    h("details", {}, h("summary", {}, "Histogram as a table"),
      table([{ label: "tokens", get: (r) => r[0] }, { label: "rows", get: (r) => r[1] }], labels.map((l, i) => [l, counts[i]]))));
  return sec;
}

function examples(ex) {
  if (!ex || !ex.length) return "–";
  return ex.slice(0, 8).map((e) => Array.isArray(e) ? `lines ${e.join(" & ")}` :
    typeof e === "object" ? Object.entries(e).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(", ") : v}`).join(" ") : String(e))
    .join("; ") + (ex.length > 8 ? "; …" : "");
}

function findingsTable(report) {
  const d = report.duplicates || {}, l = report.leakage || {}, o = report.outputs || {};
  const rows = [
    ["exact duplicates", d.exact?.rows, examples(d.exact?.examples)],
    ["near duplicates", d.near?.checked === false ? "not checked" : d.near?.rows, examples(d.near?.examples)],
    ["leakage: exact", l.exact?.rows, examples(l.exact?.examples)],
    ["leakage: same prompt", l.same_prompt?.rows, examples(l.same_prompt?.examples)],
    ["leakage: near", l.near?.checked === false ? "not checked" : l.near?.rows, examples(l.near?.examples)],
    ["JSON answers", o.json, ""],
    ["JSON-looking answers that do not parse", o.json_like_invalid?.rows, examples(o.json_like_invalid?.lines)],
    ["very short answers", o.very_short?.rows, examples(o.very_short?.lines)],
  ];
  return table([{ label: "finding", get: (r) => r[0] },
    { label: "rows", get: (r) => (typeof r[1] === "number" && r[1] > 0 && r[0] !== "JSON answers") ? badge("warning", String(r[1])) : fmt.num(r[1]) },
    { label: "where", get: (r) => r[2] }], rows);
}

// ---- synthetic drafts ------------------------------------------------------------------------

function synthForm() {
  const base = h("input", { id: "syn-base-url", required: true, placeholder: "http://teacher:8000/v1", size: 30 });
  const model = h("input", { id: "syn-model", required: true, placeholder: "teacher model" });
  const key = h("input", { id: "syn-key", type: "password", autocomplete: "off", placeholder: "optional" });
  const instruction = h("textarea", { id: "syn-instruction", required: true },
    "Summarize this support ticket and classify its urgency.");
  const mode = h("select", { id: "syn-mode" }, h("option", { value: "examples" }, "examples (teacher writes rows)"),
    h("option", { value: "completions" }, "completions (teacher answers inputs)"));
  const seeds = h("textarea", { id: "syn-seeds", placeholder: '{"instruction": "...", "input": "...", "output": "..."} one per line' });
  const inputs = h("textarea", { id: "syn-inputs", placeholder: "completions mode: one input per line" });
  const n = h("input", { id: "syn-n", type: "number", min: "1", value: "20" });
  const form = h("form", { id: "syn-form" }, h("div", { class: "toolbar" }, field("Teacher base URL", base), field("Teacher model", model),
    field("Teacher API key", key), field("Mode", mode), field("Rows wanted", n)),
  field("Instruction", instruction), field("Seed examples (JSONL)", seeds), field("Inputs", inputs),
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Start")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {
      teacher: { base_url: base.value, model: model.value, ...(key.value ? { api_key: key.value } : {}) },
      instruction: instruction.value, mode: mode.value, n: Number(n.value),
      seed_examples: seeds.value.split("\n").filter((l) => l.trim()).map((l) => { try { return JSON.parse(l); } catch { return l; } }),
    };
    if (inputs.value.trim()) body.inputs = inputs.value.split("\n").filter((l) => l.trim());
    const job = await guarded(() => api("/v1/synthetic/jobs", { method: "POST", json: body }));
    if (job) location.hash = `#/synthetic/${job.id}`;
  });
  return form;
}

export async function synthetic(ctx, id) {
  const job = await api(`/v1/synthetic/jobs/${id}`, { signal: ctx.signal });
  const status = ctx.query.get("status") || "pending";
  const rows = await api(`/v1/synthetic/jobs/${id}/rows?status=${status}&limit=200`, { signal: ctx.signal });
  const review = async (body) => {
    if (await guarded(() => api(`/v1/synthetic/jobs/${id}/review`, { method: "POST", json: body }))) synthetic(ctx, id);
  };
  const publish = h("button", { type: "button", class: "primary", id: "syn-publish", disabled: !job.rows?.accepted },
    `Publish ${job.rows?.accepted || 0} accepted row(s) as a dataset version`);
  publish.addEventListener("click", async () => {
    const ds = await guarded(() => api(`/v1/synthetic/jobs/${id}/publish`, { method: "POST" }));
    if (ds) location.hash = `#/datasets/${ds.id}`;
  });
  const filter = h("select", { id: "syn-filter", "aria-label": "Show rows" },
    ["pending", "accepted", "rejected"].map((s) => h("option", { value: s, selected: s === status }, s)));
  filter.addEventListener("change", () => { location.hash = `#/synthetic/${id}?status=${filter.value}`; });
  const p = job.progress || {};
  fill(ctx.main, 
    h("h1", {}, "Synthetic draft ", h("code", {}, id), " ", badge(job.status)),
    cards([["pending", fmt.num(job.rows?.pending)], ["accepted", fmt.num(job.rows?.accepted)],
      ["rejected", fmt.num(job.rows?.rejected)], ["teacher calls", fmt.num(p.requests)],
      ["parse failures", fmt.num(p.parse_failures)], ["duplicates dropped", fmt.num((p.duplicates || 0) + (p.near_duplicates || 0))]]),
    job.error ? h("p", { class: "error" }, `${job.error.code || ""}: ${job.error.message || ""}`) : null,
    h("div", { class: "toolbar" }, field("Show", filter),
      status === "pending" && rows.data.length ? h("button", { type: "button", onclick: () => review({ accept_all_pending: true }) }, "Accept all pending") : null,
      publish),
    h("section", { class: "panel" }, h("h2", {}, `${status} rows`),
      rows.data.length ? rows.data.map((r) => h("div", { class: "sample", dataset: { row: r.id } },
        h("header", {}, h("strong", {}, `#${r.index}`), badge(r.status),
          h("button", { type: "button", onclick: () => review({ accept: [r.id] }), "aria-label": `Accept row ${r.index}` }, "Accept"),
          h("button", { type: "button", onclick: () => review({ reject: [r.id] }), "aria-label": `Reject row ${r.index}` }, "Reject")),
        (r.messages || []).map((m) => h("div", {}, h("span", { class: "badge info" }, m.role), " ", h("span", { class: "out" }, m.content)))))
        : h("p", { class: "muted" }, "No rows here.")));
  if (job.status === "running" || job.status === "queued") setTimeout(() => !ctx.signal.aborted && synthetic(ctx, id), 3000);
}
