"""A crash loses nothing on the cluster configuration: real dataset, trainer and gateway
processes share one real PostgreSQL database (as compose and Kubernetes run them), the dataset
service stores its versions in a real S3-compatible bucket; all are killed (SIGKILL) and
restarted, and everything is still there and readable."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tuneloop.storage import ArtifactStore
from tuneloop.testing import ServiceProcess

ADMIN = "tlk-restart-admin-key-0123456789abcdef"


def _start(module: str, env: dict[str, str], log: Path) -> ServiceProcess:
    return ServiceProcess(module, env={"HF_HUB_OFFLINE": "1", "TUNELOOP_LOG_JSON": "false", **env},
                          log_path=log, startup_timeout=180).start()


def test_crash_and_restart_lose_nothing_on_postgres_and_s3(
        postgres_url: str, s3_server, s3_artifact_url: str, ticket_rows, tmp_path: Path) -> None:
    s3_env = {k.replace("TUNELOOP_", "DATASET_"): v
              for k, v in s3_server.env_for(s3_artifact_url).items()}
    envs = {
        "tuneloop_dataset": {"DATASET_DATA_DIR": str(tmp_path / "dataset"), **s3_env},
        "tuneloop_gateway": {"GATEWAY_DATA_DIR": str(tmp_path / "gateway"),
                             "GATEWAY_BOOTSTRAP_ADMIN_KEY": ADMIN,
                             "GATEWAY_RECONCILE_INTERVAL_S": "0"},
        "tuneloop_trainer": {"TRAINER_DATA_DIR": str(tmp_path / "trainer")},
    }
    procs: dict[str, ServiceProcess] = {}
    try:
        procs["tuneloop_dataset"] = _start("tuneloop_dataset", {
            "TUNELOOP_DATABASE_URL": postgres_url, **envs["tuneloop_dataset"]},
            tmp_path / "dataset.log")
        ds_url = procs["tuneloop_dataset"].url
        envs["tuneloop_trainer"]["TRAINER_DATASET_URL"] = ds_url
        for module in ("tuneloop_gateway", "tuneloop_trainer"):
            procs[module] = _start(module, {"TUNELOOP_DATABASE_URL": postgres_url, **envs[module]},
                                   tmp_path / f"{module}.log")
        ready = httpx.get(f"{ds_url}/ready").json()
        assert ready["checks"] == {"database": True, "artifact_store": True}

        # state in every service: a dataset version (rows in S3), a trainer file, an API key
        r = httpx.post(f"{ds_url}/v1/datasets", json={"rows": ticket_rows[:80], "eval_size": 16,
                                                       "name": "tickets"}, timeout=120)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["artifact_url"].startswith(s3_artifact_url + "/datasets/")
        body = "".join(json.dumps(row) + "\n" for row in ticket_rows[80:120]).encode()
        f = httpx.post(f"{procs['tuneloop_trainer'].url}/v1/files", data={"purpose": "fine-tune"},
                       files={"file": ("t.jsonl", body, "application/jsonl")}, timeout=120)
        assert f.status_code in (200, 201), f.text
        admin = {"Authorization": f"Bearer {ADMIN}"}
        k = httpx.post(f"{procs['tuneloop_gateway'].url}/v1/keys", headers=admin,
                       json={"name": "ops", "scopes": ["admin"]}, timeout=30)
        assert k.status_code == 201, k.text
        before = {"rows": httpx.get(f"{ds_url}/v1/datasets/{ds['id']}/rows",
                                    params={"split": "eval", "limit": 100}).json(),
                  "report": httpx.get(f"{ds_url}/v1/datasets/{ds['id']}/report").json()}

        for module, proc in procs.items():  # a crash: no shutdown code runs
            proc.kill()
            procs[module] = _start(module, {"TUNELOOP_DATABASE_URL": postgres_url, **envs[module]},
                                   tmp_path / f"{module}.log")
        ds_url = procs["tuneloop_dataset"].url

        listed = httpx.get(f"{ds_url}/v1/datasets").json()["data"]
        assert {d["id"] for d in listed} == {ds["id"], f.json()["dataset_id"]}
        after = {"rows": httpx.get(f"{ds_url}/v1/datasets/{ds['id']}/rows",
                                   params={"split": "eval", "limit": 100}).json(),
                 "report": httpx.get(f"{ds_url}/v1/datasets/{ds['id']}/report").json()}
        assert after == before and len(after["rows"]["data"]) == 16
        files = httpx.get(f"{procs['tuneloop_trainer'].url}/v1/files").json()["data"]
        assert [x["id"] for x in files] == [f.json()["id"]]
        new_key = {"Authorization": f"Bearer {k.json()['key']}"}
        keys = httpx.get(f"{procs['tuneloop_gateway'].url}/v1/keys", headers=new_key).json()["data"]
        assert {x["name"] for x in keys} >= {"ops"}

        # the artifacts really are in the bucket, published (marker) and then really deleted
        store = ArtifactStore(s3_artifact_url, **s3_server.storage_options())
        assert ds["id"] in store.list("datasets")
        assert httpx.delete(f"{ds_url}/v1/datasets/{ds['id']}").status_code == 200
        assert ds["id"] not in store.list("datasets") and not store.exists(f"datasets/{ds['id']}")
        assert httpx.get(f"{ds_url}/v1/datasets/{ds['id']}").status_code == 404
    finally:
        for proc in procs.values():
            proc.stop()
