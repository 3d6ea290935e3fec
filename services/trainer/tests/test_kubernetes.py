"""Kubernetes executor against a FAKE Kubernetes API server (a real HTTP process that validates
batch/v1 Job bodies like the API server and serves the status the test sets). No cluster here."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tuneloop.storage import ArtifactStore
from tuneloop_trainer.app import create_app
from tuneloop_trainer.executors.kubernetes import KubernetesExecutor, build_job_manifest, k8s_name
from tuneloop_trainer.settings import TrainerSettings
from trainer_testlib import FAST_HP, FakeKube, Stack, wait_for

NS = "tuneloop"


def _settings(tmp_path: Path, kube: FakeKube, **kw) -> TrainerSettings:
    return TrainerSettings(data_dir=tmp_path / "var", executor="kubernetes", k8s_api_url=kube.url,
                           k8s_token_file=str(kube.token_file), k8s_ca_file=None, k8s_namespace=NS,
                           log_json=False, log_level="WARNING", poll_interval_s=0.2, **kw)


def test_manifest_is_a_valid_gpu_job_running_the_same_entrypoint(tmp_path: Path, fake_kube: FakeKube):
    s = _settings(tmp_path, fake_kube, k8s_gpus=2, job_env={"HF_TOKEN": "x"})
    m = build_job_manifest(s, "job-0123456789abcdef")
    c = m["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "tuneloop_trainer.run_job", "job-0123456789abcdef",
                            "--store", "/artifacts"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "TUNELOOP_ARTIFACT_URL", "value": "/artifacts"} in c["env"]
    assert m["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == \
        "tuneloop-artifacts"
    import kubernetes_validate  # the real batch/v1 OpenAPI schema, strict (unknown fields fail)

    for version in ("1.31", "1.33"):
        kubernetes_validate.validate(m, version, strict=True)
    headers = {"Authorization": f"Bearer {fake_kube.token}"}
    url = f"{fake_kube.url}/apis/batch/v1/namespaces/{NS}/jobs"
    assert httpx.post(url, json=m, headers=headers).status_code == 201
    assert httpx.post(url, json=m, headers=headers).status_code == 409  # AlreadyExists
    assert httpx.post(url, json=m).status_code == 401
    # the fake refuses what the API server refuses (so the test above means something)
    for breaking in (lambda b: b["metadata"].update(name="Tuneloop_JOB"),
                     lambda b: b["spec"]["template"]["spec"].update(restartPolicy="Always"),
                     lambda b: b["spec"]["template"]["spec"]["containers"][0].pop("image"),
                     lambda b: b["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
                     .update({"nvidia.com/gpu": "1"}),
                     lambda b: b["spec"]["template"]["spec"].update(volumes=[])):
        bad = copy.deepcopy(m)
        breaking(bad)
        bad["metadata"]["name"] = bad["metadata"]["name"] if "_" in bad["metadata"]["name"] else "other"
        r = httpx.post(url, json=bad, headers=headers)
        assert r.status_code == 422 and r.json()["reason"] == "Invalid", r.text
    assert len(k8s_name("job-" + "a" * 64)) <= 63


def test_training_pods_are_hardened_with_deadline_and_failure_policy(tmp_path: Path,
                                                                     fake_kube: FakeKube):
    m = build_job_manifest(_settings(tmp_path, fake_kube), "job-0123456789abcdef", gpus=2)
    pod = m["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert m["spec"]["activeDeadlineSeconds"] == 172_800
    rules = m["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore",
            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [3] for r in rules)
    import kubernetes_validate

    for version in ("1.31", "1.33"):
        kubernetes_validate.validate(m, version, strict=True)


def test_rotated_service_account_token_is_picked_up(tmp_path: Path, fake_kube: FakeKube):
    """The kubelet rotates projected tokens: the executor re-reads the file (on a 401 at
    once), so a rotation does not lock the trainer out of the API server."""
    ex = KubernetesExecutor(_settings(tmp_path, fake_kube), ArtifactStore(str(tmp_path / "a")))

    async def scenario() -> None:
        h = await ex.start("job-00000000000000b1")
        assert h["uid"]
        fake_kube.token_file.write_text("rotated-token-456")  # the kubelet writes the new one
        async with httpx.AsyncClient(timeout=5) as http:  # and the old one stops working
            (await http.post(fake_kube.url + "/_fake/token",
                             json={"token": "rotated-token-456"})).raise_for_status()
        assert await ex.poll("job-00000000000000b1", h) is None  # still running, not locked out
        h2 = await ex.start("job-00000000000000b2")
        assert h2["uid"]
        await ex.close()

    asyncio.run(scenario())


def test_executor_submit_poll_cancel(tmp_path: Path, fake_kube: FakeKube):
    s = _settings(tmp_path, fake_kube)
    ex = KubernetesExecutor(s, ArtifactStore(str(tmp_path / "art")))

    async def scenario() -> None:
        h = await ex.start("job-00000000000000a1")
        assert h["name"] == "tuneloop-job-00000000000000a1" and h["uid"]
        assert await ex.poll("job-00000000000000a1", h) is None  # active
        fake_kube.set_status(NS, h["name"], {"succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True"}]})
        assert (await ex.poll("job-00000000000000a1", h)).returncode == 0
        h2 = await ex.start("job-00000000000000a2")
        fake_kube.set_status(NS, h2["name"], {"failed": 3, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]})
        end = await ex.poll("job-00000000000000a2", h2)
        assert end.returncode == 1 and "BackoffLimitExceeded" in end.reason
        h3 = await ex.start("job-00000000000000a3")
        assert await ex.recover("job-00000000000000a3", h3) is True  # still there: re-attach
        await ex.cancel("job-00000000000000a3", h3)
        assert fake_kube.jobs()["deleted"] == [{"name": h3["name"], "propagationPolicy": "Background"}]
        assert (await ex.poll("job-00000000000000a3", h3)).code == "k8s_job_missing"
        assert await ex.recover("job-00000000000000a3", h3) is False
        await ex.close()

    asyncio.run(scenario())


@pytest.fixture
def k8s_client(stack: Stack, tmp_path: Path, fake_kube: FakeKube) -> Iterator[TestClient]:
    s = _settings(tmp_path, fake_kube, artifact_url=str(stack.artifacts), dataset_url=stack.dataset.url)
    with TestClient(create_app(s)) as c:
        yield c


def test_service_runs_jobs_through_kubernetes(k8s_client: TestClient, fake_kube: FakeKube,
                                              tiny_random_dir: Path, small_dataset: str):
    body = {"dataset_id": small_dataset, "base_model": str(tiny_random_dir), "backend": "peft",
            "hyperparameters": FAST_HP}
    a = k8s_client.post("/v1/jobs", json=body).json()
    b = k8s_client.post("/v1/jobs", json=body).json()
    assert a["status"] == b["status"] == "queued"

    def status(job_id: str) -> str:
        return k8s_client.get(f"/v1/jobs/{job_id}").json()["status"]

    wait_for(lambda: status(a["id"]) == "running", 30, what="a running")
    assert status(b["id"]) == "queued"  # one at a time, FIFO
    name = k8s_name(a["id"])
    job = fake_kube.jobs()["jobs"][f"{NS}/{name}"]
    assert a["id"] in job["spec"]["template"]["spec"]["containers"][0]["command"]
    fake_kube.set_status(NS, name, {"failed": 3, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "pod OOMKilled"}]})
    wait_for(lambda: status(a["id"]) == "failed", 30, what="a failed")
    err = k8s_client.get(f"/v1/jobs/{a['id']}").json()["error"]
    assert err["code"] == "k8s_job_failed" and "OOMKilled" in err["message"]
    wait_for(lambda: status(b["id"]) == "running", 30, what="b running")
    assert k8s_client.post(f"/v1/jobs/{b['id']}/cancel").json()["cancel_requested"] is True
    wait_for(lambda: status(b["id"]) == "cancelled", 30, what="b cancelled")
    assert {"name": k8s_name(b["id"]), "propagationPolicy": "Background"} in fake_kube.jobs()["deleted"]
    metrics = k8s_client.get("/metrics").text
    assert 'tuneloop_trainer_jobs{state="failed"} 1.0' in metrics
    assert 'tuneloop_trainer_jobs{state="cancelled"} 1.0' in metrics


def test_multi_gpu_job_manifest(tmp_path: Path, fake_kube: FakeKube):
    """gpus: 2 -> nvidia.com/gpu 2 and the entrypoint under torchrun over 2 processes; a CPU
    cluster (k8s_gpus=0) asks for no GPU and runs the same 2 processes (gloo)."""
    import kubernetes_validate

    m = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1), "job-0123456789abcdef", 2)
    c = m["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "tuneloop_trainer.run_job",
                            "job-0123456789abcdef", "--store", "/artifacts"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    kubernetes_validate.validate(m, "1.33", strict=True)
    headers = {"Authorization": f"Bearer {fake_kube.token}"}
    url = f"{fake_kube.url}/apis/batch/v1/namespaces/{NS}/jobs"
    assert httpx.post(url, json=m, headers=headers).status_code == 201
    cpu = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=0), "job-0123456789abcdef", 2)
    c = cpu["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "--nproc_per_node=2" in c["command"]
    assert "tolerations" not in cpu["spec"]["template"]["spec"]
    one = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1), "job-0123456789abcdef")
    assert one["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "python", "-m", "tuneloop_trainer.run_job"]


def test_node_selector_and_tolerations_are_configurable(tmp_path: Path, fake_kube: FakeKube, monkeypatch):
    """From the environment (JSON), as a ConfigMap sets them; the Job stays schema-valid."""
    import kubernetes_validate

    monkeypatch.setenv("TRAINER_K8S_NODE_SELECTOR", '{"nvidia.com/gpu.product": "NVIDIA-H200"}')
    monkeypatch.setenv("TRAINER_K8S_TOLERATIONS",
                       '[{"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoSchedule"}]')
    m = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1), "job-0123456789abcdef")
    spec = m["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "training",
                                    "effect": "NoSchedule"}]
    kubernetes_validate.validate(m, "1.33", strict=True)
    monkeypatch.setenv("TRAINER_K8S_TOLERATIONS", "[]")  # explicitly none, even with GPUs
    assert "tolerations" not in build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1),
                                                   "job-0123456789abcdef")["spec"]["template"]["spec"]
    monkeypatch.delenv("TRAINER_K8S_TOLERATIONS")
    monkeypatch.delenv("TRAINER_K8S_NODE_SELECTOR")
    default = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1), "job-0123456789abcdef")
    assert "nodeSelector" not in default["spec"]["template"]["spec"]
    assert default["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    bad = build_job_manifest(_settings(tmp_path, fake_kube, k8s_gpus=1), "job-0123456789abcdef")
    bad["spec"]["template"]["spec"]["tolerations"] = [{"key": "x", "operatr": "Exists"}]
    with pytest.raises(kubernetes_validate.ValidationError):  # a typo caught by the real schema
        kubernetes_validate.validate(bad, "1.33", strict=True)


def test_a_job_on_an_object_store_runs_from_its_manifest_alone(
        tmp_path: Path, fake_kube: FakeKube, s3_server, s3_artifact_url: str, s3_storage_options,
        tiny_random_dir: Path, ticket_rows) -> None:
    """With an s3:// artifact store the Job mounts no volume: it carries the bucket URL, the
    service's endpoint and region, and references to the Secret's two credential keys. The API
    server (fake) accepts it; then, as a kubelet would, the container's command runs with the
    container's env alone (the Secret's keys resolved, the scratch volume a folder) and trains
    the job in the bucket: events, model and result there, nothing on any local store."""
    import json
    import os
    import subprocess
    import sys

    from tuneloop import layout
    from tuneloop.testing.s3 import ACCESS_KEY, SECRET_KEY
    from test_pipeline import JOB, MV, _job, _put_dataset

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    s = _settings(tmp_path, fake_kube, artifact_url=s3_artifact_url, k8s_gpus=0,
                  k8s_scratch_mount=str(scratch),
                  s3_endpoint_url=s3_storage_options["endpoint_url"],
                  s3_region=s3_storage_options["client_kwargs"]["region_name"],
                  s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY)
    m = build_job_manifest(s, JOB)
    pod = m["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert [v["name"] for v in pod["volumes"]] == ["dshm", "scratch"]      # no PVC
    assert container["command"][-2:] == ["--store", s3_artifact_url]
    env = {e["name"]: e for e in container["env"]}
    assert env["TUNELOOP_ARTIFACT_URL"]["value"] == s3_artifact_url
    assert env["TUNELOOP_S3_ENDPOINT_URL"]["value"] == s3_storage_options["endpoint_url"]
    assert env["TMPDIR"]["value"] == str(scratch)
    for key in ("TUNELOOP_S3_ACCESS_KEY_ID", "TUNELOOP_S3_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {
            "name": "tuneloop-secrets", "key": key, "optional": True}}}   # never the value
    assert ACCESS_KEY not in json.dumps(m) and SECRET_KEY not in json.dumps(m)  # the service
    # knows them (it uses the bucket too); the Job object only names the Secret
    ex = KubernetesExecutor(s, s.open_artifact_store())
    assert asyncio.run(ex.start(JOB))["name"] == k8s_name(JOB)               # the API accepts it
    asyncio.run(ex.close())

    store = s.open_artifact_store()
    key = _put_dataset(store, ticket_rows[:12], tmp_path)
    spec = _job(store, tmp_path, tiny_random_dir, key, num_train_epochs=1).spec
    store.write_bytes(layout.job_spec(JOB), json.dumps(spec).encode())
    secret = {"TUNELOOP_S3_ACCESS_KEY_ID": ACCESS_KEY, "TUNELOOP_S3_SECRET_ACCESS_KEY": SECRET_KEY}
    kubelet_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                   **{k: e["value"] if "value" in e else secret[e["valueFrom"]["secretKeyRef"]["key"]]
                      for k, e in env.items()}}
    cmd = [sys.executable if part == "python" else part for part in container["command"]]
    done = subprocess.run(cmd, env=kubelet_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(store.read_bytes(layout.job_result(JOB)))
    assert result["model_id"] == MV and store.exists(layout.model_merged(MV))
    assert not (tmp_path / "var" / "artifacts").exists()    # the service's local default unused
