"""Trainer metrics (prefix ``tuneloop_trainer_``): jobs by state, queue depth, and the live
training numbers of running jobs (step time, tokens/s, train/eval loss, GPU memory)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from tuneloop.metrics import ServiceMetrics

STATES = ("validating", "queued", "running", "succeeded", "failed", "cancelled")


class TrainerMetrics(ServiceMetrics):
    def __init__(self) -> None:
        super().__init__("trainer")
        r, n = self.registry, self.name
        self.jobs = Gauge(n("jobs"), "Jobs by state.", ["state"], registry=r)
        self.queue_depth = Gauge(n("queue_depth"), "Jobs waiting to run.", registry=r)
        self.running = Gauge(n("running_jobs"), "Jobs running now.", registry=r)
        self.step_time = Gauge(n("step_time_seconds"), "Seconds per optimizer step (running jobs).",
                               ["job_id"], registry=r)
        self.tokens_per_s = Gauge(n("tokens_per_second"), "Training tokens/s (running jobs).",
                                  ["job_id"], registry=r)
        self.train_loss = Gauge(n("train_loss"), "Last train loss (running jobs).", ["job_id"], registry=r)
        self.eval_loss = Gauge(n("eval_loss"), "Last eval loss (running jobs).", ["job_id"], registry=r)
        self.progress = Gauge(n("progress_ratio"), "step / total steps (running jobs).", ["job_id"],
                              registry=r)
        self.gpu_memory = Gauge(n("gpu_memory_peak_bytes"), "Peak GPU memory (running jobs, GPU only).",
                                ["job_id"], registry=r)
        self.finished = Counter(n("jobs_finished_total"), "Jobs that reached a final state.",
                                ["state"], registry=r)
        self.duration = Histogram(n("job_duration_seconds"), "Job wall time, start to end.",
                                  buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
                                  registry=r)
        self.callbacks = Counter(n("callbacks_total"), "Success callbacks by outcome.", ["outcome"],
                                 registry=r)
        self._live = (self.step_time, self.tokens_per_s, self.train_loss, self.eval_loss,
                      self.progress, self.gpu_memory)

    def set_counts(self, counts: dict[str, int]) -> None:
        for s in STATES:
            self.jobs.labels(s).set(counts.get(s, 0))
        self.queue_depth.set(counts.get("queued", 0))
        self.running.set(counts.get("running", 0))

    def observe_progress(self, job_id: str, p: dict) -> None:
        pairs = ((self.step_time, p.get("step_time_s")), (self.tokens_per_s, p.get("tokens_per_s")),
                 (self.train_loss, p.get("loss")), (self.eval_loss, p.get("eval_loss")),
                 (self.gpu_memory, p.get("peak_gpu_bytes")))
        for gauge, value in pairs:
            if isinstance(value, (int, float)):
                gauge.labels(job_id).set(value)
        if p.get("total_steps"):
            self.progress.labels(job_id).set((p.get("step") or 0) / p["total_steps"])

    def forget(self, job_id: str) -> None:
        for gauge in self._live:
            try:
                gauge.remove(job_id)
            except KeyError:
                pass
