"""Kubernetes executor: each job becomes a ``batch/v1`` Job running the same entrypoint.

The Job mounts the artifact-store volume (the same PVC the service uses), asks for GPUs, and
runs ``python -m tuneloop_trainer.run_job <job-id> --store <mount>`` (under torchrun, with
N GPUs requested, for a job with ``gpus: N``). With an object store (``s3://``) there is no
volume to share: the Job gets the bucket URL, the service's endpoint and region, and the two
credential keys of a Secret, and works in a scratch ``emptyDir``. Events and the result come
back through the shared store, exactly as with the local executor. A pod that dies is retried
by Kubernetes (``backoffLimit``) and resumes from the last checkpoint; the ``podFailurePolicy``
does not count an eviction or preemption against that limit and fails the Job at once on an
out-of-memory exit. Pods run non-root, without privilege escalation or capabilities, under
the runtime's seccomp profile, and the Job has a deadline (``activeDeadlineSeconds``).
Talks to the API server over plain REST (``httpx``): in-cluster token + CA, or any URL for
tests; the token file is re-read every minute and after a 401 (service-account tokens rotate).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import httpx

from tuneloop.offload import offload
from tuneloop.storage import ArtifactStore

from ..launch import job_command
from ..settings import TrainerSettings
from .base import Executor, Exit

LABEL_JOB = "tuneloop.io/job-id"
EXIT_OOM = 3  # run_job's exit code for an out-of-memory failure
TOKEN_REFRESH_S = 60.0


def k8s_name(job_id: str) -> str:
    """DNS-1123 label (<=63 chars) for a job id."""
    name = re.sub(r"[^a-z0-9-]", "-", f"tuneloop-{job_id}".lower())[:63].strip("-")
    return name


def job_gpu_count(settings: TrainerSettings, gpus: int) -> int:
    """``nvidia.com/gpu`` of a Job: the job's ``gpus`` (at least ``k8s_gpus``); 0 when
    ``k8s_gpus`` is 0 (a CPU cluster: a multi-process job then runs over gloo)."""
    return max(settings.k8s_gpus, gpus) if settings.k8s_gpus else 0


def build_job_manifest(settings: TrainerSettings, job_id: str, gpus: int = 1) -> dict[str, Any]:
    """The batch/v1 Job for ``job_id`` (pure function: tested against the API contract). A job
    with ``gpus > 1`` asks for that many GPUs and runs the entrypoint under torchrun."""
    mount = settings.k8s_artifact_mount
    store_url = settings.resolved_artifact_url()
    on_s3 = store_url.startswith(("s3://", "s3a://"))
    store = store_url if on_s3 else mount
    labels = {"app.kubernetes.io/part-of": "tuneloop", "app.kubernetes.io/component": "training-job",
              LABEL_JOB: job_id}
    env = [{"name": "TUNELOOP_ARTIFACT_URL", "value": store},
           {"name": "HF_HUB_OFFLINE", "value": os.environ.get("HF_HUB_OFFLINE", "1")},
           {"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "TMPDIR", "value": settings.k8s_scratch_mount}]
    if on_s3:
        env += s3_env(settings)
    env += [{"name": k, "value": v} for k, v in sorted(settings.job_env.items())]
    requests: dict[str, str] = {"cpu": settings.k8s_cpu, "memory": settings.k8s_memory}
    limits: dict[str, str] = {"memory": settings.k8s_memory}
    n_gpu = job_gpu_count(settings, gpus)
    if n_gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(n_gpu)
    container = {
        "name": "trainer",
        "image": settings.k8s_image,
        "imagePullPolicy": "IfNotPresent",
        "command": job_command("python", job_id, store, gpus=gpus),
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [*([] if on_s3 else [{"name": "artifacts", "mountPath": mount}]),
                         {"name": "dshm", "mountPath": "/dev/shm"},
                         {"name": "scratch", "mountPath": settings.k8s_scratch_mount}],
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False,
                            "capabilities": {"drop": ["ALL"]}},
    }
    uid = settings.k8s_run_as_user
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the job never talks to the API server
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid,
                            "fsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [*([] if on_s3 else [{"name": "artifacts", "persistentVolumeClaim": {
                        "claimName": settings.k8s_artifact_pvc}}]),
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    {"name": "scratch", "emptyDir": {}}],
    }
    if settings.k8s_node_selector:
        pod_spec["nodeSelector"] = dict(settings.k8s_node_selector)
    if settings.k8s_tolerations is not None:
        if settings.k8s_tolerations:
            pod_spec["tolerations"] = [dict(t) for t in settings.k8s_tolerations]
    elif n_gpu:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                    "effect": "NoSchedule"}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": k8s_name(job_id), "namespace": settings.k8s_namespace, "labels": labels},
        "spec": {
            "backoffLimit": settings.k8s_backoff_limit,
            "activeDeadlineSeconds": settings.k8s_active_deadline_s,
            "podFailurePolicy": {"rules": [
                # evicted, preempted, node drained: retry (it resumes) without using up retries
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget",
                                                     "status": "True"}]},
                # out of memory: the same run would run out again
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer",
                                                      "operator": "In", "values": [EXIT_OOM]}},
            ]},
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def s3_env(settings: TrainerSettings) -> list[dict[str, Any]]:
    """A Job's S3 settings: the service's endpoint and region as values, the credentials as
    references to the Secret's two keys (never the values themselves in the Job object)."""
    env: list[dict[str, Any]] = [
        {"name": f"TUNELOOP_S3_{name}", "value": value}
        for name, value in (("ENDPOINT_URL", settings.s3_endpoint_url),
                            ("REGION", settings.s3_region)) if value]
    if settings.k8s_s3_secret:
        env += [{"name": key, "valueFrom": {"secretKeyRef": {
            "name": settings.k8s_s3_secret, "key": key, "optional": True}}}
            for key in ("TUNELOOP_S3_ACCESS_KEY_ID", "TUNELOOP_S3_SECRET_ACCESS_KEY")]
    return env


