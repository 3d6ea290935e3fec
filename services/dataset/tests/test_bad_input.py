"""Every bad input gets a precise 4xx in the envelope (status, code, line/field) and nothing
already stored changes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tuneloop.examples.support_tickets import generate

GOOD = generate(30, seed=3)


@pytest.fixture
def database_url() -> None:
    """Parsing and refusals do not depend on the metadata backend: SQLite only (test_api.py and
    test_process.py run on both SQLite and PostgreSQL)."""
    return None


@pytest.fixture
def seeded(client, jsonl, snapshot):
    """One stored version, so 'nothing changed' is checked against a non-empty store."""
    r = client.post("/v1/datasets", json={"rows": GOOD, "name": "seed"})
    assert r.status_code == 201, r.text
    return snapshot()


def err(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    e = body["error"]
    assert e["code"] == code, e
    assert e["message"] and e["type"]
    return e


def test_empty_file(seeded, snapshot, upload):
    e = err(upload(b""), 400, "empty_file")
    assert e["param"] == "file"
    assert snapshot() == seeded


def test_only_blank_lines(seeded, snapshot, upload):
    e = err(upload(b"\n\n   \n\r\n\t\n"), 422, "no_rows")
    assert e["details"]["counts"]["blank_lines"] == 5
    assert e["details"]["counts"]["valid"] == 0
    assert snapshot() == seeded


def test_bom_is_stripped_and_same_version_as_without(client, upload, jsonl):
    rows = generate(20, seed=9)
    r1 = upload(b"\xef\xbb\xbf" + jsonl(rows))
    assert r1.status_code == 201, r1.text
    report = client.get(f"/v1/datasets/{r1.json()['id']}/report").json()
    assert "utf8_bom_stripped" in [w["code"] for w in report["warnings"]]
    r2 = upload(jsonl(rows))
    assert r2.status_code == 200 and r2.json()["id"] == r1.json()["id"]


def test_crlf_gives_the_same_version_as_lf(client, upload, jsonl):
    rows = generate(20, seed=10)
    r1 = upload(jsonl(rows, newline="\r\n"))
    assert r1.status_code == 201, r1.text
    ds = r1.json()["id"]
    page = client.get(f"/v1/datasets/{ds}/rows", params={"limit": 100}).json()
    assert all("\r" not in m["content"] for row in page["data"] for m in row["messages"])
    assert client.get(f"/v1/datasets/{ds}/report").json()["line_endings"] == "crlf"
    r2 = upload(jsonl(rows))
    assert (r2.status_code, r2.json()["id"]) == (200, ds)


def test_single_50mb_line_is_a_line_error_not_a_memory_blowup(seeded, snapshot, upload, jsonl):
    huge = b'{"instruction": "' + b"a" * (50 << 20) + b'", "output": "x"}\n'
    rows = generate(12, seed=11)
    e = err(upload(huge + jsonl(rows)), 422, "dataset_invalid")
    assert e["details"]["errors"] == [{"line": 1, "field": None, "code": "line_too_long",
                                       "message": e["details"]["errors"][0]["message"]}]
    assert e["details"]["counts"]["valid"] == 12
    assert snapshot() == seeded
    # with on_invalid=skip the rest of the file is kept, line numbers intact
    r = upload(huge + jsonl(rows), on_invalid="skip")
    assert r.status_code == 201, r.text
    assert r.json()["counts"]["invalid"] == 1 and r.json()["counts"]["valid"] == 12


@pytest.mark.parametrize("ctype", ["application/jsonl", "application/gzip"])
def test_gzip_sent_as_jsonl(seeded, snapshot, upload, jsonl, ctype):
    e = err(upload(gzip.compress(jsonl(GOOD)), filename="data.jsonl.gz", ctype=ctype),
            415, "compressed_upload")
    assert "gzip" in e["message"] or "compressed" in e["message"]
    assert snapshot() == seeded


def test_gzip_raw_body(seeded, snapshot, client, jsonl):
    r = client.post("/v1/datasets", content=gzip.compress(jsonl(GOOD)),
                    headers={"content-type": "application/jsonl"})
    err(r, 415, "compressed_upload")
    assert snapshot() == seeded


def test_utf16_file(seeded, snapshot, upload, jsonl):
    err(upload(jsonl(GOOD).decode().encode("utf-16")), 415, "unsupported_encoding")
    assert snapshot() == seeded


@pytest.mark.parametrize("ctype", ["application/xml", "image/png", ""])
def test_wrong_content_type(seeded, snapshot, client, jsonl, ctype):
    r = client.post("/v1/datasets", content=jsonl(GOOD), headers={"content-type": ctype})
    err(r, 415, "unsupported_media_type")
    assert snapshot() == seeded


def test_multipart_without_file_field(seeded, snapshot, client, jsonl):
    r = client.post("/v1/datasets", files={"data": ("x.jsonl", jsonl(GOOD), "application/jsonl")})
    e = err(r, 400, "missing_file")
    assert e["param"] == "file"
    assert snapshot() == seeded


def test_ten_thousand_invalid_rows_capped_list_exact_counts(seeded, snapshot, upload, settings):
    body = b"".join(b'{"instruction": "x", "output": 5}\n' for _ in range(10_000))
    e = err(upload(body), 422, "dataset_invalid")
    d = e["details"]
    assert d["errors_total"] == 10_000 and d["counts"]["invalid"] == 10_000
    assert len(d["errors"]) == settings.max_errors_reported and d["errors_truncated"] is True
    assert d["errors"][0] == {"line": 1, "field": "output", "code": "wrong_type",
                              "message": "'output' must be a string, got number"}
    assert d["errors"][-1]["line"] == settings.max_errors_reported
    assert d["error_codes"] == {"wrong_type": 10_000}
    assert snapshot() == seeded
    err(upload(body, on_invalid="skip"), 422, "no_valid_rows")
    assert snapshot() == seeded


def test_per_line_errors_name_line_and_field(seeded, snapshot, upload):
    lines = [
        json.dumps(GOOD[0]),
        "{not json",
        json.dumps({"instruction": "", "output": "y"}),
        json.dumps({"instruction": "x", "input": 3, "output": "y"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}),
        json.dumps({"messages": "hello"}),
        json.dumps([1, 2]),
        json.dumps({"prompt": "x", "completion": "y"}),
        json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"instruction": "x", "output": "   "}),
    ]
    body = "\n".join(lines).encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "y"}\n'
    e = err(upload(body), 422, "dataset_invalid")
    got = [(x["line"], x["field"], x["code"]) for x in e["details"]["errors"]]
    assert got == [
        (2, None, "invalid_json"),
        (3, "instruction", "empty_field"),
        (4, "input", "wrong_type"),
        (5, "messages[1].role", "unknown_role"),
        (6, "messages[0].role", "last_not_assistant"),
        (7, "messages", "no_user_message"),
        (8, "messages", "wrong_type"),
        (9, None, "not_an_object"),
        (10, None, "unknown_format"),
        (11, "messages[0].content", "wrong_type"),
        (12, "output", "empty_field"),
        (13, None, "invalid_utf8"),
    ]
    assert e["details"]["counts"] == {"total_lines": 13, "blank_lines": 0, "valid": 1, "invalid": 12}
    assert snapshot() == seeded


def test_path_like_names_and_ids(seeded, snapshot, client, upload, jsonl, settings):
    e = err(upload(jsonl(GOOD), name="../../etc"), 400, "invalid_name")
    assert e["param"] == "name"
    err(client.post("/v1/datasets", json={"rows": GOOD, "name": "a/b"}), 400, "invalid_name")
    # an encoded '/' never reaches a handler (no route matches): a plain 404 in the envelope
    err(client.get("/v1/datasets/..%2F..%2Fetc"), 404, "not_found")
    for bad in ("etc", "ds-..", "...", "ds-%2E%2E"):
        err(client.get(f"/v1/datasets/{bad}/report"), 404, "dataset_not_found")
        err(client.delete(f"/v1/datasets/{bad}"), 404, "dataset_not_found")
    # a control character never reaches a route (every service, shared middleware)
    err(client.get("/v1/datasets/ds-0123456789abcdef%00/report"), 400, "invalid_path")
    err(client.delete("/v1/datasets/ds-0123456789abcdef%00"), 400, "invalid_path")
    err(client.post("/v1/datasets", json={"source": {"path": "../../etc/passwd"}}), 403,
        "path_not_allowed")
    err(client.post("/v1/datasets", json={"source": {"path": "/etc/passwd"}}), 403, "path_not_allowed")
    err(client.post("/v1/datasets", json={"source": {"path": "missing.jsonl"}}), 404, "source_not_found")
    assert snapshot() == seeded
    # a path-like *file name* is only metadata: the stored name is its sanitised base name
    r = upload(jsonl(generate(15, seed=12)), filename="../../etc/passwd")
    assert r.status_code == 201 and r.json()["name"] == "passwd"
    assert not (Path(settings.data_dir).parent / "etc").exists()


def test_symlink_escaping_import_root_is_refused(seeded, snapshot, client, settings, tmp_path, jsonl):
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(jsonl(GOOD))
    root = settings.resolved_import_root()
    (root / "link.jsonl").symlink_to(outside)
    err(client.post("/v1/datasets", json={"source": {"path": "link.jsonl"}}), 403, "path_not_allowed")
    assert snapshot() == seeded


def test_unknown_version_ids(seeded, snapshot, client):
    unknown = "ds-0000000000000000"
    for method, path in [("GET", ""), ("GET", "/rows"), ("GET", "/report"), ("DELETE", ""),
                         ("PUT", "/leases/job-1"), ("DELETE", "/leases/job-1")]:
        e = err(client.request(method, f"/v1/datasets/{unknown}{path}"), 404, "dataset_not_found")
        assert e["param"] == "id"
    assert snapshot() == seeded


def test_bad_options(seeded, snapshot, client, upload, jsonl):
    e = err(upload(jsonl(GOOD), on_invalid="maybe"), 400, "invalid_request")
    assert e["param"] == "on_invalid"
    err(upload(jsonl(GOOD), eval_size=3, eval_fraction=0.1), 400, "invalid_request")
    e = err(upload(jsonl(generate(10, seed=4)), eval_size=10), 400, "invalid_eval_size")
    assert e["param"] == "eval_size"
    e = err(upload(jsonl(generate(10, seed=4)), tokenizer="/nonexistent/model"), 400,
            "tokenizer_not_found")
    assert e["param"] == "tokenizer"
    err(upload(jsonl(GOOD), colour="red"), 400, "invalid_request")
    err(client.post("/v1/datasets", json={"rows": GOOD, "source": {"path": "x"}}), 400, "invalid_request")
    err(client.post("/v1/datasets", content=b"{nope", headers={"content-type": "application/json"}),
        400, "invalid_json")
    err(client.get(f"/v1/datasets/{seeded['ids'][0]}/rows", params={"split": "test"}), 400,
        "invalid_request")
    err(client.get(f"/v1/datasets/{seeded['ids'][0]}/rows", params={"limit": 0}), 400,
        "invalid_request")
    assert snapshot() == seeded


def test_hub_disabled_by_default(seeded, snapshot, client):
    e = err(client.post("/v1/datasets", json={"source": {"hf_dataset": "org/name"}}), 403,
            "hub_disabled")
    assert "DATASET_HUB_ENABLED" in e["message"]
    err(client.post(f"/v1/datasets/{seeded['ids'][0]}/push", json={"repo_id": "org/name"}), 403,
        "hub_disabled")
    assert snapshot() == seeded


def test_delete_refused_while_leased(seeded, snapshot, client):
    ds = seeded["ids"][0]
    assert client.put(f"/v1/datasets/{ds}/leases/job-abc").status_code == 200
    e = err(client.delete(f"/v1/datasets/{ds}"), 409, "dataset_in_use")
    assert e["details"]["in_use_by"] == ["job-abc"]
    err(client.put(f"/v1/datasets/{ds}/leases/bad%20holder"), 400, "invalid_holder")
    assert snapshot() == seeded
    assert client.delete(f"/v1/datasets/{ds}/leases/job-abc").status_code == 200
    err(client.delete(f"/v1/datasets/{ds}/leases/job-abc"), 404, "lease_not_found")
    assert client.delete(f"/v1/datasets/{ds}").status_code == 200
    assert snapshot()["ids"] == [] and snapshot()["files"] == {}


def test_too_large_upload(client, settings, jsonl, snapshot):
    settings.max_upload_bytes = 1000
    e = err(client.post("/v1/datasets", content=jsonl(GOOD), headers={"content-type": "application/jsonl"}),
            413, "payload_too_large")
    assert e["message"]
    assert snapshot()["ids"] == []


def test_hub_enabled_still_checks_ids_and_token(client, settings, seeded, snapshot):
    settings.hub_enabled = True
    e = err(client.post("/v1/datasets", json={"source": {"hf_dataset": "../../etc"}}), 400,
            "invalid_request")
    assert e["param"] == "source.hf_dataset"
    err(client.post("/v1/datasets", json={"source": {"hf_dataset": "/etc/passwd"}}), 400,
        "invalid_request")
    e = err(client.post(f"/v1/datasets/{seeded['ids'][0]}/push", json={"repo_id": "org/name"}), 400,
            "hub_token_missing")
    assert "DATASET_HUB_TOKEN" in e["message"]
    err(client.post(f"/v1/datasets/{seeded['ids'][0]}/push", json={"repo_id": "../x"}), 400,
        "invalid_request")
    assert snapshot() == seeded


def test_broken_multipart_body(seeded, snapshot, client):
    r = client.post("/v1/datasets",
                    content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n",
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= r.status_code < 500 and set(r.json()) == {"error"}, r.text
    assert snapshot() == seeded
    assert 'tuneloop_dataset_uploads_total{result="error"}' not in client.get("/metrics").text
