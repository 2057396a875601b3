"""The web console in a real browser (Debian's headless chromium through chromedriver) against
the whole local platform: a node agent running a real model, fake clouds billing $36 an hour,
the real API behind the local API Gateway. Screenshots of each page go to
.prism/screenshots/console/ (not committed) for a person to look at."""

import json
import shutil
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.e2e.conftest import REPO, free_port, start_platform, stop_platform

pytestmark = pytest.mark.e2e

SCREENSHOTS = REPO / ".prism" / "screenshots" / "console"
MODEL_DIR = REPO / "examples" / "models" / "tiny-regressor"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
VIEWER_ZONE = "Asia/Kathmandu"  # UTC+5:45: a time shown in UTC or the host's zone cannot pass
POLL_S = 5  # how often the console refreshes a page


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    runpod, lambda_cloud = str(free_port()), str(free_port())
    state = tmp_path_factory.mktemp("console")
    started = start_platform(
        state,
        tick=1,
        extra_env={"PRISM_MOTO_SCAN_LOG": str(state / "scans.log")},  # every Scan, one a line
        args=("--fake-clouds", "--runpod-port", runpod, "--lambda-port", lambda_cloud)
        + ("--fake-price-per-hour", "36"),  # a cent a second: the cost chart moves
    )
    yield started
    stop_platform(started)


@pytest.fixture(scope="module")
def browser(platform):
    assert CHROMIUM and CHROMEDRIVER, "the browser tests need Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": VIEWER_ZONE})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def console(browser, platform):
    """Signed in, on the deployments page; the browser's log checked after each test."""
    browser.set_window_size(1280, 900)
    browser.get(f"{platform.api_url}/console")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    sign_in(browser, platform.api_key)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "table#deployments"))
    scanned = scans_of_growing_tables(platform)
    yield browser
    assert scans_of_growing_tables(platform) == scanned  # the console adds no Scan
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    # A 4xx the console asked for and showed (logs of a deployment with none) is not a fault.
    assert [e for e in problems if "status of 4" not in e["message"]] == []


def scans_of_growing_tables(platform) -> list[str]:
    """The tables Scanned so far, but the marketplace catalog: tens of operator-made recipes,
    read whole by `GET /marketplace/resources` (the create page's list, `prism marketplace
    list`) in a one-page Scan, the right read for it."""
    log = platform.state_dir.parent / "scans.log"
    tables = log.read_text().split() if log.exists() else []
    return [table for table in tables if not table.endswith("-resources")]


def sign_in(browser, key: str) -> None:
    field = wait_for(lambda: browser.find_element(By.ID, "api-key"))
    field.clear()
    field.send_keys(key, Keys.ENTER)


