"""Deployment files validated statically (no Docker engine or cluster here).

- docker-compose.yml: `docker-compose config` (skips where docker-compose is absent; CI
  installs it) plus structural checks (GPU reservations, shared artifact volume, Dockerfiles).
- k8s/: every manifest validated against the Kubernetes schemas shipped in the
  kubernetes-validate package, plus cross-checks (ports, probes, config references).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tuneloop.stack import SERVICES
from tuneloop.testing import require_tool

ROOT = Path(__file__).resolve().parents[1]
PORTS = {name: port for name, _, port in SERVICES}
MODULES = {name: module for name, module, _ in SERVICES}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_config_is_valid() -> None:
    exe = require_tool("docker-compose", "validates docker-compose.yml (apt-get install docker-compose)")
    r = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_compose_structure() -> None:
    services = _compose()["services"]
    for name in PORTS:
        svc = services[name]
        dockerfile = ROOT / svc["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
        text = dockerfile.read_text()
        assert MODULES[name] in text and str(PORTS[name]) in text
        assert "artifacts:/artifacts" in svc["volumes"], name
        assert svc["environment"]["TUNELOOP_ARTIFACT_URL"] == "/artifacts"
    for gpu_svc in ("trainer", "inference"):
        devices = services[gpu_svc]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["gateway"]["ports"] == ["8000:8000"]
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{n}:{p}" for n, p in PORTS.items())


def _k8s_docs() -> list[tuple[Path, dict]]:
    kust = yaml.safe_load((ROOT / "k8s/kustomization.yaml").read_text())
    docs = []
    for res in kust["resources"]:
        path = ROOT / "k8s" / res
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("k8s_version", ["1.31", "1.33"])
def test_k8s_manifests_match_schema(k8s_version: str) -> None:
    import kubernetes_validate

    docs = _k8s_docs()
    assert len(docs) >= 15
    for path, doc in docs:
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def test_k8s_cross_references() -> None:
    docs = _k8s_docs()
    by_kind: dict[str, dict[str, dict]] = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    config = by_kind["ConfigMap"]["tuneloop-config"]["data"]
    for name, port in PORTS.items():
        dep = by_kind["Deployment"][name]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        assert c["ports"][0]["containerPort"] == port
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert by_kind["Service"][name]["spec"]["ports"][0]["port"] == port
        assert config[f"TUNELOOP_{name.upper()}_URL"] == f"http://{name}:{port}"
        claims = [v["persistentVolumeClaim"]["claimName"]
                  for v in dep["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["tuneloop-artifacts"]
    gpu = by_kind["Deployment"]["inference"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    trainer = by_kind["Deployment"]["trainer"]["spec"]["template"]["spec"]
    assert trainer["serviceAccountName"] == "tuneloop-trainer"
    rules = by_kind["Role"]["tuneloop-trainer-jobs"]["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)


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
