"""What a user does in the console: sign in (and be refused with a wrong key), watch a model
deployment come up, read its page, stop it; watch a billed one's cost against its budget; create
one, first with a bad field; pick from the marketplace; see why one failed."""

import json
import time

import pytest
from selenium.webdriver.common.by import By

from tests.e2e.console.conftest import (
    POLL_S,
    api_calls,
    badge,
    cli_create,
    css,
    model_deployment,
    open_page,
    shot,
    sign_in,
    text_of,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_a_wrong_key_is_refused_with_a_clear_message(browser, platform):
    browser.get(f"{platform.api_url}/console")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    sign_in(browser, "prism_not_a_real_key")
    error = wait_for(lambda: text_of(browser, "#signin-error"))
    assert "not accepted" in error
    assert not css(browser, "table#deployments")
    assert browser.execute_script("return sessionStorage.getItem('prism.apiKey')") is None
    shot(browser, "sign-in-refused")


def test_a_key_refused_mid_session_signs_out_and_says_why(console, platform):
    console.execute_script("sessionStorage.setItem('prism.apiKey', 'prism_revoked_meanwhile')")
    wait_for(lambda: css(console, "#signin-view:not([hidden])"), timeout=POLL_S * 3)
    assert text_of(console, "#signin-error")  # why: the key was refused
    assert not [t for t in css(console, "table#deployments") if t.is_displayed()]
    console.get_log("browser")  # the 401 it was refused with, expected here


def test_a_page_load_fetches_none_of_the_files_it_already_has(console, platform):
    """The page is revalidated on every load; a release's files are cached for good, so a
    later load costs the API function one call (the page), not one per file."""
    console.get(f"{platform.api_url}/console")
    wait_for(lambda: "refreshed" in text_of(console, "#last-refresh"))
    files = console.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/console/')).map(e => [e.name, e.transferSize])"
    )
    assert len(files) >= 15  # the modules, the style sheet and the icon
    assert [name for name, transferred in files if transferred] == []  # all from the cache


def test_the_demo_deployment_appears_runs_shows_its_logs_and_stops(console, platform):
    console.execute_script("performance.clearResourceTimings()")
    watched_since = time.monotonic()
    created = model_deployment(platform, "demo")
    deployment_id = created["id"]
    wait_for(lambda: badge(console, deployment_id), timeout=POLL_S * 3)
    wait_for(lambda: badge(console, deployment_id) == "running", timeout=90)
    shot(console, "deployments")
    # The list page costs what `prism deploy list` costs: one list call a refresh, no more.
    calls = api_calls(console)
    assert calls and all("/api/v1/compute/deployments?" in url for url in calls)
    assert len(calls) <= (time.monotonic() - watched_since) / POLL_S + 1

    css(console, f'tr[data-id="{deployment_id}"] a.deployment-link')[0].click()
    wait_for(lambda: "running" in _timeline(console))
    assert console.find_element(By.TAG_NAME, "h1").text == "demo"
    assert _timeline(console)[0] == "provisioning"
    assert css(console, "svg#cost-chart")
    assert "No budget" in text_of(console, "#budget-exhaustion")  # a node is free

    def logged_a_probe():
        console.find_element(By.ID, "refresh-logs").click()
        return "GET /health" in text_of(console, "pre#logs")

    wait_for(logged_a_probe, timeout=POLL_S * 3, every=1)
    status = json.loads(platform.cli("deploy", "status", deployment_id, "--json").stdout)
    assert text_of(console, "code#endpoint-url") == status["endpoint_url"]  # the node's port
    console.find_element(By.ID, "copy-endpoint").click()
    wait_for(lambda: "Copied" in console.find_element(By.ID, "copy-endpoint").text)
    shot(console, "deployment-running")

    console.find_element(By.ID, "stop").click()
    dialog = wait_for(lambda: [d for d in css(console, "dialog#stop-dialog") if d.is_displayed()])
    shot(console, "deployment-stop-confirm")
    dialog[0].find_element(By.ID, "stop-confirm").click()
    wait_for(lambda: text_of(console, "#status") == "stopped", timeout=60)
    assert _timeline(console)[-1] == "stopped"
    assert console.switch_to.active_element.tag_name != "body"  # the focus stayed somewhere
    shot(console, "deployment-stopped")
    # Stopping twice is harmless, as in the API.
    assert platform.cli("deploy", "stop", deployment_id).returncode == 0


def _timeline(browser) -> list[str]:
    return [li.get_attribute("data-status") for li in css(browser, "#timeline li")]


