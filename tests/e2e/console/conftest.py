"""The web console in a real browser (Debian's headless chromium through chromedriver) against
the whole local platform: a node agent running real models, fake clouds billing $36 an hour,
the real API behind the local API Gateway. Each test module gets its own platform and browser.
Screenshots of each page go to .prism/screenshots/console/ (not committed) for a person to
look at."""

import json
import shutil
import time

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.e2e.conftest import REPO, free_port, start_platform, stop_platform

SCREENSHOTS = REPO / ".prism" / "screenshots" / "console"
MODEL_DIR = REPO / "examples" / "models" / "tiny-regressor"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
VIEWER_ZONE = "Asia/Kathmandu"  # UTC+5:45: a time shown in UTC or the host's zone cannot pass
POLL_S = 5  # how often the console refreshes the deployments and a deployment's page
DEPLOYMENTS = "/api/v1/compute/deployments"


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
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=en-US"):
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
    """Signed in, on the deployments page. After each test: no Scan was added, and the browser
    logged no error but the 409s of logs the console asked for and showed as such."""
    browser.set_window_size(1280, 900)
    browser.get(f"{platform.api_url}/console")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    sign_in(browser, platform.api_key)
    wait_for(lambda: "refreshed" in text_of(browser, "#last-refresh"))
    scanned = scans_of_growing_tables(platform)
    browser.get_log("browser")  # from here on, this test's
    yield browser
    assert scans_of_growing_tables(platform) == scanned  # the console adds no Scan
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in errors if not ("/logs" in m and "409" in m)] == []


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


def open_page(browser, platform, page: str) -> None:
    """A page of the console by its hash, once its first refresh has shown."""
    browser.get(f"{platform.api_url}/console{page}")
    wait_for(lambda: css(browser, "main h1"))
    if not page.startswith("#/create"):
        wait_for(lambda: "refreshed" in text_of(browser, "#last-refresh"))


def cli_create(platform, *args: str) -> dict:
    return json.loads(platform.cli("deploy", "create", "--json", *args, check=True).stdout)


def api_create(platform, **body) -> dict:
    """Through the REST API: quicker than the CLI for the many a page needs."""
    response = requests.post(
        platform.api_url + DEPLOYMENTS,
        json=body,
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def waiting_deployment(platform, name: str) -> dict:
    """One that stays `provisioning`: it needs an H100, which the local node does not have."""
    return api_create(platform, name=name, image="nginx:1.27", gpu=True, gpu_type="H100")


def model_deployment(platform, name: str) -> dict:
    """The demo's model, from its weights path on the local node."""
    return cli_create(
        platform, "--name", name, "--weights", str(MODEL_DIR), "--gpu", "none",
        "--", "python3", str(MODEL_DIR / "serve.py"),
    )  # fmt: skip


def badge(browser, deployment_id: str) -> str | None:
    found = css(browser, f'tr[data-id="{deployment_id}"] .status-badge')
    return found[0].get_attribute("data-status") if found else None


def api_calls(browser) -> list[str]:
    """The API URLs the page has fetched since its resource timings were last cleared."""
    entries = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [url for url in entries if "/api/v1/" in url]


# Every visible text's colour (an SVG text's fill) against the background it is drawn on (the
# first opaque one up its ancestors), by WCAG's relative luminance: at least 4.5:1.
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
const poor = [];
for (const el of document.querySelectorAll('body *')) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || !el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
  const style = getComputedStyle(el);
  const ink = el instanceof SVGElement ? style.fill : style.color;
  const [a, b] = [lum(parse(ink)), lum(background(el))];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  if (ratio < 4.5) poor.push(`${el.tagName}.${el.className.baseVal ?? el.className}: ${ratio}`);
}
return poor;
"""


def poor_contrast(browser) -> list[str]:
    return browser.execute_script(CONTRAST)
