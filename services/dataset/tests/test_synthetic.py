"""Synthetic data against a REAL OpenAI-compatible teacher: ``transformers serve`` on the tiny
local model (pretrained on ticket text). A tiny model writes garbage-ish text, so these tests
assert the pipeline (requests sent, parse failures reported, valid rows kept, duplicates
dropped, review -> version, restart), not quality."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tuneloop.examples.support_tickets import INSTRUCTION, generate
from tuneloop.testing import ServiceProcess, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``transformers serve <tiny model dir>`` on a free port (offline, CPU)."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    log = open(tmp_path_factory.mktemp("teacher") / "serve.log", "wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--device", "cpu",
                             str(tiny_base_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"transformers serve exited: {open(log.name).read()[-2000:]}"
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "transformers serve did not become healthy"
        time.sleep(0.3)
    yield {"base_url": url + "/v1", "model": str(tiny_base_dir), "api_key": "local-test"}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    env = {"DATASET_DATA_DIR": str(tmp_path / "var"), "HF_HUB_OFFLINE": "1"}
    with ServiceProcess("tuneloop_dataset", env=env, log_path=tmp_path / "dataset.log") as proc:
        yield proc


def wait_job(url: str, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/synthetic/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']}: {job}")


def test_examples_mode_reports_parse_failures(service, teacher):
    seeds = generate(3, seed=31)
    r = httpx.post(f"{service.url}/v1/synthetic/jobs", json={
        "teacher": teacher, "instruction": INSTRUCTION, "seed_examples": seeds,
        "mode": "examples", "n": 2, "max_requests": 3, "max_tokens": 40}, timeout=30)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and "api_key" not in job["spec"]["teacher"]
    assert job["spec"]["expect_json_output"] is True
    done = wait_job(service.url, job["id"])
    assert done["status"] == "succeeded", done
    p = done["progress"]
    assert p["requests"] == 3 or p["kept"] == 2
    # whatever the tiny model wrote, every answer is accounted for
    outcomes = p["kept"] + p["parse_failures"] + p["invalid"] + p["duplicates"] + p["near_duplicates"]
    assert outcomes == p["requests"]
    assert len(done["failures"]) == p["parse_failures"] + p["invalid"]
    for f in done["failures"]:
        assert f["code"] and f["message"] and "raw" in f and f["request"] < 3


def test_completions_mode_dedup_review_publish(service, teacher):
    tickets = generate(4, seed=32)
    inputs = [t["input"] for t in tickets[:3]] + [tickets[0]["input"]]  # one duplicate input
    r = httpx.post(f"{service.url}/v1/synthetic/jobs", json={
        "teacher": teacher, "instruction": INSTRUCTION, "seed_examples": tickets[3:],
        "mode": "completions", "inputs": inputs, "n": 4, "temperature": 0, "max_tokens": 24,
        "expect_json_output": False}, timeout=30)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    done = wait_job(service.url, job_id)
    assert done["status"] == "succeeded", done
    p = done["progress"]
    assert p["requests"] == 4
    # greedy decoding answers the repeated input identically: dropped as an exact duplicate
    assert p["duplicates"] >= 1
    assert p["kept"] >= 1 and p["kept"] + p["duplicates"] + p["near_duplicates"] + p["invalid"] == 4
    rows = httpx.get(f"{service.url}/v1/synthetic/jobs/{job_id}/rows").json()["data"]
    assert len(rows) == p["kept"] and all(r["status"] == "pending" for r in rows)
    assert rows[0]["messages"][0]["content"].startswith(INSTRUCTION)

    # publish before review: nothing accepted
    nothing = httpx.post(f"{service.url}/v1/synthetic/jobs/{job_id}/publish")
    assert nothing.status_code == 422 and nothing.json()["error"]["code"] == "no_accepted_rows"
    bad = httpx.post(f"{service.url}/v1/synthetic/jobs/{job_id}/review", json={"accept": [999999]})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_rows"

    accept = [rows[0]["id"]] + [r["id"] for r in rows[2:]]
    reject = [r["id"] for r in rows[1:2]]
    rev = httpx.post(f"{service.url}/v1/synthetic/jobs/{job_id}/review",
                     json={"accept": accept, "reject": reject}).json()
    assert rev["rows"] == {"pending": 0, "accepted": len(accept), "rejected": len(reject)}
    pub = httpx.post(f"{service.url}/v1/synthetic/jobs/{job_id}/publish", json={"name": "synthetic-tickets"},
                     timeout=60)
    assert pub.status_code == 201, pub.text
    ds = pub.json()
    assert ds["counts"]["valid"] == len(accept) and ds["source"] == {"kind": "synthetic", "job_id": job_id}
    assert httpx.get(f"{service.url}/v1/synthetic/jobs/{job_id}").json()["dataset_id"] == ds["id"]


def test_job_running_at_a_crash_is_marked_failed_and_keeps_its_rows(service, teacher):
    tickets = generate(60, seed=33)
    r = httpx.post(f"{service.url}/v1/synthetic/jobs", json={
        "teacher": teacher, "instruction": INSTRUCTION, "seed_examples": tickets[:2],
        "mode": "completions", "inputs": [t["input"] for t in tickets], "n": 60,
        "max_tokens": 48, "expect_json_output": False}, timeout=30)
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = httpx.get(f"{service.url}/v1/synthetic/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["requests"] >= 2:
            break
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.1)
    service.kill()
    service.start()
    job = httpx.get(f"{service.url}/v1/synthetic/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "interrupted"
    rows = httpx.get(f"{service.url}/v1/synthetic/jobs/{job_id}/rows").json()["data"]
    assert len(rows) == job["rows"]["pending"]
    listed = httpx.get(f"{service.url}/v1/synthetic/jobs").json()["data"]
    assert [j["id"] for j in listed] == [job_id]


def test_bad_requests(service, teacher):
    url = f"{service.url}/v1/synthetic/jobs"
    r = httpx.post(url, json={"teacher": teacher, "instruction": "x", "mode": "examples", "n": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = httpx.post(url, json={"teacher": teacher, "instruction": "x", "n": 1,
                              "seed_examples": [{"instruction": "a"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_seed_example"
    assert r.json()["error"]["param"] == "seed_examples[0].output"
    r = httpx.post(url, json={"teacher": {**teacher, "base_url": "file:///etc"}, "instruction": "x",
                              "seed_examples": generate(1)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "teacher.base_url"
    assert httpx.get(f"{url}/syn-0000000000000000").json()["error"]["code"] == "synthetic_job_not_found"
    # an unreachable teacher fails the job with a clear code
    dead = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}
    job = httpx.post(url, json={"teacher": dead, "instruction": "x", "seed_examples": generate(1),
                                "n": 1}).json()
    done = wait_job(service.url, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "teacher_unreachable"
    # a teacher that answers 4xx (unknown model) fails the job with the teacher's status
    r = httpx.post(url, json={"teacher": {**teacher, "model": "/no/such/model"}, "instruction": "x",
                              "seed_examples": generate(1), "n": 1}).json()
    done = wait_job(service.url, r["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "teacher_error"
    pub = httpx.post(f"{url}/{job['id']}/publish")
    assert pub.status_code == 422 and pub.json()["error"]["code"] == "no_accepted_rows"


def test_busy_teacher_is_retried_with_backoff_honouring_retry_after(service, teacher):
    """A teacher behind a rate limiter (what a hosted API is): its first answers are 429 with
    Retry-After and one 503; the job waits and retries instead of failing on the first one.
    The limiter is a small real HTTP server in front of the real teacher."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    refusals = [(429, {"retry-after": "1"}), (429, {"retry-after": "0"}), (503, {})]
    seen: list[int] = []

    class Limiter(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if refusals:
                status, headers = refusals.pop(0)
                data = json.dumps({"error": {"message": "slow down"}}).encode()
            else:
                r = httpx.post(teacher["base_url"] + "/chat/completions", content=body,
                               headers={"content-type": "application/json"}, timeout=120)
                status, headers, data = r.status_code, {}, r.content
            seen.append(status)
            self.send_response(status)
            for k, v in {**headers, "content-type": "application/json",
                         "content-length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Limiter)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        tickets = generate(3, seed=33)
        limited = {**teacher, "base_url": f"http://127.0.0.1:{srv.server_port}/v1"}
        r = httpx.post(f"{service.url}/v1/synthetic/jobs", json={
            "teacher": limited, "instruction": INSTRUCTION, "seed_examples": tickets[2:],
            "mode": "completions", "inputs": [t["input"] for t in tickets[:2]], "n": 2,
            "temperature": 0, "max_tokens": 8, "expect_json_output": False}, timeout=30)
        assert r.status_code == 201, r.text
        done = wait_job(service.url, r.json()["id"])
    finally:
        srv.shutdown()
    assert done["status"] == "succeeded", done
    assert seen[:3] == [429, 429, 503] and seen[3:] == [200, 200], seen
    assert done["progress"]["requests"] == 2 and done["progress"]["kept"] >= 1
