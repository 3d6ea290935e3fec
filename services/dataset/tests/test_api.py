"""Upload -> report -> version through the API (lifespan runs; real SQLite, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from tuneloop.examples.support_tickets import INSTRUCTION, generate


def test_upload_report_version_and_storage(client, upload, jsonl, settings):
    rows = generate(300, seed=1)
    r = upload(jsonl(rows), name="tickets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds-") and len(ds["id"]) == 19
    assert ds["object"] == "dataset" and ds["status"] == "ready" and ds["format"] == "instruction"
    assert ds["counts"] == {"total": 300, "valid": 300, "invalid": 0, "train": 240, "eval": 60}
    assert ds["artifacts"]["hf"] == f"datasets/{ds['id']}/hf"
    assert ds["in_use_by"] == []
    codes = [w["code"] for w in ds["warnings"]]
    assert "below_safe_minimum" in codes

    # storage: load_from_disk and parquet, columns messages + line
    root = Path(settings.resolved_artifact_url())
    dd = datasets.load_from_disk(str(root / ds["artifacts"]["hf"]))
    assert set(dd) == {"train", "eval"} and len(dd["train"]) == 240 and len(dd["eval"]) == 60
    assert dd["train"].column_names == ["messages", "line"]
    first = dd["train"][0]
    assert first["line"] == 1
    assert first["messages"] == [
        {"role": "user", "content": INSTRUCTION + "\n\n" + rows[0]["input"]},
        {"role": "assistant", "content": rows[0]["output"]}]
    table = pq.read_table(root / ds["artifacts"]["eval_parquet"])
    assert table.num_rows == 60 and table.column_names == ["messages", "line"]
    lines = set(dd["train"]["line"]) | set(dd["eval"]["line"])
    assert lines == set(range(1, 301))

    # identical content -> the same version, 200
    again = upload(jsonl(rows), name="other-name")
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    assert again.json()["name"] == "tickets"
    # same rows, another split seed -> another version, another split
    other = upload(jsonl(rows), seed=7)
    assert other.status_code == 201 and other.json()["id"] != ds["id"]

    listing = client.get("/v1/datasets").json()
    assert listing["object"] == "list" and {d["id"] for d in listing["data"]} == {ds["id"], other.json()["id"]}
    assert client.get(f"/v1/datasets/{ds['id']}").json()["counts"] == ds["counts"]


def test_rows_pagination(client, jsonl, upload):
    ds = upload(jsonl(generate(250, seed=2)), eval_size=50).json()
    seen = []
    offset = 0
    while True:
        page = client.get(f"/v1/datasets/{ds['id']}/rows",
                          params={"split": "train", "offset": offset, "limit": 64}).json()
        assert page["total"] == 200
        seen += [r["line"] for r in page["data"]]
        offset += len(page["data"])
        if not page["has_more"]:
            break
    assert len(seen) == 200 and seen == sorted(seen)
    ev = client.get(f"/v1/datasets/{ds['id']}/rows", params={"split": "eval", "limit": 1000}).json()
    assert len(ev["data"]) == 50 and not ev["has_more"]
    assert not set(seen) & {r["line"] for r in ev["data"]}


def test_split_is_deterministic_and_options(client, jsonl, upload):
    rows = generate(120, seed=5)
    a = upload(jsonl(rows), eval_fraction=0.25).json()
    assert a["counts"]["eval"] == 30
    eval_a = client.get(f"/v1/datasets/{a['id']}/rows", params={"split": "eval", "limit": 100}).json()
    # the split depends on content + seed only, not on row order
    b = upload(jsonl(list(reversed(rows))), eval_fraction=0.25).json()
    eval_b = client.get(f"/v1/datasets/{b['id']}/rows", params={"split": "eval", "limit": 100}).json()
    assert a["id"] != b["id"]
    def key(page: dict) -> list[str]:
        return sorted(json.dumps(r["messages"]) for r in page["data"])

    assert key(eval_a) == key(eval_b)
    c = upload(jsonl(rows), eval_size=10).json()
    assert c["counts"]["eval"] == 10 and c["counts"]["train"] == 110


def test_default_eval_rule():
    from tuneloop_dataset.service import eval_rule

    assert [eval_rule(n) for n in (1, 2, 10, 300, 500, 1000, 1500, 2000, 10000)] == \
        [0, 1, 2, 60, 100, 100, 150, 200, 200]


def test_own_eval_file_and_leakage(client, jsonl):
    rows = generate(60, seed=6)
    ev = rows[:5] + generate(10, seed=99)
    r = client.post("/v1/datasets", files={"file": ("t.jsonl", jsonl(rows), "application/jsonl"),
                                           "eval_file": ("e.jsonl", jsonl(ev), "application/jsonl")})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["counts"]["train"] == 60 and ds["counts"]["eval"] == 15
    report = client.get(f"/v1/datasets/{ds['id']}/report").json()
    assert report["split"]["method"] == "eval_file"
    assert report["leakage"]["exact"]["rows"] == 5
    assert "train_eval_leakage" in [w["code"] for w in report["warnings"]]


def test_quality_report_findings(client, jsonl):
    base = generate(40, seed=8)
    near = dict(base[1], input=base[1]["input"] + " Thanks again.")
    rows = base + [base[0], base[0], near,
                   {"instruction": "Say hi", "output": "k"},
                   {"instruction": "Give JSON", "output": '{"summary": "x", "urgency": '}]
    r = client.post("/v1/datasets", json={"rows": rows, "eval_size": 2})
    assert r.status_code == 201, r.text
    rep = client.get(f"/v1/datasets/{r.json()['id']}/report").json()
    assert rep["duplicates"]["exact"]["rows"] == 2
    assert rep["duplicates"]["exact"]["examples"][0] == [1, 41, 42]
    assert rep["duplicates"]["near"]["rows"] >= 1
    assert [2, 43] in rep["duplicates"]["near"]["examples"]
    assert rep["outputs"]["very_short"]["rows"] == 1 and rep["outputs"]["very_short"]["lines"] == [44]
    assert rep["outputs"]["json_like_invalid"] == {"rows": 1, "lines": [45]}
    assert rep["outputs"]["json"] == 43
    assert rep["tokens"] is None and "token statistics skipped" in rep["tokens_note"]
    codes = {w["code"] for w in rep["warnings"]}
    assert {"too_few_examples", "exact_duplicates", "near_duplicates", "short_outputs",
            "invalid_json_outputs"} <= codes
    assert rep["preview"][0]["messages"][0]["role"] == "user"


def test_token_stats_with_tokenizer(client, jsonl, upload, tiny_random_dir):
    rows = generate(50, seed=13)
    rows[3] = dict(rows[3], input=rows[3]["input"] + " and more words" * 60)
    r = upload(jsonl(rows), tokenizer=str(tiny_random_dir), max_seq_length=256)
    assert r.status_code == 201, r.text
    rep = client.get(f"/v1/datasets/{r.json()['id']}/report").json()
    t = rep["tokens"]
    assert t["rows"] == 50 and t["max_seq_length"] == 256
    assert t["min"] <= t["p50"] <= t["p95"] <= t["max"]
    assert t["truncated"]["rows"] == 1 and t["truncated"]["lines"] == [4]
    assert sum(t["histogram"]["counts"]) == 50
    assert rep["preview"][0]["text"].startswith("<|im_start|>user\n")
    assert "truncated_rows" in [w["code"] for w in rep["warnings"]]
    text = client.get(f"/v1/datasets/{r.json()['id']}/report", params={"format": "text"})
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert "truncated at 256: 1" in text.text and "Preview (as training sees it)" in text.text


def test_chat_form_skip_policy_and_mixed(client):
    chat = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(20)]
    rows = chat + [{"messages": [{"role": "user", "content": "x"}]}, {"instruction": "a", "output": "b"}]
    r = client.post("/v1/datasets", json={"rows": rows, "on_invalid": "skip"})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "mixed"
    assert ds["counts"]["valid"] == 21 and ds["counts"]["invalid"] == 1
    rep = client.get(f"/v1/datasets/{ds['id']}/report").json()
    assert rep["errors"] == [{"line": 21, "field": "messages[0].role", "code": "last_not_assistant",
                              "message": rep["errors"][0]["message"]}]
    assert "invalid_rows_skipped" in [w["code"] for w in rep["warnings"]]


def test_import_from_local_path_and_raw_body(client, settings, jsonl):
    root = settings.resolved_import_root()
    (root / "sub").mkdir()
    (root / "sub" / "tickets.jsonl").write_bytes(jsonl(generate(30, seed=14)))
    r = client.post("/v1/datasets", json={"source": {"path": "sub/tickets.jsonl"}})
    assert r.status_code == 201, r.text
    assert r.json()["source"]["kind"] == "path" and r.json()["name"] == "tickets.jsonl"
    raw = client.post("/v1/datasets?name=raw&eval_size=5", content=jsonl(generate(30, seed=14)),
                      headers={"content-type": "application/x-ndjson"})
    assert raw.status_code == 201 and raw.json()["id"] != r.json()["id"]  # other split options
    assert raw.json()["name"] == "raw"
    assert raw.json()["counts"]["eval"] == 5


def test_example_endpoint(client):
    r = client.post("/v1/datasets/examples/support-tickets", json={"n": 120, "example_seed": 3})
    assert r.status_code == 201, r.text
    assert r.json()["counts"]["valid"] == 120 and r.json()["name"] == "support-tickets-120-seed3"
    again = client.post("/v1/datasets/examples/support-tickets", json={"n": 120, "example_seed": 3})
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]


def test_leases_and_delete(client, jsonl, upload, settings):
    ds = upload(jsonl(generate(20, seed=15))).json()["id"]
    r = client.put(f"/v1/datasets/{ds}/leases/job-1")
    assert r.status_code == 200 and r.json()["in_use_by"] == ["job-1"]
    assert client.put(f"/v1/datasets/{ds}/leases/job-1").json()["in_use_by"] == ["job-1"]
    client.put(f"/v1/datasets/{ds}/leases/eval-2")
    assert sorted(client.get(f"/v1/datasets/{ds}").json()["in_use_by"]) == ["eval-2", "job-1"]
    assert client.delete(f"/v1/datasets/{ds}").status_code == 409
    client.delete(f"/v1/datasets/{ds}/leases/job-1")
    client.delete(f"/v1/datasets/{ds}/leases/eval-2")
    d = client.delete(f"/v1/datasets/{ds}")
    assert d.status_code == 200 and d.json()["deleted"] is True
    assert client.get(f"/v1/datasets/{ds}").status_code == 404
    assert not (Path(settings.resolved_artifact_url()) / "datasets" / ds).exists()
    # re-uploading after delete recreates it
    assert upload(jsonl(generate(20, seed=15))).status_code == 201


def test_metrics(client, jsonl, upload):
    upload(jsonl(generate(20, seed=16)))
    upload(b"{bad\n")
    text = client.get("/metrics").text
    assert 'tuneloop_dataset_uploads_total{result="created"} 1.0' in text
    assert 'tuneloop_dataset_uploads_total{result="rejected"} 1.0' in text
    assert 'tuneloop_dataset_rows_validated_total{result="valid"} 20.0' in text
    assert "tuneloop_dataset_datasets_stored 1.0" in text
    assert "tuneloop_dataset_validation_seconds_count 2.0" in text


def test_report_token_section_recomputed_for_another_tokenizer(client, jsonl, upload, tiny_random_dir):
    rows = generate(30, seed=17)
    ds = upload(jsonl(rows)).json()["id"]
    stored = client.get(f"/v1/datasets/{ds}/report").json()
    assert stored["tokens"] is None
    r = client.get(f"/v1/datasets/{ds}/report",
                   params={"tokenizer": str(tiny_random_dir), "max_seq_length": 64})
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["tokens"]["rows"] == 30 and rep["tokens"]["truncated"]["rows"] == 30
    assert rep["recomputed"] == {"tokenizer": str(tiny_random_dir), "max_seq_length": 64}
    assert "truncated_rows" in [w["code"] for w in rep["warnings"]]
    assert rep["duplicates"] == stored["duplicates"] and rep["counts"] == stored["counts"]
    # the stored report is unchanged
    assert client.get(f"/v1/datasets/{ds}/report").json() == stored
    bad = client.get(f"/v1/datasets/{ds}/report", params={"tokenizer": "/nope"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "tokenizer_not_found"


def test_empty_rows_list(client):
    r = client.post("/v1/datasets", json={"rows": []})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_rows"
    assert r.json()["error"]["param"] == "rows"


def test_single_row_has_an_empty_eval_split(client, settings):
    r = client.post("/v1/datasets", json={"rows": [{"instruction": "Say hi", "output": "hi"}]})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["counts"]["train"] == 1 and ds["counts"]["eval"] == 0
    assert "no_eval_split" in [w["code"] for w in ds["warnings"]]
    dd = datasets.load_from_disk(str(Path(settings.resolved_artifact_url()) / ds["artifacts"]["hf"]))
    assert len(dd["train"]) == 1 and len(dd["eval"]) == 0
    assert dd["eval"].column_names == ["messages", "line"]


def test_name_length_is_checked_the_same_on_every_backend(client, upload, jsonl):
    """The column holds 128 characters (PostgreSQL enforces it, SQLite does not): the API
    refuses a longer name before the database sees it, and stores exactly 128 on both."""
    rows = generate(20, seed=4)
    long = upload(jsonl(rows), name="n" * 129)
    assert long.status_code == 400 and long.json()["error"]["param"] == "name", long.text
    ok = upload(jsonl(rows), name="n" * 128)
    assert ok.status_code == 201 and ok.json()["name"] == "n" * 128, ok.text


def test_replay_rows_go_to_train_only_spread_evenly_and_never_leak(client, settings):
    """Replay rows against forgetting, a dataset option: train split only, interleaved, part of
    the version's identity; one whose prompt is an eval prompt is dropped."""
    rows = generate(60, seed=3)
    evals = generate(10, seed=4)
    replay = [{"instruction": f"What is {i} plus {i}? Answer in a few words.", "input": "",
               "output": str(2 * i)} for i in range(12)]
    leak = {"instruction": evals[0]["instruction"], "input": evals[0]["input"], "output": "not the answer"}
    body = {"rows": rows, "eval_rows": evals, "replay_rows": replay + [leak], "name": "with-replay"}
    r = client.post("/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["counts"]["train"] == 60 + 12 and ds["counts"]["eval"] == 10 and ds["counts"]["replay"] == 12
    rep = client.get(f"/v1/datasets/{ds['id']}/report").json()
    assert rep["split"]["replay"]["rows"] == 12 and rep["split"]["replay"]["dropped_eval_prompt"] == 1
    root = Path(settings.resolved_artifact_url())
    train = pq.read_table(root / ds["artifacts"]["train_parquet"]).to_pylist()
    positions = [i for i, x in enumerate(train) if x["line"] < 0]
    assert len(positions) == 12 and positions[0] > 0 and positions[-1] < len(train) - 1  # spread through
    assert max(b - a for a, b in zip(positions, positions[1:])) <= 7
    assert [train[i]["messages"][-1]["content"] for i in positions] == [str(2 * i) for i in range(12)]
    evaluated = pq.read_table(root / ds["artifacts"]["eval_parquet"]).to_pylist()
    assert all(x["line"] > 0 for x in evaluated)
    # the same upload is the same version; without replay rows it is another one
    assert client.post("/v1/datasets", json=body).json()["id"] == ds["id"]
    plain = client.post("/v1/datasets", json={**body, "replay_rows": None}).json()
    assert plain["id"] != ds["id"] and "replay" not in plain["counts"]
    bad = client.post("/v1/datasets", json={**body, "replay_rows": [{"instruction": "no output"}]})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "replay_rows"
