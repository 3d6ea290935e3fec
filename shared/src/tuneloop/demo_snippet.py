"""The demo's last step: a ready-to-paste OpenAI SDK snippet for the promoted alias, with a fresh
inference-scoped key, and the answer of that very call through the gateway."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax

from .cli.api import GatewayAPI

SNIPPET = '''from openai import OpenAI

client = OpenAI(base_url="{url}/v1", api_key="{key}")
ticket = """Subject: Charged twice
Hi, I was charged twice for my Pro subscription this month. Urgent: production is down for all our customers. Thanks, Anna"""
resp = client.chat.completions.create(
    model="{alias}",
    messages=[{{"role": "user", "content": "Summarize this support ticket and classify its urgency.\\n\\n" + ticket}}],
    max_tokens=80,
)
print(resp.choices[0].message.content)
'''


def step_snippet(api: GatewayAPI, alias: str, console: Console) -> dict:
    key = api.create_key("demo-inference", ["inference"])
    code = SNIPPET.format(url=api.url, key=key["key"], alias=alias)
    console.print(Panel(Syntax(code, "python", word_wrap=True),
                        title=f"OpenAI SDK against the promoted alias '{alias}'", expand=False))
    answer = None
    try:  # prove it works: the same call, through the gateway, with the new inference key
        from openai import OpenAI

        client = OpenAI(base_url=f"{api.url}/v1", api_key=key["key"], max_retries=0, timeout=120)
        ticket = ("Subject: Charged twice\nHi, I was charged twice for my Pro subscription this month. "
                  "Urgent: production is down for all our customers. Thanks, Anna")
        resp = client.chat.completions.create(model=alias, max_tokens=80, messages=[{
            "role": "user", "content": "Summarize this support ticket and classify its urgency.\n\n" + ticket}])
        answer = resp.choices[0].message.content
        console.print(f"answer from '{alias}': [bold]{answer}[/]")
    except Exception as exc:  # the demo reports, it does not crash here
        console.print(f"[yellow]the snippet's call failed: {exc}[/]")
    return {"key_id": key.get("id"), "answer": answer}
