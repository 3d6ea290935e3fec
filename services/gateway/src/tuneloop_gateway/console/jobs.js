// Jobs: the queue, a new-job form, and the live job page (events streamed, no reload).
import { api, sse } from "./api.js";
import { badge, cards, chartBox, confirmDialog, fill, fmt, guarded, h, link, modelLink, table } from "./ui.js";

const FINAL = ["succeeded", "failed", "cancelled"];

export function jobsTable(rows) {
  return table([
    { label: "job", get: (j) => link(`#/jobs/${j.id}`, j.id) },
    { label: "status", get: (j) => badge(j.status) },
    { label: "progress", get: (j) => j.progress?.total_steps ? `${j.progress.step ?? 0} / ${j.progress.total_steps}` : "–" },
    { label: "dataset", get: (j) => link(`#/datasets/${j.dataset_id}`, j.dataset_id) },
    { label: "base", get: (j) => h("code", {}, String(j.base_model).split("/").slice(-1)[0]) },
    { label: "model", get: (j) => modelLink(j.model_id) },
    { label: "created", get: (j) => fmt.time(j.created_at) },
  ], rows, { empty: "No job yet." });
}

export async function list(ctx) {
  const [jobs, datasets] = await Promise.all([
    api("/v1/jobs?limit=50", { signal: ctx.signal }),
    api("/v1/datasets?limit=100", { signal: ctx.signal }).catch(() => ({ data: [] })),
  ]);
  const tableBox = h("div", { id: "jobs-table" }, jobsTable(jobs.data));
  fill(ctx.main, 
    h("h1", {}, "Jobs"),
    h("section", { class: "panel", "aria-labelledby": "new-h" }, h("h2", { id: "new-h" }, "New fine-tune"),
      newJobForm(datasets.data, jobs.data, ctx.query.get("dataset"))),
    h("section", { class: "panel", "aria-labelledby": "q-h" }, h("h2", { id: "q-h" }, "Queue"),
      h("p", { class: "hint" }, "One job runs at a time (FIFO); this list refreshes every 5 s."), tableBox));
  ctx.every(5000, async () => {
    const fresh = await api("/v1/jobs?limit=50", { signal: ctx.signal }).catch(() => null);
    if (fresh) fill(tableBox, jobsTable(fresh.data));
  });
}

