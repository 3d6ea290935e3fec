"""FAKE Kubernetes API server for tests (there is no cluster here): batch/v1 Jobs only.

A real HTTP server on a port that checks what the real API server would refuse: bearer token,
``apiVersion``/``kind``, DNS-1123 names, namespace match, a pod template with containers
(name + image), ``restartPolicy`` Never|OnFailure for Jobs, resource quantities, volume mounts
that name declared volumes, env entries with names. It answers like the real one (201 with the
stored object, 409 AlreadyExists, 422 Invalid ``Status``, 404 NotFound, DELETE with
propagationPolicy) and serves the status a test sets through ``/_fake/...``.

    python fake_kube_api.py --port 8443 --token secret
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")
JOBS_PATH = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/?]+))?$")
FAKE_STATUS = re.compile(r"^/_fake/jobs/([^/]+)/([^/]+)/status$")

STORE: dict[tuple[str, str], dict[str, Any]] = {}
DELETED: list[dict[str, Any]] = []
LOCK = threading.Lock()


def status_obj(code: int, reason: str, message: str, details: Any = None) -> dict[str, Any]:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def validate_job(ns: str, body: Any) -> list[str]:
    """What the API server's validation would reject (the subset that matters for Jobs)."""
    errs: list[str] = []
    if not isinstance(body, dict):
        return ["body must be an object"]
    if body.get("apiVersion") != "batch/v1":
        errs.append("apiVersion: must be batch/v1")
    if body.get("kind") != "Job":
        errs.append("kind: must be Job")
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    if not name or len(name) > 63 or not DNS1123_LABEL.match(name):
        errs.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 label")
    if meta.get("namespace") not in (None, ns):
        errs.append("metadata.namespace: does not match the namespace in the URL")
    for k, v in (meta.get("labels") or {}).items():
        if not isinstance(v, str) or len(v) > 63:
            errs.append(f"metadata.labels[{k}]: must be a string of at most 63 characters")
    spec = body.get("spec") or {}
    for key in ("backoffLimit", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        if key in spec and (not isinstance(spec[key], int) or spec[key] < 0):
            errs.append(f"spec.{key}: must be a non-negative integer")
    tmpl = spec.get("template")
    if not isinstance(tmpl, dict):
        return errs + ["spec.template: Required value"]
    pod = tmpl.get("spec") or {}
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        errs.append("spec.template.spec.restartPolicy: Unsupported value: must be Never or OnFailure")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        return errs + ["spec.template.spec.containers: Required value"]
    volumes = {v.get("name") for v in pod.get("volumes") or []}
    for v in pod.get("volumes") or []:
        kinds = [k for k in v if k != "name"]
        if len(kinds) != 1:
            errs.append(f"volumes[{v.get('name')}]: exactly one volume source required")
    for i, c in enumerate(containers):
        p = f"spec.template.spec.containers[{i}]"
        if not c.get("name") or not DNS1123_LABEL.match(c["name"]):
            errs.append(f"{p}.name: Required value (RFC 1123 label)")
        if not c.get("image"):
            errs.append(f"{p}.image: Required value")
        for key in ("command", "args"):
            if key in c and not all(isinstance(x, str) for x in c[key]):
                errs.append(f"{p}.{key}: must be a list of strings")
        for e in c.get("env") or []:
            if not e.get("name") or ("value" in e and not isinstance(e["value"], str)):
                errs.append(f"{p}.env: each entry needs a name and a string value")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for rk, rv in (res.get(section) or {}).items():
                if not isinstance(rv, str) or not QUANTITY.match(rv):
                    errs.append(f"{p}.resources.{section}[{rk}]: quantities must match the regular "
                                f"expression (got {rv!r})")
        gpu_req = (res.get("requests") or {}).get("nvidia.com/gpu")
        gpu_lim = (res.get("limits") or {}).get("nvidia.com/gpu")
        if gpu_req is not None and gpu_req != gpu_lim:
            errs.append(f"{p}.resources.requests[nvidia.com/gpu]: must equal its limit "
                        "(extended resources cannot be overcommitted)")
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                errs.append(f"{p}.volumeMounts.name: Not found: {m.get('name')!r}")
            if not str(m.get("mountPath", "")).startswith("/"):
                errs.append(f"{p}.volumeMounts.mountPath: must be absolute")
    return errs


class Handler(BaseHTTPRequestHandler):
    token = ""

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, status_obj(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self._send(200, {"ok": True})
        if self.path == "/_fake/jobs":
            with LOCK:
                return self._send(200, {"jobs": {f"{k[0]}/{k[1]}": v for k, v in STORE.items()},
                                        "deleted": DELETED})
        m = JOBS_PATH.match(self.path.split("?")[0])
        if not m or not self._authorized():
            return None if m else self._send(404, status_obj(404, "NotFound", "not found"))
        ns, name = m.groups()
        with LOCK:
            if name is None:
                items = [v for (n, _), v in STORE.items() if n == ns]
                return self._send(200, {"kind": "JobList", "apiVersion": "batch/v1", "items": items})
            job = STORE.get((ns, name))
        if job is None:
            return self._send(404, status_obj(404, "NotFound", f'jobs.batch "{name}" not found'))
        return self._send(200, job)

    def do_POST(self) -> None:
        if self.path == "/_fake/token":  # the kubelet rotated the service-account token
            Handler.token = (self._body() or {})["token"]
            return self._send(200, {"ok": True})
        fm = FAKE_STATUS.match(self.path)
        if fm:
            with LOCK:
                job = STORE.get(fm.groups())
                if job is None:
                    return self._send(404, {"error": "no such job"})
                job["status"] = self._body() or {}
            return self._send(200, job)
        m = JOBS_PATH.match(self.path.split("?")[0])
        if not m or m.group(2):
            return self._send(404, status_obj(404, "NotFound", "not found"))
        if not self._authorized():
            return None
        ns = m.group(1)
        try:
            body = self._body()
        except json.JSONDecodeError:
            return self._send(400, status_obj(400, "BadRequest", "invalid JSON"))
        errs = validate_job(ns, body)
        if errs:
            return self._send(422, status_obj(422, "Invalid", "Job is invalid: " + "; ".join(errs),
                                              {"causes": [{"message": e} for e in errs]}))
        name = body["metadata"]["name"]
        with LOCK:
            if (ns, name) in STORE:
                return self._send(409, status_obj(409, "AlreadyExists",
                                                  f'jobs.batch "{name}" already exists'))
            body["metadata"].update({"namespace": ns, "uid": str(uuid.uuid4()),
                                     "creationTimestamp": "2026-01-01T00:00:00Z"})
            body["status"] = {"active": 1}
            STORE[(ns, name)] = body
        return self._send(201, body)

    def do_DELETE(self) -> None:
        m = JOBS_PATH.match(self.path.split("?")[0])
        if not m or not m.group(2):
            return self._send(404, status_obj(404, "NotFound", "not found"))
        if not self._authorized():
            return None
        opts = self._body() or {}
        with LOCK:
            job = STORE.pop(m.groups(), None)
            if job is None:
                return self._send(404, status_obj(404, "NotFound", "not found"))
            DELETED.append({"name": m.group(2), "propagationPolicy": opts.get("propagationPolicy")})
        return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    a = p.parse_args()
    Handler.token = a.token
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
