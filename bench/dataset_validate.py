"""Benchmark: the dataset service's streaming validator vs a naive read-everything baseline.

Generates support-ticket JSONL files (100k rows, ~100 MB, rows made longer with extra ticket
notes; and a 25k-row file to show RSS is flat with size), then validates each in a fresh
subprocess (clean peak RSS) with:

- ``streaming``: ``tuneloop_dataset.parsing.StreamValidator`` exactly as the service runs it
  (bounded readline, per-line checks, normalised rows written to a file, content hash);
  no tokenizer pass.
- ``naive`` (baseline): ``f.read().splitlines()`` + ``json.loads`` + the same row checks,
  keeping the rows in memory (what a quick script does).

Writes bench/results/dataset_validate.json. Run: ``.venv/bin/python bench/dataset_validate.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS_BIG, ROWS_SMALL = 100_000, 25_000
REPEAT = 3  # validation runs per (mode, file); the fastest is kept (shared, noisy machine)

WORKER = r"""
import json, resource, sys, time
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
from tuneloop_dataset.parsing import StreamValidator, normalize_row, canonical, RowError
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
before = rss_mb()
t0, c0 = time.perf_counter(), time.process_time()
if mode == "streaming":
    with open(path, "rb") as src, open(out, "wb") as dst:
        res = StreamValidator(max_line_bytes=4 << 20, max_errors=100).run(src, dst)
    valid, invalid = res.valid, res.invalid
else:
    rows, invalid = [], 0
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        if not line.strip():
            continue
        try:
            msgs, _ = normalize_row(json.loads(line))
            rows.append({"messages": msgs, "canon": canonical(msgs)})
        except (ValueError, RowError):
            invalid += 1
    valid = len(rows)
secs, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"valid": valid, "invalid": invalid, "seconds": secs, "cpu_seconds": cpu,
                  "peak_rss_mb": rss_mb(), "rss_before_mb": before}))
