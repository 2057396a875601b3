"""How the console holds up: a page of 50 and the next, the status filter, a selection that
survives the live refresh, the nodes page, the viewer's time zone, a 360 px phone, the keyboard
alone, and text contrast on every page."""

import json
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.e2e.console.conftest import (
    DEPLOYMENTS,
    POLL_S,
    VIEWER_ZONE,
    css,
    model_deployment,
    open_page,
    poor_contrast,
    shot,
    text_of,
    wait_for,
    waiting_deployment,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def waiting(platform) -> list[dict]:
    """55 deployments that wait for an H100 (oldest first): more than one page of 50."""
    return [waiting_deployment(platform, f"waiting-{i}") for i in range(55)]


@pytest.fixture(scope="module")
def serving(platform) -> dict:
    """A model running on the local node."""
    created = model_deployment(platform, "serving")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        detail = json.loads(platform.cli("deploy", "status", created["id"], "--json").stdout)
        if detail["status"] == "running":
            return detail
        time.sleep(0.5)
    raise AssertionError(f"the model did not come up: {detail['status']}")


def _rows(browser) -> list[str]:
    return [row.get_attribute("data-id") for row in css(browser, "#deployments tbody tr")]


def test_pages_of_fifty_newest_first_and_the_status_filter(console, platform, waiting, serving):
    first, second = _api_pages(platform)
    assert len(first) == 50 and set(d["id"] for d in waiting[:5]) <= set(second)
    wait_for(lambda: _rows(console) == first, timeout=POLL_S * 3)  # newest first, as the API
    console.find_element(By.ID, "next-page").click()
    wait_for(lambda: _rows(console) == second)
    console.find_element(By.ID, "prev-page").click()
    wait_for(lambda: _rows(console) == first)
    select = console.find_element(By.ID, "status-filter")
    select.find_element(By.CSS_SELECTOR, 'option[value="running"]').click()
    wait_for(lambda: _rows(console) == [serving["id"]])  # the one running, and only it
    assert text_of(console, "tbody .status-badge") == "running"
    shot(console, "deployments-filtered")


def _api_pages(platform) -> tuple[list[str], list[str]]:
    """The first two pages of 50 as the API gives them (the console must show the same)."""
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    url = f"{platform.api_url}{DEPLOYMENTS}?limit=50"
    first = requests.get(url, headers=headers, timeout=10).json()
    token = first["next_token"]
    second = requests.get(f"{url}&next_token={token}", headers=headers, timeout=10).json()
    return [d["id"] for d in first["items"]], [d["id"] for d in second["items"]]


def test_a_selection_survives_the_live_refresh(console, platform, waiting):
    name = wait_for(lambda: css(console, f'tr[data-id="{waiting[-1]["id"]}"] a.deployment-link'))[0]
    console.execute_script(
        "const range = document.createRange(); range.selectNodeContents(arguments[0]);"
        "getSelection().removeAllRanges(); getSelection().addRange(range);",
        name,
    )
    before = text_of(console, "#last-refresh")
    wait_for(lambda: text_of(console, "#last-refresh") != before, timeout=POLL_S * 3)
    assert console.execute_script("return getSelection().toString()") == waiting[-1]["name"]


def test_the_nodes_page_shows_the_node_its_gpus_and_what_runs_on_it(console, platform, serving):
    open_page(console, platform, "#/nodes")
    node = json.loads(platform.cli("node", "list", "--json", check=True).stdout)[0]
    row = wait_for(lambda: css(console, f'#nodes tr[data-id="{node["id"]}"]'))[0]
    assert row.find_element(By.CSS_SELECTOR, ".status-badge").get_attribute("data-status") == (
        "online"
    )
    assert node["name"] in row.text
    assert "No GPUs" in row.text  # this machine has none: its agent reported none
    runs = wait_for(lambda: row.find_elements(By.CSS_SELECTOR, "a[href*='#/deployments/']"))
    assert serving["id"] in [a.get_attribute("href").rsplit("/", 1)[1] for a in runs]
    seen = datetime.fromisoformat(node["last_seen_at"]).astimezone(ZoneInfo(VIEWER_ZONE))
    assert seen.strftime("%b") in row.text  # last seen, as a date in the viewer's zone
    shot(console, "nodes")


def test_times_are_shown_in_the_viewers_time_zone(console, platform, waiting):
    open_page(console, platform, f"#/deployments/{waiting[0]['id']}")
    shown = wait_for(lambda: css(console, "#timeline li time"))[0]
    began = datetime.fromisoformat(waiting[0]["created_at"]).astimezone(ZoneInfo(VIEWER_ZONE))
    assert f"{began.hour % 12 or 12}:{began.minute:02d}" in shown.text  # en-US, 12-hour
    zone = console.find_element(By.TAG_NAME, "footer").text
    assert "Kathmandu" in zone or "Katmandu" in zone  # Chromium's ICU knows the old spelling


PAGES = {
    "deployments": "",
    "create": "#/create",
    "nodes": "#/nodes",
    "deployment": "#/deployments/{serving}",
}


@pytest.mark.parametrize("name", PAGES)
def test_every_page_fits_a_phone(console, platform, serving, name):
    console.set_window_size(360, 800)
    open_page(console, platform, PAGES[name].format(serving=serving["id"]))
    width = console.execute_script("return document.documentElement.scrollWidth")
    assert width <= console.execute_script("return window.innerWidth")
    shot(console, f"phone-{name}")


@pytest.mark.parametrize("name", PAGES)
def test_text_contrast_is_readable(console, platform, serving, name):
    page = PAGES[name]
    open_page(console, platform, page.format(serving=serving["id"]))
    assert poor_contrast(console) == []


def test_the_keyboard_alone_reaches_and_opens_a_deployment(console, platform, serving):
    wait_for(lambda: css(console, f'tr[data-id="{serving["id"]}"]'))
    keys = ActionChains(console)
    for _ in range(80):  # from the top of the page, Tab after Tab
        keys.send_keys(Keys.TAB).perform()
        if "deployment-link" in (console.switch_to.active_element.get_attribute("class") or ""):
            break
    else:
        raise AssertionError("Tab never reached a deployment")
    keys.send_keys(Keys.ENTER).perform()
    wait_for(lambda: "#/deployments/dep_" in console.current_url)
    wait_for(lambda: css(console, "#timeline li"))
