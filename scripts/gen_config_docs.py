"""Generate docs/configuration.md from the services' settings classes (the one source of truth).

Run: .venv/bin/python scripts/gen_config_docs.py   (a test fails when the file is stale)
"""

from __future__ import annotations

import importlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
SERVICES = [("dataset", "DatasetSettings"), ("trainer", "TrainerSettings"),
            ("inference", "InferenceSettings"), ("gateway", "GatewaySettings")]


def _default(field) -> str:  # noqa: ANN001
    if field.is_required():
        return "(required)"
    if getattr(field.default_factory, "__name__", "") == "gethostname":
        return "(this host's name)"  # not this machine's: the docs are the same everywhere
    value = field.get_default(call_default_factory=True)
    text = "" if value is None else str(value)
    return f"`{text}`" if text else "—"


def render() -> str:
    from tuneloop.settings import ServiceSettings

    common = set(ServiceSettings.model_fields)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `scripts/gen_config_docs.py`; do not edit by hand.",
        "Every setting is an environment variable `<PREFIX><NAME>` (upper case); each one also",
        "falls back to `TUNELOOP_<NAME>`, so what all services share is set once",
        "(`TUNELOOP_DATA_DIR`, `TUNELOOP_ARTIFACT_URL`, `TUNELOOP_DATABASE_URL`, ...).",
        "",
        "## Common to every service",
        "",
        "| name | default | description |",
        "|---|---|---|",
    ]
    for name, field in ServiceSettings.model_fields.items():
        if name == "service_name":
            continue
        lines.append(f"| `{name.upper()}` | {_default(field)} | {field.description or ''} |")
    for svc, cls_name in SERVICES:
        module = importlib.import_module(f"tuneloop_{svc}.settings")
        cls = getattr(module, cls_name)
        prefix = cls.model_config.get("env_prefix", "")
        lines += ["", f"## {svc} (`{prefix}*`)", "", "| variable | default | description |",
                  "|---|---|---|"]
        for name, field in cls.model_fields.items():
            if name in common and name not in ("port",):
                continue
            desc = (field.description or getattr(ServiceSettings.model_fields.get(name), "description", "")
                    or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{prefix}{name.upper()}` | {_default(field)} | {desc} |")
        notes = getattr(module, "DOC_NOTES", "")  # prose kept beside the settings it explains
        if notes:
            lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