class KubernetesExecutor(Executor):
    name = "kubernetes"

    def __init__(self, settings: TrainerSettings, store: ArtifactStore) -> None:
        self.settings = settings
        self.store = store
        self._token: str | None = None
        self._token_read = -1e9
        verify: Any = True
        if settings.k8s_ca_file and Path(settings.k8s_ca_file).is_file():
            verify = settings.k8s_ca_file
        self.http = httpx.AsyncClient(base_url=settings.k8s_api_url.rstrip("/"),
                                      verify=verify, timeout=httpx.Timeout(15.0, connect=5.0))

    def _read_token(self) -> str | None:
        path = Path(self.settings.k8s_token_file)
        return path.read_text().strip() if path.is_file() else None

    async def _headers(self, fresh: bool = False) -> dict[str, str]:
        """The service-account token, re-read when a minute old (or ``fresh``): the kubelet
        rotates projected tokens, and a token read once stops working (as client-go does)."""
        if fresh or time.monotonic() - self._token_read > TOKEN_REFRESH_S:
            self._token = await offload(self._read_token)
            self._token_read = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; a 401 re-reads the token and tries once more."""
        resp = await self.http.request(method, path, headers=await self._headers(), **kwargs)
        if resp.status_code == 401:
            resp = await self.http.request(method, path, headers=await self._headers(fresh=True),
                                           **kwargs)
        return resp

    def _path(self, name: str = "") -> str:
        base = f"/apis/batch/v1/namespaces/{self.settings.k8s_namespace}/jobs"
        return f"{base}/{name}" if name else base

    async def start(self, job_id: str, gpus: int = 1) -> dict[str, Any]:
        body = build_job_manifest(self.settings, job_id, gpus)
        resp = await self._call("POST", self._path(), json=body)
        if resp.status_code == 409:  # already submitted (e.g. restart between submit and commit)
            return {"name": body["metadata"]["name"], "namespace": self.settings.k8s_namespace}
        if resp.status_code >= 300:
            raise RuntimeError(f"Kubernetes refused the Job ({resp.status_code}): "
                               f"{_status_message(resp)}")
        return {"name": body["metadata"]["name"], "namespace": self.settings.k8s_namespace,
                "uid": resp.json().get("metadata", {}).get("uid")}

    async def poll(self, job_id: str, handle: dict[str, Any]) -> Exit | None:
        try:
            resp = await self._call("GET", self._path(handle["name"]))
        except httpx.HTTPError:
            return None  # API server unreachable for a moment: keep waiting
        if resp.status_code == 404:
            return Exit(-1, f"Kubernetes Job {handle['name']} disappeared", "k8s_job_missing")
        if resp.status_code >= 300:
            return None
        status = resp.json().get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") == "Complete":
                return Exit(0)
            if cond.get("type") == "Failed":
                return Exit(1, f"Kubernetes Job failed: {cond.get('reason', '')} "
                               f"{cond.get('message', '')}".strip(), "k8s_job_failed")
        if status.get("succeeded"):
            return Exit(0)
        if (status.get("failed") or 0) > self.settings.k8s_backoff_limit:
            return Exit(1, f"Kubernetes Job failed {status['failed']} times", "k8s_job_failed")
        return None

    async def cancel(self, job_id: str, handle: dict[str, Any]) -> None:
        resp = await self._call("DELETE", self._path(handle["name"]),
                                json={"kind": "DeleteOptions", "apiVersion": "v1",
                                      "propagationPolicy": "Background"})
        if resp.status_code >= 300 and resp.status_code != 404:
            raise RuntimeError(f"Kubernetes refused to delete the Job: {_status_message(resp)}")

    async def recover(self, job_id: str, handle: dict[str, Any] | None) -> bool:
        """The Job keeps running in the cluster while the service restarts: re-attach."""
        if not handle or "name" not in handle:
            return False
        try:
            resp = await self._call("GET", self._path(handle["name"]))
        except httpx.HTTPError:
            return True  # cannot tell now; poll() decides later
        return resp.status_code == 200

    async def close(self) -> None:
        await self.http.aclose()


def _status_message(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("message") or resp.text[:300])
    except ValueError:
        return resp.text[:300]
