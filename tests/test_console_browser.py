"""The web console in a real browser (headless Chromium through Playwright) against the four real
services with a tiny local model: sign in, upload a dataset and read its report, start a job and
watch its curve update live, promote a model version and evaluate it against the base with the
side-by-side view, roll back, chat in the playground. Every page is also checked at a phone
width, and a screenshot of each is written to ``$TUNELOOP_TEST_ARTIFACTS/console`` (default
``var/test-artifacts/console``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tuneloop.testing import require_tool
from tuneloop.testing.stack import four_services

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "tlk-console-admin-key-0123456789abcdef"
INFERENCE_ADMIN = "inference-admin-key-console"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HYPER = {"max_steps": 24, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
         "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 6, "warmup_steps": 2}
SHOTS = Path(os.environ.get("TUNELOOP_TEST_ARTIFACTS", ROOT / "var" / "test-artifacts")) / "console"


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory, tiny_base_dir):
    """dataset + trainer + inference + gateway as real processes; the console is the gateway's."""
    var = tmp_path_factory.mktemp("console")
    with four_services(var, tiny_base_dir, admin_key=ADMIN, inference_admin_key=INFERENCE_ADMIN, env={
            "dataset": {"DATASET_DEFAULT_TOKENIZER": str(tiny_base_dir)},
            "gateway": {"GATEWAY_AUTO_PROMOTE": "false", "GATEWAY_EVAL_MAX_TOKENS": "24",
                        "GATEWAY_EVAL_CONCURRENCY": "2", "GATEWAY_CAPTURE_MODELS": "production"}}) as s:
        yield {"url": s["gateway"].url, "var": var, "base_dir": tiny_base_dir,
               "inference": s["inference"].url,
               "service_token": s["inference"].env["TUNELOOP_SERVICE_TOKEN"]}


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium", "the console's browser tests drive headless Chromium")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module")
def page(browser, console_stack):
    """One signed-in tab for the whole flow; page errors in the console's code fail the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    ctx.close()
    assert not pg.errors, pg.errors


@pytest.fixture(scope="module")
def flow() -> dict:
    """What one step hands to the next (dataset id, job id, model id)."""
    return {}


def api(stack, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, stack["url"] + path, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=600, **kw)


def shot(pg, name: str, views: dict[str, str] | None = None) -> None:
    """A full-page screenshot at the desktop width (plus one window's worth scrolled to each of
    ``views``' selectors), then the same page at a phone width: nothing may make the page itself
    scroll sideways there (wide tables scroll inside their own box)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    for suffix, selector in (views or {}).items():
        pg.locator(selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
        pg.screenshot(path=str(SHOTS / f"{name}-{suffix}.png"))
    pg.set_viewport_size({"width": 390, "height": 844})
    pg.wait_for_timeout(300)  # layout settles (charts resize on a frame); not a synchronisation
    overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    pg.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
    pg.set_viewport_size({"width": 1280, "height": 900})
    assert overflow <= 1, f"{name}: the page scrolls sideways by {overflow}px at 390px"


def tickets_jsonl(rows: list[dict], n: int) -> bytes:
    lines = [json.dumps(r) for r in rows[:n]]
    return "\n".join(lines + lines[:6]).encode()   # 6 exact duplicates: a finding to show


def test_sign_in_and_upload_a_dataset_then_read_its_report(page, console_stack, ticket_rows, flow):
    pg = page
    pg.goto(console_stack["url"] + "/")                       # the gateway's root leads to the console
    pg.wait_for_selector("#login[open]")
    pg.fill("#login-key", "tlk-not-a-key-000000000000000000")
    pg.click("#login-form button[type=submit]")
    expect(pg.locator("#login-error")).to_contain_text("invalid_api_key")   # the envelope's code
    pg.fill("#login-key", ADMIN)
    pg.keyboard.press("Enter")                                  # the form works from the keyboard
    pg.wait_for_selector("h1:has-text('Overview')")
    assert pg.evaluate("sessionStorage.length") == 1

    pg.click("nav >> text=Datasets")
    pg.wait_for_selector("#upload-form")
    # a broken file: the API's error envelope, with line and field, is shown to the user
    pg.set_input_files("#upload-file", files=[{"name": "bad.jsonl", "mimeType": "application/jsonl",
                                               "buffer": b'{"instruction": "hi", "output": ""}\nnot json\n'}])
    pg.click("#upload-form button[type=submit]")
    alert = pg.locator("#alerts .alert").first
    alert.wait_for()
    assert alert.get_attribute("data-code") == "dataset_invalid"
    assert "line" in alert.inner_text() and "2" in alert.inner_text()

    pg.set_input_files("#upload-file", files=[{"name": "tickets.jsonl", "mimeType": "application/jsonl",
                                               "buffer": tickets_jsonl(ticket_rows, 120)}])
    pg.fill("#upload-name", "tickets")
    pg.fill("#upload-eval-size", "12")
    pg.fill("#upload-max-seq", "112")
    pg.click("#upload-form button[type=submit]")
    pg.wait_for_url("**#/datasets/ds-*")
    flow["dataset_id"] = pg.url.rsplit("/", 1)[1]
    pg.wait_for_function("document.querySelector('[data-chart=token-histogram]')?.chart")
    report = api(console_stack, "GET", f"/v1/datasets/{flow['dataset_id']}/report").json()
    assert pg.locator("[data-field=valid]").inner_text() == str(report["counts"]["valid"]) == "126"
    truncated = report["tokens"]["truncated"]["rows"]
    assert pg.locator("#truncated-rows").inner_text().startswith(f"{truncated} row")
    assert pg.locator("#dataset-warnings [data-code=exact_duplicates]").count() == 1
    assert "<|im_start|>assistant" in pg.locator("pre.preview").first.inner_text()   # chat-template preview
    histogram = pg.evaluate("document.querySelector('[data-chart=token-histogram]').chart.data.datasets[0].data")
    assert histogram == report["tokens"]["histogram"]["counts"]
    shot(pg, "dataset-report")


def test_start_a_job_and_watch_the_curve_update_live(page, console_stack, flow):
    pg = page
    pg.click("text=Fine-tune on this version")
    pg.wait_for_selector("#job-dataset")
    assert pg.input_value("#job-dataset") == flow["dataset_id"]
    pg.fill("#job-base", str(console_stack["base_dir"]))
    pg.select_option("#job-backend", "peft")
    pg.fill("#job-epochs", "1")
    pg.fill("#job-lr", "0.002")
    pg.fill("#job-max-seq", "128")
    pg.click("text=More hyperparameters (JSON)")
    pg.fill("#job-extra", json.dumps(HYPER))
    pg.click("#job-estimate")                                   # know before you spend
    pg.wait_for_selector("#job-estimate-out:not([hidden])", timeout=120_000)
    estimate = pg.inner_text("#job-estimate-out")
    assert "fits" in estimate and "steps" in estimate and "tokens/s" in estimate, estimate
    shot(pg, "job-estimate")
    pg.click("text=Start training")
    pg.wait_for_url("**#/jobs/job-*")
    flow["job_id"] = pg.url.rsplit("/", 1)[1]
    pg.evaluate("window.__sameDocument = true")                # survives only if nothing reloads
    loss = pg.locator("[data-chart=loss]")
    pg.wait_for_function("Number(document.querySelector('[data-chart=loss]')?.dataset.points || 0) >= 2",
                         timeout=600_000)
    first = int(loss.get_attribute("data-points"))
    pg.wait_for_function(f"Number(document.querySelector('[data-chart=loss]').dataset.points) > {first}",
                         timeout=600_000)
    assert pg.evaluate("window.__sameDocument") is True
    pg.wait_for_selector("#job-status [data-status=succeeded]", timeout=900_000)
    job = api(console_stack, "GET", f"/v1/jobs/{flow['job_id']}").json()
    flow["model_id"] = job["model_id"]
    assert flow["model_id"]
    pg.wait_for_selector(f"#job-result a[href='#/models/{flow['model_id']}']")   # the stream has ended
    expect(loss).to_have_attribute("data-points", str(HYPER["max_steps"]))        # every step plotted
    assert int(loss.get_attribute("data-eval-points")) >= 3
    model = api(console_stack, "GET", f"/v1/models/{flow['model_id']}").json()
    best = pg.locator("#best-checkpoint")
    expect(best).to_contain_text(f"eval loss {model['metrics']['best_eval_loss']:.4f}")
    assert best.inner_text().startswith("Best checkpoint: step")
    assert pg.locator("#job-warnings li").count() >= 1          # e.g. too_few_rows, from the stream
    assert pg.locator("#job-cancel").is_hidden()                # final jobs cannot be cancelled
    shot(pg, "job-live")


def test_promote_then_evaluate_side_by_side(page, console_stack, flow):
    pg, mv = page, flow["model_id"]
    # production serves the base first (set up through the same public API the console uses)
    assert api(console_stack, "POST", "/v1/promotions",
               json={"alias": "production", "model": "base"}).status_code == 201
    pg.click(f"a[href='#/models/{mv}']")
    pg.wait_for_selector("#promote")
    assert pg.locator("#lineage-alias").inner_text() == "no alias"
    pg.fill("#promote-alias", "production")
    pg.click("#promote")
    pg.wait_for_selector("#confirm[open]")
    pg.keyboard.press("Escape")                                 # cancelling changes nothing
    pg.locator("#confirm").wait_for(state="hidden")
    assert _alias(console_stack)["model"] == "base"
    pg.click("#promote")
    pg.click("#confirm-ok")
    pg.wait_for_selector("#notice:has-text('Promoted')", timeout=300_000)
    assert _alias(console_stack)["model"] == mv
    assert "production" in pg.locator("#lineage-alias").inner_text()
    assert pg.locator("[data-rollback=production]").count() == 1
    shot(pg, "model-lineage")

    pg.click("nav >> text=Evaluations")
    pg.wait_for_selector("#eval-dataset")
    pg.select_option("#eval-dataset", flow["dataset_id"])
    for box in pg.locator("fieldset input[type=checkbox]").all():
        box.set_checked(box.get_attribute("value") in ("base", mv))
    pg.fill("#eval-max", "6")
    pg.click("button:has-text('Evaluate')")
    pg.wait_for_url("**#/evals/eval-*")
    flow["eval_id"] = pg.url.rsplit("/", 1)[1]
    pg.wait_for_selector("#metric-table", timeout=600_000)
    run = api(console_stack, "GET", f"/v1/evals/{flow['eval_id']}").json()
    assert run["status"] == "succeeded"
    headers = pg.locator("#metric-table thead th").all_inner_texts()
    assert any(h.startswith("base") for h in headers) and any(h.startswith(mv) for h in headers)
    assert "general suite" in pg.locator("#metric-table").inner_text()          # forgetting
    if run["report"]["task"]["kind"] == "json_fields":
        assert pg.locator("#field-table").count() == 1
    assert pg.locator("#samples .sample").count() == run["report"]["n_examples"] == 6
    first = pg.locator("#samples .sample").first
    assert first.locator("[data-target=base]").count() == 1 and first.locator(f"[data-target='{mv}']").count() == 1
    # the filters agree with the scores in the API's samples
    samples = api(console_stack, "GET", f"/v1/evals/{flow['eval_id']}/samples?suite=task").json()["data"]
    worse = sum(1 for s in samples if s["outputs"][mv]["task_score"] < s["outputs"]["base"]["task_score"])
    pg.select_option("#cmp-a", "base")
    pg.select_option("#cmp-b", mv)
    pg.select_option("#cmp-filter", "b-wrong-a-right")
    assert pg.locator("#samples .sample").count() == worse
    pg.select_option("#cmp-filter", "b-right-a-wrong")
    better = sum(1 for s in samples if s["outputs"][mv]["task_score"] > s["outputs"]["base"]["task_score"])
    assert pg.locator("#samples .sample").count() == better
    pg.select_option("#cmp-filter", "differ")
    differ = sum(1 for s in samples if s["outputs"][mv]["output"] != s["outputs"]["base"]["output"])
    assert pg.locator("#samples .sample").count() == differ
    if differ:
        assert pg.locator("#samples ins.diff, #samples del.diff").count() > 0   # differences highlighted
    pg.select_option("#cmp-filter", "all")
    shot(pg, "eval-side-by-side", views={"metrics": "h1", "examples": "#s-h"})


def test_canary_live_comparison_and_the_capture_review_queue(page, console_stack, flow):
    """'production' serves the tuned model (the test before); the base gets half of its live
    traffic as a canary, whose comparison the console shows and rolls back. The answers of a
    key opted in to capture are reviewed (rejected, edited) and published from the console."""
    pg = page
    c = api(console_stack, "POST", "/v1/canaries", json={"alias": "production", "model": "base",
                                                         "weight": 0.5, "max_latency_ratio": 20})
    assert c.status_code == 201, c.text
    cid = c.json()["id"]
    key = api(console_stack, "POST", "/v1/keys", json={"name": "app", "scopes": ["inference"],
                                                       "capture": True}).json()["key"]
    for i in range(6):
        r = httpx.post(console_stack["url"] + "/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": "production", "max_tokens": 8, "messages": [
                           {"role": "user", "content": f"Subject: Order {i} is late\nWhere is it?"}]})
        assert r.status_code == 200, r.text
    pg.click("nav >> text=Canaries")
    pg.click(f"a[href='#/canaries/{cid}']")
    pg.wait_for_selector("#canary-compare")
    seen = {arm: int(pg.locator(f"#canary-compare tr[data-arm={arm}] [data-field=requests]").inner_text())
            for arm in ("stable", "candidate")}
    live = api(console_stack, "GET", f"/v1/canaries/{cid}").json()["comparison"]
    assert seen == {"stable": live["stable"]["requests"], "candidate": live["candidate"]["requests"]}
    assert sum(seen.values()) == 6
    shot(pg, "canary")
    pg.click("#cny-rollback")
    pg.click("#confirm-ok")
    pg.wait_for_selector("#notice:has-text('Rolled back')")
    assert api(console_stack, "GET", f"/v1/canaries/{cid}").json()["status"] == "rolled_back"

    deadline = time.monotonic() + 30   # captures are written after the answers, off the request path
    while api(console_stack, "GET", "/v1/captures").json()["total"] < 6 and time.monotonic() < deadline:
        time.sleep(0.3)
    pg.click("nav >> text=Captures")
    pg.wait_for_function("document.querySelectorAll('#main [data-capture]').length === 6")
    assert pg.locator("#main [data-capture] >> text=canary").count() == 6   # the arm is shown
    first, second = (pg.locator("#main [data-capture]").nth(i).get_attribute("data-capture")
                     for i in (0, 1))
    pg.locator(f"[data-capture={first}] button:has-text('Reject')").click()
    pg.wait_for_function("document.querySelectorAll('#main [data-capture]').length === 5")
    card = pg.locator(f"[data-capture={second}]")
    card.locator("summary").click()
    card.locator("textarea").fill('{"summary": "Order is late", "urgency": "medium"}')
    card.locator("button:has-text('Save and accept')").click()
    pg.wait_for_selector("#cap-publish:not([disabled])")
    shot(pg, "captures")
    pg.fill("#cap-base", flow["dataset_id"])
    pg.click("#cap-publish")
    pg.wait_for_url("**#/datasets/ds-*")
    published = api(console_stack, "GET", f"/v1/datasets/{pg.url.rsplit('/', 1)[1]}").json()
    assert published["source"]["lineage"]["captures"] == [second]
    assert published["source"]["lineage"]["parent_dataset_id"] == flow["dataset_id"]
    rejected = api(console_stack, "GET", f"/v1/captures/{first}").json()
    assert rejected["status"] == "rejected"


def test_roll_back_from_the_models_page(page, console_stack, flow):
    pg = page
    pg.click("nav >> text=Models")
    button = pg.locator("[data-rollback=production]").first
    button.wait_for()
    button.click()
    pg.wait_for_selector("#confirm[open]")
    pg.click("#confirm-ok")
    pg.wait_for_selector("#notice:has-text('Rolled back')", timeout=300_000)
    assert _alias(console_stack)["model"] == "base"
    assert pg.locator("#al-h + * td:nth-child(2)").first.inner_text() == "base"
    # both moves are recorded as decisions, newest first
    decisions = api(console_stack, "GET", "/v1/promotions").json()["data"]
    assert [d["kind"] for d in decisions[:2]] == ["rollback", "manual"]
    shot(pg, "models")


def test_chat_in_the_playground(page, console_stack):
    pg = page
    pg.click("nav >> text=Playground")
    pg.wait_for_selector("#pg-model")
    pg.select_option("#pg-model", "production")
    pg.fill("#pg-max-tokens", "16")
    pg.fill("#pg-input", "Subject: App keeps crashing\nThe app crashes at checkout.")
    snippet = pg.locator("#pg-python").inner_text()
    assert 'model="production"' in snippet and "stream=True" in snippet and "max_tokens=16" in snippet
    pg.click("#pg-send")
    done = pg.locator(".msg.assistant[data-done=true]")
    done.wait_for(timeout=120_000)
    assert done.locator(".content").inner_text().strip()
    assert "answered by base" in pg.locator("#pg-info").inner_text()     # the alias after rollback
    # an unknown model: the gateway's error envelope is shown to the user
    pg.evaluate("""() => { const s = document.querySelector('#pg-model');
                           s.append(new Option('no-such-model', 'no-such-model')); s.value = 'no-such-model'; }""")
    pg.fill("#pg-input", "hello")
    pg.click("#pg-send")
    pg.wait_for_selector("#alerts .alert[data-code=model_not_found]")
    pg.click("#alerts .alert button")                          # errors can be dismissed
    assert pg.locator("#alerts .alert").count() == 0
    pg.click("#pg-clear")
    pg.select_option("#pg-model", "production")
    pg.fill("#pg-input", "Subject: Refund\nI was charged twice.")
    pg.click("#pg-send")
    pg.locator(".msg.assistant[data-done=true]").wait_for(timeout=120_000)
    shot(pg, "playground")


def test_synthetic_draft_review_and_publish(page, console_stack, ticket_rows):
    """A teacher (here: inference serving the tiny base) answers three inputs; one row is
    rejected, the rest accepted, and the accepted rows are published as a dataset version.
    The instruction and the seed are the tiny base's own domain (support tickets): on another
    instruction it answers with end-of-text at once most of the time (empty rows)."""
    pg = page
    seed = ticket_rows[0]
    pg.click("nav >> text=Datasets")
    pg.click("text=Start a synthetic-data job")
    pg.fill("#syn-base-url", console_stack["inference"] + "/v1")
    pg.fill("#syn-model", "base")
    pg.fill("#syn-key", console_stack["service_token"])  # inference's chat is internal
    pg.fill("#syn-instruction", seed["instruction"])
    pg.select_option("#syn-mode", "completions")
    pg.fill("#syn-seeds", json.dumps({"instruction": seed["instruction"], "input": seed["input"],
                                      # a plain-text answer: a JSON seed would make the job expect
                                      # JSON, which a tiny model writes only now and then
                                      "output": json.loads(seed["output"])["summary"]}))
    pg.fill("#syn-inputs", "My app crashes.\nI was charged twice.\nHow do I reset my password?")
    pg.fill("#syn-n", "3")
    pg.click("#syn-form button[type=submit]")
    pg.wait_for_url("**#/synthetic/syn-*")
    syn_id = pg.url.rsplit("/", 1)[1]
    pg.wait_for_function("document.querySelectorAll('#main [data-row]').length === 3", timeout=120_000)
    shot(pg, "synthetic-review")
    first = pg.locator("#main [data-row]").first
    rejected = int(first.get_attribute("data-row"))
    first.locator("button:has-text('Reject')").click()
    pg.wait_for_function("document.querySelectorAll('#main [data-row]').length === 2")
    pg.click("text=Accept all pending")
    pg.wait_for_selector("#syn-publish:not([disabled])")
    rows = api(console_stack, "GET", f"/v1/synthetic/jobs/{syn_id}/rows").json()["data"]
    assert {r["id"]: r["status"] for r in rows}[rejected] == "rejected"
    assert sorted(r["status"] for r in rows) == ["accepted", "accepted", "rejected"]
    pg.click("#syn-publish")
    pg.wait_for_url("**#/datasets/ds-*")
    assert pg.locator("[data-field=valid]").inner_text() == "2"


def test_passthrough_routes_are_admin_only(console_stack):
    """The routes added for the console: admin scope, and the upstream's answer unchanged."""
    key = api(console_stack, "POST", "/v1/keys", json={"name": "app", "scopes": ["inference"]}).json()["key"]
    for path in ("/v1/aliases", "/v1/deployments", "/v1/synthetic/jobs"):
        r = httpx.get(console_stack["url"] + path, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 403 and r.json()["error"]["type"], (path, r.text)
        assert httpx.get(console_stack["url"] + path).status_code == 401
    deployments = api(console_stack, "GET", "/v1/deployments").json()["data"]
    assert any(d["model"] == "base" and d["state"] == "ready" for d in deployments)
    missing = api(console_stack, "GET", "/v1/synthetic/jobs/syn-0000000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "synthetic_job_not_found"
    assert httpx.get(console_stack["url"] + "/console/vendor/chart.js.LICENSE.md").status_code == 200


def _alias(stack) -> dict:
    data = api(stack, "GET", "/v1/aliases").json()["data"]
    return next(a for a in data if a["id"] == "production")
