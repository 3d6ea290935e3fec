"""The README's walkthrough blocks, executed against a real stack (four service processes).

Blocks marked ``<!-- readme-test:shell -->`` / ``<!-- readme-test:python -->`` in README.md run
as written, with a tiny local model as the base (the README's default is the embedded SmolLM2).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop import stack
from tuneloop.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(kind: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    pattern = rf"<!-- readme-test:{kind} -->\s*```\w*\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


def test_readme_has_tested_blocks() -> None:
    assert len(readme_blocks("shell")) == 1 and len(readme_blocks("python")) == 1
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


@pytest.fixture()
def running_stack(tmp_path: Path, tiny_random_dir: Path, monkeypatch: pytest.MonkeyPatch):
    var = tmp_path / "var"
    env = {
        "TUNELOOP_DATA_DIR": str(var),
        "INFERENCE_BASE_MODEL_PATH": str(tiny_random_dir),
        "INFERENCE_ADMIN_KEY": "readme-test-inference-admin",
        "TUNELOOP_LOG_JSON": "true",
        "GATEWAY_AUTO_PROMOTE": "false",
    }
    for name, _, _ in stack.SERVICES:
        port = free_port()
        env[f"{name.upper()}_PORT"] = str(port)
        env[f"TUNELOOP_{name.upper()}_URL"] = f"http://127.0.0.1:{port}"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert stack.up(var) == 0, "stack did not come up"
    try:
        yield var, env
    finally:
        stack.down(var)


def test_readme_walkthrough_runs(running_stack, tmp_path: Path, tiny_random_dir: Path) -> None:
    var, env = running_stack
    work = tmp_path / "work"
    work.mkdir()
    run_env = {**os.environ, **env, "TUNELOOP_URL": env["TUNELOOP_GATEWAY_URL"],
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    shell = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_blocks("shell")[0]],
                           cwd=work, env=run_env, capture_output=True, text=True, timeout=600)
    out = shell.stdout
    assert shell.returncode == 0, shell.stdout[-3000:] + shell.stderr[-3000:]
    assert "train" in out and "eval" in out                      # report summary
    assert '"code":"dataset_invalid"' in out.replace(" ", "")     # the bad file: refused
    assert '"line":1' in out.replace(" ", "") and '"line":2' in out.replace(" ", "")
    assert '"scopes":["inference"]' in out.replace(" ", "")       # the new key
    assert '"object":"list"' in out.replace(" ", "")              # /v1/models
    assert "base" in out and '"status":"succeeded"' in out.replace(" ", "")  # the base eval

    admin = (var / "gateway-admin-key").read_text().strip()
    py = subprocess.run([sys.executable, "-c", readme_blocks("python")[0]], cwd=work,
                        env={**run_env, "ADMIN": admin, "BASE_MODEL": str(tiny_random_dir)},
                        capture_output=True, text=True, timeout=600)
    assert py.returncode == 0, py.stdout[-3000:] + py.stderr[-3000:]
    out = py.stdout
    first = re.match(r"base (\d+) ", out)                     # served model + usage counts
    assert first and int(first.group(1)) > 0, out[:500]
    created = re.search(r"^(job-[0-9a-f]+) (validating_files|queued|running)$", out, flags=re.M)
    assert created, out[-1000:]
    assert f"'{created.group(1)}'" in out                        # listed by fine_tuning.jobs.list