def test_a_billed_deployment_charts_its_cost_against_its_budget(console, platform):
    created = cli_create(
        platform, "--name", "billed", "--image", "acme/llm:1", "--target", "runpod",
        "--gpu", "A100", "--budget", "5",
    )  # fmt: skip
    console.get(f"{platform.api_url}/console#/deployments/{created['id']}")
    console.execute_script("performance.clearResourceTimings()")
    watched_since = time.monotonic()
    wait_for(lambda: text_of(console, "#status") == "running", timeout=60)
    wait_for(lambda: len(css(console, "#ledger tbody tr")) >= 2, timeout=POLL_S * 4)
    line = console.find_element(By.CSS_SELECTOR, "svg#cost-chart path.cost-line")
    assert line.get_attribute("d").count("L") >= 2  # a line through the charges
    assert css(console, "svg#cost-chart line.budget-line")
    assert "Budget runs out" in wait_for(lambda: text_of(console, "#budget-exhaustion"))
    shot(console, "deployment-cost-chart")
    # One call per panel per refresh: the detail (health included) and the newest costs; the
    # logs once, on open.
    paths = [url.split(f"/deployments/{created['id']}")[1].split("?")[0] for url in
             api_calls(console)]  # fmt: skip
    refreshes = paths.count("")
    assert 1 <= refreshes <= (time.monotonic() - watched_since) / POLL_S + 1
    assert set(paths) <= {"", "/costs", "/logs"} and paths.count("/logs") <= 1
    assert paths.count("/costs") <= refreshes + 1  # + the whole ledger, once
    platform.cli("deploy", "stop", created["id"], check=True)


def test_create_with_a_bad_field_shows_the_error_beside_it(console, platform):
    open_page(console, platform, "#/create")
    form = console.find_element(By.ID, "create-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="form"][value="image"]').click()
    name = form.find_element(By.NAME, "name")
    name.send_keys("Not A Valid Name!")
    form.find_element(By.NAME, "image").send_keys("nginx:1.27")
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    error = wait_for(lambda: css(console, '.field-error[data-field="name"]'))[0]
    assert "lowercase" in error.text and error.is_displayed()
    assert name.get_attribute("aria-invalid") == "true"
    assert error.get_attribute("id") in name.get_attribute("aria-describedby").split()
    beside = console.execute_script(
        "const f = arguments[0], e = arguments[1];"
        "return f.nextElementSibling === e || f.parentElement.contains(e);",
        name,
        error,
    )
    assert beside
    assert console.switch_to.active_element == name  # the first invalid field has the focus
    shot(console, "create-field-error")
    console.get_log("browser")  # the 400 the field error came with, expected here

    name.clear()
    name.send_keys("from-the-console")
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    key = wait_for(lambda: text_of(console, "#endpoint-key-once code#endpoint-key"))
    assert key.startswith("prismep_")  # the endpoint key, shown this once
    assert wait_for(lambda: console.find_element(By.TAG_NAME, "h1").text) == "from-the-console"
    shot(console, "create-done")


def test_the_marketplace_list_fills_the_resource_form(console, platform):
    open_page(console, platform, "#/create")
    form = console.find_element(By.ID, "create-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="form"][value="resource"]').click()
    wait_for(lambda: css(console, 'select[name="resource_slug"] option[value="tiny-regressor"]'))
    css(console, 'select[name="resource_slug"] option[value="tiny-regressor"]')[0].click()
    catalog = json.loads(platform.cli("marketplace", "list", "--json", check=True).stdout)
    tiny = next(r for r in catalog if r["slug"] == "tiny-regressor")
    assert tiny["title"] in wait_for(lambda: text_of(console, "#resource-info"))
    shot(console, "create-marketplace")


def test_a_failed_deployment_says_why_on_its_page(console, platform):
    broken = cli_create(
        platform, "--name", "broken", "--weights", "/nonexistent/weights", "--gpu", "none",
        "--", "python3", "serve.py",
    )  # fmt: skip
    open_page(console, platform, f"#/deployments/{broken['id']}")
    wait_for(lambda: text_of(console, "#status") == "failed", timeout=60)
    detail = json.loads(platform.cli("deploy", "status", broken["id"], "--json").stdout)
    assert detail["failure_reason"] in text_of(console, "#failure")
    assert detail["failure_reason"] in css(console, '#timeline li[data-status="failed"]')[0].text
    shot(console, "deployment-failed")
