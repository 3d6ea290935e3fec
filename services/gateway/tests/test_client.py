"""shared GatewayClient against the real app (lifespan running, ASGI transport)."""

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from tuneloop.clients.base import ServiceError
from tuneloop.clients.gateway import GatewayClient
from tuneloop.testing import free_port
from tuneloop_gateway.app import create_app
from tuneloop_gateway.settings import GatewaySettings

KEY = "tlk-client-admin-key-0123456789"


def test_gateway_client_keys_evals_promotions(tmp_path):
    s = GatewaySettings(data_dir=tmp_path, reconcile_interval_s=0, log_json=False,
                        bootstrap_admin_key=KEY, inference_url=f"http://127.0.0.1:{free_port()}",
                        eval_retries=1, eval_backoff_max_s=0.2)
    app = create_app(s)

    async def scenario():
        async with GatewayClient("http://gw", api_key=KEY,
                                 transport=httpx.ASGITransport(app=app)) as gw:
            created = await gw.create_key("app", ["inference"], rate_limit_rpm=60)
            assert created["key"].startswith("tlk-") and created["rate_limit_rpm"] == 60
            assert created["id"] in [k["id"] for k in await gw.list_keys()]
            await gw.revoke_key(created["id"])
            assert created["id"] not in [k["id"] for k in await gw.list_keys()]
            assert (await gw.list_evals())["data"] == []
            assert await gw.promotions() == []
            with pytest.raises(ServiceError) as err:
                await gw.get_eval("eval-0000000000000000")
            assert err.value.status == 404 and err.value.code == "eval_not_found"
            # targets that cannot be reached: the run still ends, incomplete, with failed targets
            # and the failed requests (retried first) listed, not scored as wrong answers
            run = await gw.create_eval([{"name": "a", "model": "m"}, {"name": "b", "model": "m"}],
                                       rows=[{"instruction": "q", "output": "Paris"}],
                                       general_suite=False)
            done = await gw.wait_eval(run["id"], poll_s=0.05, timeout_s=60)
            assert done["status"] == "incomplete"
            assert [t["status"] for t in done["report"]["targets"]] == ["failed", "failed"]
            failed = done["report"]["failed_requests"]
            assert [(f["target"], f["attempts"]) for f in failed] == [("a", 2), ("b", 2)]
            assert all(f["error"].startswith("unreachable") for f in failed)
            assert done["report"]["targets"][0]["metrics"]["task_score"]["n"] == 0
            # one target: the base-only evaluation the article asks for before fine-tuning
            one = await gw.create_eval([{"name": "base", "model": "m"}], wait=True,
                                       rows=[{"instruction": "q", "output": "Paris"}],
                                       general_suite=False)
            assert one["status"] == "incomplete" and one["report"]["comparisons"] == []
            assert one["report"]["advice"][0].startswith("Base 'base' scores 0.0%")

    with TestClient(app):  # runs the lifespan (DB, keys, services)
        asyncio.run(scenario())