function field(label, input) {
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

function newJobForm(datasets, jobs, preselect) {
  const ds = h("select", { id: "job-dataset", required: true },
    datasets.map((d) => h("option", { value: d.id, selected: d.id === preselect }, `${d.name || d.id} (${d.id}, ${d.counts?.train ?? "?"} train)`)));
  const base = h("input", { id: "job-base", required: true, size: 34, value: jobs[0]?.base_model || "",
    placeholder: "var/artifacts/base/smollm2-135m-instruct" });
  const backend = h("select", { id: "job-backend" }, ["auto", "peft", "unsloth"].map((b) => h("option", { value: b }, b)));
  // empty = the trainer chooses for its device and the model (the estimate shows what and why)
  const epochs = h("input", { id: "job-epochs", type: "number", step: "any", min: "0.01", placeholder: "auto" });
  const lr = h("input", { id: "job-lr", type: "number", step: "any", min: "0", placeholder: "auto" });
  const seq = h("input", { id: "job-max-seq", type: "number", min: "16", placeholder: "2048" });
  const estimateBtn = h("button", { type: "button", id: "job-estimate" }, "Estimate (dry run)");
  const estimateBox = h("pre", { id: "job-estimate-out", class: "estimate", hidden: true });
  const extra = h("textarea", { id: "job-extra", placeholder: '{"max_steps": 100, "eval_steps": 10, "eval_strategy": "steps"}' });
  const submit = h("button", { type: "submit", class: "primary" }, "Start training");
  const form = h("form", {}, h("div", { class: "toolbar" }, field("Dataset version", ds), field("Base model", base),
    field("Backend", backend), field("Epochs", epochs), field("Learning rate", lr), field("max_seq_length", seq)),
  h("details", {}, h("summary", {}, "More hyperparameters (JSON)"), field("Hyperparameters", extra)),
  estimateBox, h("div", { class: "actions" }, estimateBtn, submit));
  const jobBody = () => {
    let more = {};
    if (extra.value.trim()) {
      try { more = JSON.parse(extra.value); } catch (e) {
        guarded(() => { throw { message: `hyperparameters: ${e.message}`, code: "invalid_json", param: "hyperparameters" }; });
        return null;
      }
    }
    const hp = {};
    if (epochs.value) hp.num_train_epochs = Number(epochs.value);
    if (lr.value) hp.learning_rate = Number(lr.value);
    if (seq.value) hp.max_seq_length = Number(seq.value);
    return { dataset_id: ds.value, base_model: base.value.trim(), backend: backend.value,
      hyperparameters: { ...hp, ...more } };
  };
  estimateBtn.addEventListener("click", async () => {
    const body = jobBody();
    if (!body) return;
    estimateBtn.disabled = true;
    const est = await guarded(() => api("/v1/jobs", { method: "POST", json: { ...body, dry_run: true } }));
    estimateBtn.disabled = false;
    if (est) { estimateBox.textContent = estimateText(est); estimateBox.hidden = false; }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = jobBody();
    if (!body) return;
    submit.disabled = true;
    const job = await guarded(() => api("/v1/jobs", { method: "POST", json: body }));
    submit.disabled = false;
    if (job) location.hash = `#/jobs/${job.id}`;
  });
  return form;
}

/** A dry run in words: what the job would choose, how long, how much memory, whether it fits. */
function estimateText(e) {
  const gib = (b) => ((b || 0) / 2 ** 30).toFixed(1);
  const hp = e.hyperparameters || {};
  return [
    `${e.rows.train} train rows, ${e.tokens.train.toLocaleString()} tokens (median row ${e.tokens.median}, ${e.tokens.truncated_rows} truncated)`,
    `${e.backend} on ${e.device.name}: batch ${hp.per_device_train_batch_size} x ${hp.gradient_accumulation_steps}, packing ${hp.packing}, 4-bit ${hp.load_in_4bit}, checkpointing ${hp.gradient_checkpointing}`,
    `${e.steps.total} steps (${e.steps.per_epoch}/epoch x ${hp.num_train_epochs}), learning rate ${hp.learning_rate}`,
    `memory ~${gib(e.memory.peak_bytes)} GiB of ${gib(e.device.free_bytes)} GiB free: ${e.fits ? "fits" : "DOES NOT FIT"}`,
    `time ~${(e.time.train_seconds / 60).toFixed(1)} min at ~${Math.round(e.time.tokens_per_s).toLocaleString()} tokens/s (${e.time.basis})`,
    ...(e.chosen || []).map((c) => `chosen ${c.setting}=${c.value}: ${c.why}`),
  ].join("\n");
}

/** Run the gate now: deploy, evaluate against base and production, promote only if it passes. */
function gateButton(jobId, done) {
  const b = h("button", { type: "button", id: "run-gate" }, "Run the gate now…");
  b.addEventListener("click", async () => {
    if (!(await confirmDialog("Deploy this job's model, evaluate it against the base and production, and " +
      "promote the alias if every check passes?", "Run the gate"))) return;
    b.disabled = true;
    b.textContent = "Gating (deploy + evaluate)…";
    await guarded(() => api("/v1/promotions/gate", { method: "POST", json: { job_id: jobId } }));
    b.disabled = false;
    b.textContent = "Run the gate now…";
    done();
  });
  return b;
}

export async function detail(ctx, id) {
  let job = await api(`/v1/jobs/${id}`, { signal: ctx.signal });
  const series = { loss: [], eval: [], lr: [], tps: [] };
  const warnings = [];
  const log = [];
  let best = null; // {step, eval_loss, key}

  const status = h("span", { id: "job-status" }, badge(job.status));
  const cancel = h("button", { type: "button", class: "danger", id: "job-cancel", hidden: FINAL.includes(job.status) }, "Cancel job");
  cancel.addEventListener("click", async () => {
    if (!(await confirmDialog(`Cancel ${id}? The running process is stopped; checkpoints stay.`, "Cancel job"))) return;
    const j = await guarded(() => api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
    if (j) update(j);
  });
  const cardsBox = h("div", { id: "job-cards" });
  const bestBox = h("p", { id: "best-checkpoint" });
  const warnBox = h("ul", { class: "warnings", id: "job-warnings" });
  const logBox = h("pre", { id: "job-log" });
  const resultBox = h("div", { id: "job-result" });
  const live = h("p", { class: "hint", id: "stream-state", "aria-live": "polite" }, "connecting to the event stream…");

  const lossChart = chartBox(ctx, { id: "loss", label: "Training loss and eval loss per step", config: {
    type: "line",
    data: { datasets: [
      { label: "train loss", data: series.loss, borderColor: "#0b57d0", backgroundColor: "#0b57d0", pointRadius: 2 },
      { label: "eval loss", data: series.eval, borderColor: "#b3261e", backgroundColor: "#b3261e", pointRadius: 3, borderDash: [6, 3] },
      { label: "best checkpoint", data: [], borderColor: "#146c2e", backgroundColor: "#146c2e", pointRadius: 9, pointStyle: "star", showLine: false },
    ] },
    options: { maintainAspectRatio: false, animation: false, parsing: false,
      plugins: { legend: { labels: { usePointStyle: true } } },
      scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: "loss" } } } },
  } });
  const small = (id2, label, data, color, y) => chartBox(ctx, { id: id2, label, small: true, config: {
    type: "line", data: { datasets: [{ label, data, borderColor: color, backgroundColor: color, pointRadius: 1 }] },
    options: { maintainAspectRatio: false, animation: false, parsing: false, plugins: { legend: { display: false }, title: { display: true, text: label } },
      scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: y } } } } } });
  const lrChart = small("lr", "learning rate", series.lr, "#6b2fa0", "lr");
  const tpsChart = small("tps", "tokens per second", series.tps, "#00696f", "tokens/s");

  fill(ctx.main, 
    h("h1", {}, "Job ", h("code", {}, id), " ", status),
    h("div", { class: "toolbar" }, link(`#/datasets/${job.dataset_id}`, `dataset ${job.dataset_id}`),
      h("span", { class: "muted" }, `base ${job.base_model} · backend ${job.resolved_backend || job.backend}`), cancel),
    live, cardsBox,
    h("section", { class: "panel", "aria-labelledby": "c-h" }, h("h2", { id: "c-h" }, "Loss"), lossChart, bestBox),
    h("div", { class: "grid two" }, h("section", { class: "panel" }, lrChart), h("section", { class: "panel" }, tpsChart)),
    h("section", { class: "panel", "aria-labelledby": "w-h" }, h("h2", { id: "w-h" }, "Warnings"), warnBox),
    resultBox,
    h("details", { class: "panel" }, h("summary", {}, "Event log"), logBox));

  function update(j) {
    job = j;
    fill(status, badge(j.status));
    cancel.hidden = FINAL.includes(j.status);
    const p = j.progress || {};
    fill(cardsBox, cards([
      ["step", p.total_steps ? `${p.step ?? 0} / ${p.total_steps}` : "–", "step"],
      ["epoch", fmt.num(p.epoch, 2)], ["loss", fmt.num(p.loss, 4), "loss"], ["eval loss", fmt.num(p.eval_loss, 4), "eval_loss"],
      ["learning rate", fmt.sci(p.learning_rate)], ["tokens/s", fmt.num(p.tokens_per_s, 1), "tokens_per_s"],
      ["ETA", FINAL.includes(j.status) ? "–" : fmt.dur(p.eta_s), "eta"],
      ["peak memory", fmt.bytes(p.peak_gpu_bytes || p.peak_rss_bytes)]]));
    if (j.error) fill(resultBox, h("section", { class: "panel" }, h("h2", {}, "Error"),
      h("p", { class: "error" }, `${j.error.code}: ${j.error.message}`)));
  }
  update(job);

  function redraw() {
    for (const box of [lossChart, lrChart, tpsChart]) box.chart?.update("none");
    lossChart.dataset.points = String(series.loss.length);
    lossChart.dataset.evalPoints = String(series.eval.length);
  }
  for (const box of [lossChart, lrChart, tpsChart]) box.addEventListener("chart-ready", redraw);

  function markBest() {
    const ds = lossChart.chart?.data.datasets[2];
    if (best) {
      if (ds) ds.data = [{ x: best.step, y: best.eval_loss }];
      fill(bestBox, h("strong", {}, "Best checkpoint: "), `step ${best.step}, eval loss ${fmt.num(best.eval_loss, 4)}`,
        best.key ? h("span", { class: "hint" }, ` (${best.key})`) : null);
    }
  }

  function onEvent(e) {
    const d = e.data || {};
    log.push(`${fmt.time(e.created_at)} ${e.type} ${JSON.stringify(d)}`);
    if (log.length > 400) log.shift();
    if (e.type === "metrics") {
      if (d.loss != null) series.loss.push({ x: d.step, y: d.loss });
      if (d.learning_rate != null) series.lr.push({ x: d.step, y: d.learning_rate });
      if (d.tokens_per_s != null) series.tps.push({ x: d.step, y: d.tokens_per_s });
      job.progress = { ...job.progress, ...d };
      update(job);
    } else if (e.type === "eval" && d.eval_loss != null) {
      series.eval.push({ x: d.step, y: d.eval_loss });
      job.progress = { ...job.progress, eval_loss: d.eval_loss };
      if (!best || d.eval_loss < best.eval_loss) best = { step: d.step, eval_loss: d.eval_loss };
      update(job);
    } else if (e.type === "checkpoint" && best && d.step === best.step) {
      best.key = d.key;
    } else if (e.type === "warning" || e.type === "error") {
      warnings.push(d);
      fill(warnBox, ...warnings.map((w) => h("li", { dataset: { code: w.code || "" } },
        h("strong", {}, w.code || e.type), ": ", w.message || JSON.stringify(w))));
    } else if (e.type === "state") {
      job.status = d.status || job.status;
      update(job);
    }
  }

  async function finish() {
    const j = await api(`/v1/jobs/${id}`, { signal: ctx.signal });
    update(j);
    if (!j.model_id) return;
    const [mv, decisions] = await Promise.all([
      api(`/v1/models/${j.model_id}`, { signal: ctx.signal }).catch(() => null),
      api(`/v1/promotions?job_id=${id}`, { signal: ctx.signal }).catch(() => ({ data: [] })),
    ]);
    if (mv?.metrics?.best_checkpoint) {
      const m = mv.metrics;
      const step = Number(String(m.best_checkpoint).match(/(\d+)\/?$/)?.[1]);
      if (step && m.best_eval_loss != null) best = { step, eval_loss: m.best_eval_loss, key: m.best_checkpoint };
      markBest();
      redraw();
    }
    fill(resultBox, h("section", { class: "panel", "aria-labelledby": "r-h" }, h("h2", { id: "r-h" }, "Result"),
      h("p", {}, "Model version ", modelLink(j.model_id), " (lineage, export checks, promote/rollback)."),
      decisions.data.length ? table([{ label: "gate decision", get: (p) => badge(p.status) },
        { label: "alias", get: (p) => p.alias || "–" }, { label: "reasons", get: (p) => (p.reasons || []).join("; ") || "–" },
        { label: "eval", get: (p) => p.eval_id ? link(`#/evals/${p.eval_id}`, p.eval_id) : "–" }], decisions.data)
        : h("p", { class: "muted" }, "No gate decision for this job yet (with auto-promote on, the gateway gates every succeeded job). ",
          gateButton(j.id, () => guarded(finish)))));
  }

  let lastId = null, ended = false, pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; redraw(); markBest(); logBox.textContent = log.slice(-200).join("\n"); }, 250);
  };
  (async () => {
    while (!ended && !ctx.signal.aborted) {
      try {
        for await (const ev of sse(`/v1/jobs/${id}/events/stream`, { signal: ctx.signal, lastEventId: lastId })) {
          if (ev.id != null) lastId = ev.id;
          if (ev.event === "end") { ended = true; break; }
          onEvent(ev.data);
          live.textContent = `live: ${series.loss.length} loss points, last event ${ev.data?.type}`;
          schedule();
        }
      } catch (e) {
        if (e.name === "AbortError") return;
        live.textContent = `stream interrupted (${e.message}); reconnecting…`;
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      if (!ended) await new Promise((r) => setTimeout(r, 1000));
    }
    if (ctx.signal.aborted) return;
    live.textContent = `finished: ${series.loss.length} loss points, ${series.eval.length} eval points`;
    if (!warnings.length) fill(warnBox, h("li", { class: "muted" }, "No warnings."));
    redraw(); markBest();
    logBox.textContent = log.slice(-200).join("\n");
    await guarded(finish);
  })();
}