"""


def make_file(path: Path, n: int, seed: int) -> int:
    from tuneloop.examples.support_tickets import make_ticket, corpus_text

    rng = random.Random(seed)
    notes = [t for t in corpus_text(400, seed=seed) if not t.startswith("{")]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            row = make_ticket(rng)
            extra = " ".join(rng.choice(notes).split("\n", 1)[-1] for _ in range(4))
            row["input"] += f"\nTicket #{i}. Earlier messages: {extra}"
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size


def run(mode: str, path: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, "-c", WORKER, mode, str(path), str(out)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_service(path: Path, data_dir: Path) -> dict:
    """Upload ``path`` (multipart) to a real dataset service process; sample its RSS."""
    import threading
    import time

    import httpx
    import psutil

    from tuneloop.testing import ServiceProcess

    token = "bench-service-token-0123456789"  # the dataset API is internal (service token)
    auth = {"Authorization": f"Bearer {token}"}
    env = {"DATASET_DATA_DIR": str(data_dir), "DATASET_LOG_LEVEL": "WARNING",
           "TUNELOOP_SERVICE_AUTH": "true", "TUNELOOP_SERVICE_TOKEN": token}
    with ServiceProcess("tuneloop_dataset", env=env) as sp:
        proc = psutil.Process(sp.proc.pid)
        # warm-up upload: the first one imports datasets/pyarrow (a fixed ~100 MB)
        warm = "".join(json.dumps({"instruction": f"warm {i}", "output": "up"}) + "\n" for i in range(50))
        httpx.post(sp.url + "/v1/datasets", content=warm, timeout=300,
                   headers={"content-type": "application/jsonl", **auth}).raise_for_status()
        base, base_anon = proc.memory_info().rss, _anon(proc.pid)
        peak, peak_anon = [base], [base_anon]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                peak_anon[0] = max(peak_anon[0], _anon(proc.pid))
                time.sleep(0.02)

        t = threading.Thread(target=watch)
        t.start()
        t0 = time.perf_counter()
        with open(path, "rb") as fh:
            r = httpx.post(sp.url + "/v1/datasets", timeout=1800, headers=auth,
                           files={"file": (path.name, fh, "application/jsonl")})
        secs = time.perf_counter() - t0
        done.set()
        t.join()
        r.raise_for_status()
        return {"rows": r.json()["counts"]["valid"], "seconds": secs,
                "rss_base_mb": base / 1e6, "rss_peak_mb": peak[0] / 1e6,
                "anon_base_mb": base_anon / 1e6, "anon_peak_mb": peak_anon[0] / 1e6}


def _anon(pid: int) -> int:
    """RssAnon: resident memory not backed by files (mmapped arrow/parquet pages excluded)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(HERE / "results" / "dataset_validate.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.jsonl", tmp / "small.jsonl"
        big_bytes = make_file(big, ROWS_BIG, 1)
        small_bytes = make_file(small, ROWS_SMALL, 2)
        m = {}
        for mode in ("streaming", "naive"):
            for name, path in (("small", small), ("big", big)):
                runs = [run(mode, path, tmp / f"out-{mode}-{name}.jsonl") for _ in range(REPEAT)]
                m[(mode, name)] = min(runs, key=lambda r: r["seconds"])  # best of REPEAT
                r = m[(mode, name)]
                print(f"{mode:9s} {name:5s} {r['valid']:>7} rows {r['seconds']:.2f}s "
                      f"{r['valid'] / r['seconds']:,.0f} rows/s (CPU {r['cpu_seconds']:.2f}s, "
                      f"{r['valid'] / r['cpu_seconds']:,.0f} rows/CPU-s) peak RSS {r['peak_rss_mb']:.0f} MB",
                      flush=True)
        svc = {}
        for name, path in (("small", small), ("big", big)):
            svc[name] = run_service(path, tmp / f"svc-{name}")
            r = svc[name]
            print(f"service   {name:5s} {r['rows']:>7} rows {r['seconds']:.1f}s end to end, RSS "
                  f"{r['rss_base_mb']:.0f} -> peak {r['rss_peak_mb']:.0f} MB, anonymous "
                  f"{r['anon_base_mb']:.0f} -> {r['anon_peak_mb']:.0f} MB", flush=True)
    s_big, n_big = m[("streaming", "big")], m[("naive", "big")]
    s_small, n_small = m[("streaming", "small")], m[("naive", "small")]
    rps = s_big["valid"] / s_big["seconds"]
    rps_naive = n_big["valid"] / n_big["seconds"]
    cps = s_big["valid"] / s_big["cpu_seconds"]
    cps_naive = n_big["valid"] / n_big["cpu_seconds"]
    results = [
        {"metric": "validation_rows_per_cpu_s_100k", "value": round(cps), "unit": "rows/CPU-s",
         "baseline": round(cps_naive), "ratio": round(cps / cps_naive, 3)},
        {"metric": "validation_rows_per_s_100k", "value": round(rps), "unit": "rows/s",
         "baseline": round(rps_naive), "ratio": round(rps / rps_naive, 3)},
        {"metric": "validation_seconds_100k", "value": round(s_big["seconds"], 3), "unit": "s",
         "baseline": round(n_big["seconds"], 3), "ratio": round(s_big["seconds"] / n_big["seconds"], 3)},
        {"metric": "peak_rss_100k", "value": round(s_big["peak_rss_mb"], 1), "unit": "MB",
         "baseline": round(n_big["peak_rss_mb"], 1),
         "ratio": round(s_big["peak_rss_mb"] / n_big["peak_rss_mb"], 3)},
        {"metric": "peak_rss_25k", "value": round(s_small["peak_rss_mb"], 1), "unit": "MB",
         "baseline": round(n_small["peak_rss_mb"], 1),
         "ratio": round(s_small["peak_rss_mb"] / n_small["peak_rss_mb"], 3)},
        {"metric": "service_upload_seconds_100k", "unit": "s",
         "value": round(svc["big"]["seconds"], 1), "baseline": None, "ratio": None},
        {"metric": "service_upload_rss_growth_25k", "unit": "MB",
         "value": round(svc["small"]["rss_peak_mb"] - svc["small"]["rss_base_mb"], 1),
         "baseline": None, "ratio": None},
        {"metric": "service_upload_rss_growth_100k", "unit": "MB",
         "value": round(svc["big"]["rss_peak_mb"] - svc["big"]["rss_base_mb"], 1),
         "baseline": None, "ratio": None},
        {"metric": "service_upload_anon_rss_growth_25k", "unit": "MB",
         "value": round(svc["small"]["anon_peak_mb"] - svc["small"]["anon_base_mb"], 1),
         "baseline": None, "ratio": None},
        {"metric": "service_upload_anon_rss_growth_100k", "unit": "MB",
         "value": round(svc["big"]["anon_peak_mb"] - svc["big"]["anon_base_mb"], 1),
         "baseline": None, "ratio": None},
        {"metric": "peak_rss_growth_25k_to_100k", "unit": "MB",
         "value": round(s_big["peak_rss_mb"] - s_small["peak_rss_mb"], 1),
         "baseline": round(n_big["peak_rss_mb"] - n_small["peak_rss_mb"], 1),
         "ratio": None},
    ]
    out = {
        "bench": "dataset_validate",
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "results": results,
        "notes": (
            f"Files: {ROWS_BIG} rows / {big_bytes / 1e6:.0f} MB and {ROWS_SMALL} rows / "
            f"{small_bytes / 1e6:.0f} MB of support tickets with long inputs. Validation metrics: "
            "'value' is the service's streaming validator (bounded readline, orjson parse, row checks, "
            "normalised rows written to disk, sha256 content hash; no tokenizer pass), 'baseline' is "
            "f.read().splitlines() + stdlib json.loads + the same row checks with rows kept in memory; "
            f"best of {REPEAT} runs, each in a fresh subprocess; peak RSS = ru_maxrss of that process "
            "(interpreter + imports included). rows/CPU-s divides by the process's CPU time (one free "
            "core), rows/s by wall time (lower while the shared machine is busy). "
            "service_upload_*: one multipart upload -> validate -> split -> quality report (MinHash "
            "near-dups + leakage via datasketch LSH, no tokenizer) -> parquet + save_to_disk -> "
            "SQLite, against a real `python -m tuneloop_dataset` process after a warm-up upload; RSS "
            "and RssAnon (not file-backed, so without the memory-mapped arrow files) sampled every "
            "20 ms, growth = peak - idle. The validator is flat; the report keeps ~2 KB a row while "
            "near-dup analysis runs (256-byte signature + datasketch LSH buckets), capped by "
            "DATASET_NEAR_DUP_MAX_ROWS=200k, above which only ~30 bytes a row are kept. "
            f"Target: >= 50k rows/s, RSS flat with file size. Shared {os.cpu_count()}-core machine "
            "(load average ~6-10 from other engineers' work while measured)."),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
