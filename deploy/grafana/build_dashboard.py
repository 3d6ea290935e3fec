"""Build deploy/grafana/dashboards/tuneloop.json: one metrics story from training to serving.

Run: python deploy/grafana/build_dashboard.py  (tests check the JSON is current and that every
metric it queries is defined by a service).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "tuneloop.json"

# (row title, [(panel title, unit, [promql...])])
ROWS = [
    ("Data", [
        ("Uploads by result", "short", ['sum by (result) (rate(tuneloop_dataset_uploads_total[5m]))']),
        ("Rows validated / s", "short", ['rate(tuneloop_dataset_rows_validated_total[5m])']),
        ("Dataset versions stored", "short", ['tuneloop_dataset_datasets_stored']),
    ]),
    ("Training", [
        ("Jobs by state", "short", ['sum by (state) (tuneloop_trainer_jobs)']),
        ("Queue depth", "short", ['tuneloop_trainer_queue_depth']),
        ("Train / eval loss (running jobs)", "none",
         ['tuneloop_trainer_train_loss', 'tuneloop_trainer_eval_loss']),
        ("Training tokens/s", "short", ['tuneloop_trainer_tokens_per_second']),
        ("Step time", "s", ['tuneloop_trainer_step_time_seconds']),
        ("Job progress", "percentunit", ['tuneloop_trainer_progress_ratio']),
        ("Peak GPU memory", "bytes", ['tuneloop_trainer_gpu_memory_peak_bytes']),
        ("Jobs finished by state (1h)", "short",
         ['sum by (state) (increase(tuneloop_trainer_jobs_finished_total[1h]))']),
        ("Running jobs", "short", ['sum(tuneloop_trainer_running_jobs)']),
    ]),
    ("Evaluation and promotion", [
        ("Eval runs", "short", ['sum by (status) (increase(tuneloop_gateway_eval_runs_total[1h]))']),
        ("Promotion decisions", "short",
         ['sum by (kind, status) (increase(tuneloop_gateway_promotion_decisions_total[1h]))']),
        ("Alias swaps by result", "short",
         ['sum by (alias, action, result) (increase(tuneloop_inference_swaps_total[1h]))']),
        ("Swap duration p90 by alias", "s",
         ['histogram_quantile(0.9, sum by (alias, le) (rate(tuneloop_inference_swap_duration_seconds_bucket[1h])))']),
    ]),
    ("Serving (model = the alias or version asked for, version = the one that answered)", [
        ("Requests / s by alias and version", "reqps",
         ['sum by (model, version) (rate(tuneloop_inference_requests_total[1m]))']),
        ("5xx ratio by alias", "percentunit", [
            'sum by (model) (rate(tuneloop_inference_requests_total{status=~"5.."}[5m]))'
            ' / sum by (model) (rate(tuneloop_inference_requests_total[5m]))']),
        ("Time to first token p50 / p95 by alias and version", "s", [
            'histogram_quantile(0.5, sum by (model, version, le) '
            '(rate(tuneloop_inference_time_to_first_token_seconds_bucket[5m])))',
            'histogram_quantile(0.95, sum by (model, version, le) '
            '(rate(tuneloop_inference_time_to_first_token_seconds_bucket[5m])))']),
        ("Request latency p50 / p95 by alias and version", "s", [
            'histogram_quantile(0.5, sum by (model, version, le) '
            '(rate(tuneloop_inference_request_duration_seconds_bucket[5m])))',
            'histogram_quantile(0.95, sum by (model, version, le) '
            '(rate(tuneloop_inference_request_duration_seconds_bucket[5m])))']),
        ("Generated tokens / s by alias and version", "short",
         ['sum by (model, version) (rate(tuneloop_inference_generated_tokens_total[1m]))']),
        ("Prompt tokens / s by alias and version", "short",
         ['sum by (model, version) (rate(tuneloop_inference_prompt_tokens_total[1m]))']),
        ("Requests in flight", "short", ['sum(tuneloop_inference_requests_in_flight)']),
        ("Engines ready", "short", ['sum(tuneloop_inference_engines_ready)']),
        ("Engine restarts by deployment (1h)", "short",
         ['sum by (deployment) (increase(tuneloop_inference_engine_restarts_total[1h]))']),
        ("Gateway upstream errors", "short", ['sum by (upstream) (rate(tuneloop_gateway_upstream_errors_total[5m]))']),
        ("Auth failures / rate limited", "short",
         ['sum(rate(tuneloop_gateway_auth_failures_total[5m]))', 'sum(rate(tuneloop_gateway_rate_limited_total[5m]))']),
    ]),
]


def build() -> dict:
    panels, y, pid = [], 0, 1
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (ptitle, unit, exprs) in enumerate(row):
            panels.append({
                "type": "timeseries", "title": ptitle, "id": pid,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "targets": [{"expr": e, "refId": chr(65 + k)} for k, e in enumerate(exprs)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 8
    return {"title": "tuneloop: data → training → evaluation → serving", "uid": "tuneloop",
            "schemaVersion": 39, "version": 1, "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s", "tags": ["tuneloop"], "panels": panels}


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