def wait_for(check, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except (StaleElementReferenceException, WebDriverException):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s")
        time.sleep(every)


def shot(browser, name: str) -> None:
    """The whole page, not just the window: the window grows to the page's height for it."""
    size = browser.get_window_size()
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(size["width"], min(max(height, size["height"]), 8000))
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
    browser.set_window_size(size["width"], size["height"])


def css(browser, selector: str):
    return browser.find_elements(By.CSS_SELECTOR, selector)


def text_of(browser, selector: str) -> str:
    found = css(browser, selector)
    return found[0].text if found else ""


def cli_create(platform, *args: str) -> dict:
    return json.loads(platform.cli("deploy", "create", "--json", *args, check=True).stdout)


def badge(browser, deployment_id: str) -> str | None:
    found = css(browser, f'tr[data-id="{deployment_id}"] .status-badge')
    return found[0].get_attribute("data-status") if found else None


def api_calls(browser) -> list[str]:
    """The API URLs the page has fetched since its resource timings were last cleared."""
    entries = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [url for url in entries if "/api/v1/" in url]


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


def test_the_demo_deployment_appears_runs_shows_its_logs_and_stops(console, platform):
    created = cli_create(
        platform, "--name", "demo", "--weights", str(MODEL_DIR), "--gpu", "none",
        "--", "python3", str(MODEL_DIR / "serve.py"),
    )  # fmt: skip
    deployment_id = created["id"]
    console.execute_script("performance.clearResourceTimings()")
    watched_since = time.monotonic()
    wait_for(lambda: badge(console, deployment_id), timeout=POLL_S * 3)
    wait_for(lambda: badge(console, deployment_id) == "running", timeout=90)
    shot(console, "deployments")
    # The list page costs what `prism deploy list` costs: one list call a refresh, no more.
    calls = api_calls(console)
    assert calls and all("/api/v1/compute/deployments?" in url for url in calls)
    assert len(calls) <= (time.monotonic() - watched_since) / POLL_S + 1

    css(console, f'tr[data-id="{deployment_id}"] a.deployment-link')[0].click()
    wait_for(lambda: css(console, "#timeline li"))
    assert console.find_element(By.TAG_NAME, "h1").text == "demo"
    wait_for(lambda: "running" in _timeline(console))
    assert _timeline(console)[0] == "provisioning"
    wait_for(lambda: css(console, "svg#cost-chart"))
    assert "No budget" in text_of(console, "#budget-exhaustion")  # a node is free
    console.find_element(By.ID, "refresh-logs").click()
    wait_for(lambda: "GET /health" in text_of(console, "pre#logs"), timeout=POLL_S * 3)
    status = json.loads(platform.cli("deploy", "status", deployment_id, "--json").stdout)
    assert text_of(console, "code#endpoint-url") == status["endpoint_url"]  # the node's port
    shot(console, "deployment-running")

    console.find_element(By.ID, "stop").click()
    dialog = wait_for(lambda: [d for d in css(console, "dialog#stop-dialog") if d.is_displayed()])
    shot(console, "deployment-stop-confirm")
    dialog[0].find_element(By.ID, "stop-confirm").click()
    wait_for(lambda: text_of(console, "#status") == "stopped", timeout=60)
    assert _timeline(console)[-1] == "stopped"
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
    exhaustion = wait_for(lambda: text_of(console, "#budget-exhaustion"))
    assert "Budget runs out" in exhaustion
    shot(console, "deployment-cost-chart")
    # One call per panel per refresh (detail, health, costs; logs were loaded once, on open).
    paths = [url.split(f"/deployments/{created['id']}")[1].split("?")[0] for url in
             api_calls(console)]  # fmt: skip
    refreshes = paths.count("")
    assert 1 <= refreshes <= (time.monotonic() - watched_since) / POLL_S + 1
    assert set(paths) <= {"", "/health", "/costs", "/logs"} and paths.count("/logs") <= 1
    assert paths.count("/health") <= refreshes and paths.count("/costs") <= refreshes
    platform.cli("deploy", "stop", created["id"], check=True)


def test_create_with_a_bad_field_shows_the_error_beside_it(console, platform):
    console.get(f"{platform.api_url}/console#/create")
    form = wait_for(lambda: console.find_element(By.ID, "create-form"))
    form.find_element(By.CSS_SELECTOR, 'input[name="form"][value="image"]').click()
    name = form.find_element(By.NAME, "name")
    name.send_keys("Not A Valid Name!")
    form.find_element(By.NAME, "image").send_keys("nginx:1.27")
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    error = wait_for(lambda: css(console, '.field-error[data-field="name"]'))[0]
    assert error.text and error.is_displayed()
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

    name.clear()
    name.send_keys("from-the-console")
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    key = wait_for(lambda: text_of(console, "#endpoint-key-once"))
    assert "from-the-console" == wait_for(lambda: console.find_element(By.TAG_NAME, "h1").text)
    assert "ek_" in key or len(key) > 20
    shot(console, "create-done")


def test_the_marketplace_list_fills_the_resource_form(console, platform):
    console.get(f"{platform.api_url}/console#/create")
    form = wait_for(lambda: console.find_element(By.ID, "create-form"))
    form.find_element(By.CSS_SELECTOR, 'input[name="form"][value="resource"]').click()
    options = wait_for(lambda: css(console, 'select[name="resource_slug"] option[value]'))
    slugs = [o.get_attribute("value") for o in options]
    assert "tiny-regressor" in slugs
    shot(console, "create-marketplace")


def test_the_nodes_page_shows_the_local_node_and_what_runs_on_it(console, platform):
    console.get(f"{platform.api_url}/console#/nodes")
    row = wait_for(lambda: css(console, "table#nodes tbody tr"))[0]
    assert row.find_element(By.CSS_SELECTOR, ".status-badge").get_attribute("data-status") == (
        "online"
    )
    shot(console, "nodes")


def test_times_are_shown_in_the_viewers_time_zone(console, platform):
    created = cli_create(platform, "--name", "zoned", "--image", "nginx:1.27")
    console.get(f"{platform.api_url}/console#/deployments/{created['id']}")
    shown = wait_for(lambda: css(console, "#timeline li time"))[0]
    began = datetime.fromisoformat(created["created_at"]).astimezone(ZoneInfo(VIEWER_ZONE))
    assert f"{began.hour % 12 or 12}:{began.minute:02d}" in shown.text
    assert VIEWER_ZONE in console.find_element(By.TAG_NAME, "footer").text


@pytest.mark.parametrize("page", ["", "#/create", "#/nodes"])
def test_every_page_fits_a_phone(console, platform, page):
    console.set_window_size(360, 800)
    console.get(f"{platform.api_url}/console{page}")
    wait_for(lambda: css(console, "main h1"))
    time.sleep(0.5)  # its first data
    width = console.execute_script("return document.documentElement.scrollWidth")
    assert width <= console.execute_script("return window.innerWidth")
    shot(console, f"phone-{page.strip('#/') or 'deployments'}")


def test_the_keyboard_reaches_and_opens_a_deployment(console, platform):
    wait_for(lambda: css(console, "a.deployment-link"))
    keys = ActionChains(console)
    for _ in range(60):  # from the top of the page, Tab after Tab
        keys.send_keys(Keys.TAB).perform()
        if "deployment-link" in (console.switch_to.active_element.get_attribute("class") or ""):
            break
    else:
        raise AssertionError("Tab never reached a deployment")
    keys.send_keys(Keys.ENTER).perform()
    wait_for(lambda: "#/deployments/" in console.current_url)
    wait_for(lambda: css(console, "#timeline li"))


# Every visible text's colour against the background it is drawn on (the first opaque one up
# its ancestors), by WCAG's relative luminance: at least 4.5:1.
CONTRAST = """
const parse = c => (c.match(/[\\d.]+/g) || []).map(Number);
const lum = ([r, g, b]) => {
  const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
};
const background = el => {
  for (; el; el = el.parentElement) {
    const c = parse(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || c[3] > 0.9) return c;
  }
  return [255, 255, 255];
};
const worst = [];
for (const el of document.querySelectorAll('body *')) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.offsetParent) continue;
  const [a, b] = [lum(parse(getComputedStyle(el).color)), lum(background(el))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) worst.push(`${el.tagName}.${el.className}: ${ratio.toFixed(2)}`);
}
return worst;
"""


@pytest.mark.parametrize("page", ["", "#/create", "#/nodes"])
def test_text_contrast_is_readable(console, platform, page):
    console.get(f"{platform.api_url}/console{page}")
    wait_for(lambda: css(console, "main h1"))
    time.sleep(1)
    assert console.execute_script(CONTRAST) == []


def test_the_deployment_page_reads_well_in_contrast_too(console, platform):
    listed = wait_for(lambda: css(console, "a.deployment-link"))
    listed[0].click()
    wait_for(lambda: css(console, "#timeline li"))
    time.sleep(1)
    assert console.execute_script(CONTRAST) == []
