"""Observability: deploy/prometheus checked and unit-tested with promtool, every metric and label
the alerts use defined by a service, and a real Prometheus server scraping the four real
service processes (serving metrics by alias and version, the alert rules loaded)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tuneloop.testing import ServiceProcess, require_tool
from tuneloop.testing.stack import four_services

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy/prometheus"
ALERTS = ("TuneloopTargetDown", "TuneloopTrainingJobFailed", "TuneloopTrainingQueueStuck",
          "TuneloopInferenceErrorRate", "TuneloopSwapFailed", "TuneloopEngineRestarting")
ADMIN_KEY = "tlk-prom-test-admin-key-0123456789"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    exe = require_tool("promtool", "Debian package prometheus (scripts/ci/install-prometheus.sh)")
    return subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_config_and_rules_and_the_rules_unit_tests_pass() -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):
        res = _promtool(*args)
        assert res.returncode == 0, f"promtool {' '.join(args)}:\n{res.stdout}{res.stderr}"
    assert "alerts.yml" in yaml.safe_load((PROM / "prometheus.yml").read_text())["rule_files"]


def _defined_metrics() -> tuple[set[str], str]:
    sources = [ROOT / "shared/src/tuneloop/metrics.py",
               *ROOT.glob("services/*/src/*/metrics.py")]
    defined: set[str] = set()
    for path in ROOT.glob("services/*/src/*/metrics.py"):
        svc = path.parts[-4]
        for pair in re.findall(r'name\("([a-z_]+)"\)|n\("([a-z_]+)"\)', path.read_text()):
            defined |= {f"tuneloop_{svc}_{n}" for n in pair if n}
        defined |= {f"tuneloop_{svc}_http_requests_total",
                    f"tuneloop_{svc}_http_request_duration_seconds"}
    return defined, "\n".join(p.read_text() for p in sources)


def test_alerts_use_only_metrics_and_labels_the_services_define() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    assert sorted(r["alert"] for r in rules) == sorted(ALERTS)
    defined, sources = _defined_metrics()
    for rule in rules:
        expr = rule["expr"]
        for metric in re.findall(r"tuneloop_[a-z_]+", expr):
            assert re.sub(r"_(bucket|sum|count)$", "", metric) in defined, (rule["alert"], metric)
        labels = re.findall(r"by \(([a-z_, ]+)\)", expr) + re.findall(r"([a-z_]+)\s*[!=]~?\"", expr)
        for group in labels:
            for label in group.replace(" ", "").split(","):
                assert label in ("job", "le") or f'"{label}"' in sources, (rule["alert"], label)


# -- a real Prometheus against the real services ----------------------------------------------

class Prometheus(ServiceProcess):
    """``prometheus`` on a free port with its own config and TSDB folder."""

    def __init__(self, config: Path, data: Path, log_path: Path) -> None:
        super().__init__("prometheus", log_path=log_path, health_path="/-/ready",
                         startup_timeout=60)
        self.config, self.data = config, data

    def start(self) -> "Prometheus":
        exe = require_tool("prometheus", "Debian package prometheus (scripts/ci/install-prometheus.sh)")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [exe, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready()
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        return r.json()["data"]["result"]


def _poll(fn: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, tiny_random_dir: Path) -> Iterator[dict]:
    """The four services as real processes (inference serving the tiny model as ``base``)."""
    require_tool("prometheus", "Debian package prometheus (scripts/ci/install-prometheus.sh)")
    root = tmp_path_factory.mktemp("prom-stack")
    with four_services(root / "var", tiny_random_dir, admin_key=ADMIN_KEY, inference_admin_key=ADMIN_KEY,
                       env={"gateway": {"GATEWAY_RECONCILE_INTERVAL_S": "0"}}) as started:
        yield started


def test_prometheus_scrapes_the_running_services(services: dict, tmp_path: Path,
                                                 ticket_rows: list[dict]) -> None:
    # the repo's config with the real ports, a 1 s scrape, and the repo's alert rules
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [
        f"127.0.0.1:{p.port}" for p in services.values()]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = Prometheus(tmp_path / "prometheus.yml", tmp_path / "tsdb", tmp_path / "prometheus.log")
    with prom:
        # traffic that every part of the dashboard story records
        token = services["dataset"].env["TUNELOOP_SERVICE_TOKEN"]  # an internal API
        r = httpx.post(f"{services['dataset'].url}/v1/datasets", timeout=120,
                       headers={"Authorization": f"Bearer {token}"},
                       json={"rows": ticket_rows[:40], "eval_size": 8, "name": "t"})
        assert r.status_code == 201, r.text
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        inf = services["inference"].url
        swap = httpx.put(f"{inf}/admin/aliases/bot", json={"model": "base"}, headers=admin,
                         timeout=300)
        assert swap.status_code == 200, swap.text
        body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        for stream in (False, True):
            resp = httpx.post(f"{services['gateway'].url}/v1/chat/completions", headers=admin,
                              json={**body, "stream": stream}, timeout=120)
            assert resp.status_code == 200, resp.text

        up = _poll(lambda: (res := prom.query('up{job="tuneloop"} == 1')) and len(res) == 4 and res,
                   "all four targets up")
        assert {s["metric"]["instance"] for s in up} == \
            {f"127.0.0.1:{p.port}" for p in services.values()}

        def value(promql: str) -> list[dict[str, Any]]:
            return _poll(lambda: prom.query(promql), promql)

        created = value('tuneloop_dataset_uploads_total{result="created"}')
        assert float(created[0]["value"][1]) == 1
        assert value("tuneloop_trainer_queue_depth")[0]["value"][1] == "0"
        http = value('sum by (route) (tuneloop_dataset_http_requests_total{method="POST"})')
        assert {s["metric"]["route"] for s in http} == {"/v1/datasets"}
        swaps = value('tuneloop_inference_swaps_total{alias="bot",result="ok"}')
        assert float(swaps[0]["value"][1]) == 1
        # serving numbers labelled by the alias asked for and the version that answered
        tokens = value('tuneloop_inference_generated_tokens_total{model="bot"}')
        assert tokens[0]["metric"]["version"] == "base" and float(tokens[0]["value"][1]) >= 1
        ttft = value('tuneloop_inference_time_to_first_token_seconds_count{model="bot"}')
        assert ttft[0]["metric"]["version"] == "base"
        latency = value('sum by (model, version, stream) '
                        '(tuneloop_inference_request_duration_seconds_count{model="bot"})')
        assert {s["metric"]["stream"] for s in latency} == {"true", "false"}
        upstream = value('tuneloop_gateway_upstream_requests_total{upstream="inference"}')
        assert sum(float(s["value"][1]) for s in upstream) >= 2

        # the alert rules are loaded and evaluate cleanly against the live series; none fires
        def rules() -> list[dict[str, Any]]:
            groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            got = [r for g in groups for r in g["rules"]]
            evaluated = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in got)
            return got if got and evaluated else []

        loaded = _poll(rules, "alert rules evaluated")
        assert sorted(r["name"] for r in loaded) == sorted(ALERTS)
        assert all(r["health"] == "ok" for r in loaded), loaded
        assert all(r["state"] == "inactive" for r in loaded), loaded
