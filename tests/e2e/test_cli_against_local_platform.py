"""A newcomer's session: `prism dev up`, then create, list, inspect and stop with the CLI."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import (
    PRISM,
    alive,
    descendants,
    packaged_functions,
    port_in_use,
    start_platform,
    stop_platform,
)

pytestmark = pytest.mark.e2e


def test_dev_up_prints_a_working_url_and_key_and_writes_the_cli_config(platform):
    assert platform.api_url == f"http://127.0.0.1:{platform.api_port}"
    config = json.loads(Path(platform.env["PRISM_CONFIG"]).read_text())
    assert config["api_url"] == platform.api_url and config["api_key"] == platform.api_key


def test_create_list_status_stop_through_the_cli(platform):
    created = json.loads(
        platform.cli(
            "deploy",
            "create",
            "--name",
            "web",
            "--image",
            "nginx:1.27",
            "--target",
            "local",
            "--port",
            "8080",
            "--health-path",
            "/healthz",
            "--env",
            "TOKEN=s3cret",
            "--json",
            check=True,
        ).stdout
    )
    assert created["status"] == "provisioning" and created["target"] == "prism_node"
    assert created["env_var_names"] == ["TOKEN"]

    listed = json.loads(platform.cli("deploy", "list", "--json", check=True).stdout)
    assert created["id"] in [d["id"] for d in listed["items"]]

    table = platform.cli("deploy", "list", "--status", "provisioning", check=True).stdout
    assert created["id"] in table and "provisioning" in table

    status = platform.cli("deploy", "status", created["id"], check=True).stdout
    assert "web" in status and "s3cret" not in status

    stopped = json.loads(platform.cli("deploy", "stop", created["id"], "--json", check=True).stdout)
    assert stopped["status"] == "stopped"
    again = platform.cli("deploy", "stop", created["id"], check=True).stdout
    assert "stopped" in again


def test_runtime_and_marketplace_forms_through_the_cli(platform):
    runtime = json.loads(
        platform.cli(
            "deploy",
            "create",
            "--name",
            "tiny",
            "--weights",
            "/srv/models/tiny",
            "--gpu",
            "none",
            "--json",
            "--",
            "python3",
            "serve.py",
            "--port",
            "9000",
            check=True,
        ).stdout
    )
    assert runtime["command"] == ["python3", "serve.py", "--port", "9000"]
    assert runtime["gpu"] is False

    market = json.loads(
        platform.cli(
            "deploy",
            "create",
            "--name",
            "tiny2",
            "--resource",
            "tiny-regressor",
            "--json",
            check=True,
        ).stdout
    )
    assert market["resource_slug"] == "tiny-regressor"
    assert market["weights_source"].endswith("examples/models/tiny-regressor")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--name", "Bad Name", "--image", "nginx"], "name"),
        (["--name", "m", "--image", "nginx", "--port", "0"], "deploy_config.port"),
        (["--name", "m", "--weights", "ftp://x/y"], "weights_source"),
        (["--name", "m", "--image", "nginx", "--budget", "-1"], "budget_max_usd"),
        (["--name", "m"], "exactly one of"),
    ],
)
def test_malformed_requests_are_one_clear_line_and_exit_1(platform, args, fragment):
    result = platform.cli("deploy", "create", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (400):") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_id_and_bad_key_are_clear_errors(platform):
    missing = platform.cli("deploy", "status", "dep_nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error (404):")
    denied = platform.cli("deploy", "list", key="prism_wrong")
    assert denied.returncode == 1 and denied.stderr.startswith("error (401):")


def test_a_second_user_from_admin_create_key_sees_only_their_own(platform):
    mine = json.loads(
        platform.cli(
            "deploy", "create", "--name", "private", "--image", "nginx", "--json", check=True
        ).stdout
    )
    made = json.loads(
        platform.cli("admin", "create-key", "--name", "bob", "--json", check=True).stdout
    )
    bob = made["api_key"]
    assert (
        json.loads(platform.cli("deploy", "list", "--json", key=bob, check=True).stdout)["items"]
        == []
    )
    assert platform.cli("deploy", "status", mine["id"], key=bob).returncode == 1


def test_raw_http_errors_keep_the_json_shape(platform):
    headers = {"Authorization": f"Bearer {platform.api_key}"}
    url = f"{platform.api_url}/api/v1/compute/deployments"
    response = requests.post(
        url, data="{not json", headers=headers | {"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_ctrl_c_stops_everything_and_frees_the_ports(tmp_path):
    platform = start_platform(tmp_path)
    ports = (platform.api_port, platform.aws_port, platform.ws_port, platform.management_port)
    assert all(port_in_use(port) for port in ports)
    # moto, the Lambda service (with the REST gateway) and its container per function, and the
    # WebSocket gateway; the service starts the containers in the background, so wait for them
    expected = 3 + packaged_functions()
    deadline = time.monotonic() + 60
    children = descendants(platform.process.pid)
    while len(children) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        children = descendants(platform.process.pid)
    assert len(children) >= expected
    assert stop_platform(platform) == 0
    assert not any(port_in_use(port) for port in ports)
    assert [pid for pid in children if alive(pid)] == []


def test_a_busy_port_is_a_clear_error(platform, tmp_path):
    result = subprocess.run(
        [*PRISM, "dev", "up", "--api-port", str(platform.api_port), "--aws-port", "1"],
        env=platform.env | {"PRISM_CONFIG": str(tmp_path / "c.json")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"port {platform.api_port}" in result.stderr and "already in use" in result.stderr
