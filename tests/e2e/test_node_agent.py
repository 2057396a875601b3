"""The node agent against the whole local stack: moto server, chalice local, the local WebSocket
gateway and `prism node up`, all real processes; a real model server deployed from a local
weights directory. The endpoints are the agent's proxy: the tests that are not about endpoint
keys deploy with deploy_config.auth "public" (through the REST API)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websocket

from prism.dev.fakes.hf_hub import FakeHfHub
from tests.e2e.conftest import PRISM, REPO, start_platform, stop_platform
from tests.fakes.file_server import FileServer

pytestmark = pytest.mark.e2e
MODEL = [sys.executable, str(REPO / "tests" / "fakes" / "model_server.py")]


def wait_for(predicate, timeout=20.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last: {value})")


class Node:
    def __init__(self, platform, state_dir: Path):
        self.platform = platform
        self.state_dir = state_dir
        self.process = None

    def up(self):
        log = open(self.state_dir / "agent.out", "ab")  # noqa: SIM115 - the agent holds it
        self.process = subprocess.Popen(
            [
                *PRISM,
                "node",
                "up",
                "--state-dir",
                str(self.state_dir),
                "--name",
                "e2e-node",
                "--heartbeat",
                "1",
                "--probe-interval",
                "0.3",
                "--metrics-interval",
                "1",
                "--startup-timeout",
                "30",
                "--local-api-port",
                "0",
            ],
            cwd=REPO,
            env=self.platform.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.online(), timeout=30)

    def online(self):
        nodes = json.loads(self.platform.cli("node", "list", "--json", check=True).stdout)
        return any(n["status"] == "online" for n in nodes)

    def kill(self, sig=signal.SIGKILL):
        self.process.send_signal(sig)
        self.process.wait(timeout=30)

    def token(self):
        return json.loads((self.state_dir / "node.json").read_text())["token"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-stack")
    platform = start_platform(
        root,
        tick=0.5,
        # Long enough that a loaded CI machine never looks "silent"; the silent-node rules
        # themselves are pinned by tests/functional/test_nodes.py on a controlled clock.
        extra_env={"PRISM_NODE_TIMEOUT_SECONDS": "30", "PRISM_NODE_LOST_SECONDS": "60"},
    )
    state = root / "node"
    state.mkdir()
    node = Node(platform, state)
    try:
        node.up()
    except BaseException:
        stop_platform(platform)
        raise
    yield platform, node
    if node.process.poll() is None:
        node.kill(signal.SIGTERM)
    stop_platform(platform)


@pytest.fixture
def weights(tmp_path):
    (tmp_path / "model.json").write_text('{"w": [1, 2]}')
    return tmp_path


def deploy(platform, weights, name="m", config=None, env=None):
    """A public deployment of the test model (the REST API: the CLI has no flag for auth)."""
    body = {
        "name": name,
        "weights_source": str(weights),
        "gpu": False,
        "command": MODEL,
        "deploy_config": {"auth": "public", **(config or {})},
        "env_vars": env or {},
    }
    created = requests.post(
        f"{platform.api_url}/api/v1/compute/deployments",
        json=body,
        headers={"Authorization": f"Bearer {platform.api_key}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def status(platform, deployment_id):
    return json.loads(platform.cli("deploy", "status", deployment_id, "--json", check=True).stdout)


def reaches(platform, deployment_id, wanted, timeout=30.0):
    last = {}

    def check():
        last.update(status(platform, deployment_id))
        return last["status"] == wanted and last

    try:
        return wait_for(check, timeout=timeout, every=0.2)
    except AssertionError:
        raise AssertionError(f"{deployment_id} never reached {wanted}: {last}") from None


def test_a_local_weights_deployment_runs_and_serves(stack, weights):
    platform, _ = stack
    deployment_id = deploy(platform, weights)
    running = reaches(platform, deployment_id, "running")
    served = requests.get(running["endpoint_url"], timeout=5).json()
    assert served["weights"] == ["model.json"]
    assert served["cuda"] == ""  # no GPU asked for: none visible
    assert running["node_id"].startswith("node_")
    health = json.loads(
        platform.cli("deploy", "health", deployment_id, "--json", check=True).stdout
    )
    assert health["healthy"] is True and health["stale"] is False
    platform.cli("deploy", "stop", deployment_id, check=True)
    reaches(platform, deployment_id, "stopped")
    with pytest.raises(requests.ConnectionError):
        requests.get(running["endpoint_url"], timeout=2)


def test_an_endpoint_needs_its_key_by_default_and_counts_its_requests(stack, weights):
    platform, _ = stack
    created = json.loads(
        platform.cli(
            "deploy", "create", "--name", "keyed", "--weights", str(weights), "--gpu", "none",
            "--json", "--", *MODEL, check=True,
        ).stdout
    )  # fmt: skip
    running = reaches(platform, created["id"], "running")
    refused = requests.get(running["endpoint_url"], timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    key = created["endpoint_key"]  # returned once, by the create
    served = requests.get(running["endpoint_url"], headers={"Authorization": f"Bearer {key}"})
    assert served.json()["weights"] == ["model.json"]
    assert "Authorization" not in served.json().get("headers", {})
    platform.cli("deploy", "stop", created["id"], check=True)
    reaches(platform, created["id"], "stopped")


ENDPOINT_MODEL = [sys.executable, str(REPO / "tests" / "agent" / "endpoint_model.py")]


def test_an_endpoint_streams_shows_its_metrics_and_rotates_its_key(stack, tmp_path):
    """Through the whole platform: SSE arrives event by event through the proxy, the request
    counts and latency reach the detail, a rotated key works at once and the old one stops
    within seconds."""
    platform, _ = stack
    created = json.loads(
        platform.cli(
            "deploy", "create", "--name", "streamer", "--weights", str(tmp_path), "--gpu", "none",
            "--env", f"STATE={tmp_path}", "--health-path", "/health", "--json",
            "--", *ENDPOINT_MODEL, check=True,
        ).stdout
    )  # fmt: skip
    url = reaches(platform, created["id"], "running")["endpoint_url"]
    old = {"Authorization": f"Bearer {created['endpoint_key']}"}
    assert requests.get(url + "/echo", timeout=5).status_code == 401
    with requests.get(url + "/sse?n=4&gap=0.3", headers=old, stream=True, timeout=10) as sse:
        assert sse.headers["Content-Type"].startswith("text/event-stream")
        first = next(line for line in sse.iter_lines() if line.startswith(b"data:"))
        arrived = time.time()
        assert arrived - json.loads(first[5:])["sent_at"] < 0.25  # before the next is sent
    for _ in range(5):
        assert requests.get(url + "/echo", headers=old, timeout=5).status_code == 200

    def counted():
        metrics = status(platform, created["id"]).get("request_metrics") or {}
        return metrics.get("requests_total", 0) >= 7 and metrics

    metrics = wait_for(counted, timeout=20, every=0.5)
    assert metrics["unauthorized"] >= 1 and metrics["status_2xx"] >= 6
    assert metrics["latency_p50_ms"] is not None
    shown = platform.cli("deploy", "status", created["id"], check=True).stdout
    assert "requests" in shown and "latency" in shown

    rotated = json.loads(
        platform.cli("deploy", "rotate-key", created["id"], "--json", check=True).stdout
    )
    new = {"Authorization": f"Bearer {rotated['endpoint_key']}"}
    wait_for(  # at once: the node has it by the time the API answered, give or take a frame
        lambda: requests.get(url + "/echo", headers=new, timeout=5).status_code == 200,
        timeout=2,
    )
    wait_for(
        lambda: requests.get(url + "/echo", headers=old, timeout=5).status_code == 401,
        timeout=5,
    )
    platform.cli("deploy", "stop", created["id"], check=True)
    reaches(platform, created["id"], "stopped")


def test_failing_probes_make_it_unhealthy_then_it_recovers(stack, weights):
    platform, _ = stack
    deployment_id = deploy(platform, weights, "flaky")
    reaches(platform, deployment_id, "running")
    (weights / "unhealthy").touch()
    sick = reaches(platform, deployment_id, "unhealthy")
    assert sick["status"] == "unhealthy"
    (weights / "unhealthy").unlink()
    reaches(platform, deployment_id, "running")
    platform.cli("deploy", "stop", deployment_id, check=True)


def test_a_crash_is_restarted_and_the_restart_shows_on_the_deployment(stack, weights):
    platform, _ = stack
    deployment_id = deploy(platform, weights, "phoenix")
    running = reaches(platform, deployment_id, "running")
    pid = requests.get(running["endpoint_url"], timeout=5).json()["pid"]
    crashed = requests.post(running["endpoint_url"] + "/crash", timeout=5)
    assert crashed.status_code == 502  # the proxy's answer: the model hung up without one

    def restarted_and_running():
        detail = status(platform, deployment_id)
        return detail["status"] == "running" and detail["restarts"] == 1 and detail

    again = wait_for(restarted_and_running, timeout=30, every=0.2)
    assert (again["last_exit"]["cause"], again["last_exit"]["exit_code"]) == ("crash", 3)
    assert "crashing on request" in again["last_exit"]["message"]
    assert again["endpoint_url"] == running["endpoint_url"]  # the port it had
    assert requests.get(again["endpoint_url"], timeout=5).json()["pid"] != pid
    shown = platform.cli("deploy", "status", deployment_id, check=True).stdout
    assert "restarts" in shown and "exit code 3" in shown
    platform.cli("deploy", "stop", deployment_id, check=True)
    reaches(platform, deployment_id, "stopped")


def test_a_crash_fails_the_deployment_with_its_exit_code_and_output(stack, weights):
    platform, _ = stack
    deployment_id = deploy(platform, weights, "crashy", {"restart": "never"})
    running = reaches(platform, deployment_id, "running")
    crashed = requests.post(running["endpoint_url"] + "/crash", timeout=5)
    assert crashed.status_code == 502  # the proxy's answer: the model hung up without one
    failed = reaches(platform, deployment_id, "failed")
    assert failed["failure_reason"] == "crash"
    assert "exit code 3" in failed["failure_message"]
    assert "crashing on request" in failed["failure_message"]


def test_a_missing_weights_path_is_a_pull_error(stack, tmp_path):
    platform, _ = stack
    deployment_id = deploy(platform, tmp_path / "nope", "nopull")
    failed = reaches(platform, deployment_id, "failed")
    assert failed["failure_reason"] == "pull_error"
    assert "does not exist" in failed["failure_message"]


def test_an_hf_deployment_pulls_through_the_node_cache_and_records_the_commit(stack):
    platform, _ = stack
    files = {"config.json": b"{}", "model.safetensors": b"w" * 2_000_000}
    with FakeHfHub() as hub:
        sha = hub.add_commit("org/tiny", files, token="hf_e2e")
        hf = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_e2e"}
        first = deploy(platform, "hf://org/tiny@main", "hf-one", env=hf)
        watched = platform.cli("deploy", "status", first, "--watch", "--json", check=True)
        running = json.loads(watched.stdout)
        assert running["status"] == "running" and running["weights_revision"] == sha
        assert running["bytes_done"] == running["bytes_total"] == sum(map(len, files.values()))
        assert requests.get(running["endpoint_url"], timeout=5).json()["weights"] == sorted(files)
        served = hub.bytes_served
        second = deploy(platform, "hf://org/tiny@main", "hf-two", env=hf)
        watched = platform.cli("deploy", "status", second, "--watch", "--json", check=True)
        assert json.loads(watched.stdout)["status"] == "running"
        assert hub.bytes_served == served  # the node's cache served the second one
    for deployment_id in (first, second):
        platform.cli("deploy", "stop", deployment_id, check=True)
    assert "hf_e2e" not in json.dumps(status(platform, first))


def test_weights_with_the_wrong_sha256_fail_with_a_checksum_mismatch(stack):
    platform, _ = stack
    with FileServer() as server:
        url = server.add("/model.bin", b"real weights")
        waited = platform.cli(
            "deploy", "create", "--name", "badhash", "--weights", f"{url}#sha256={'0' * 64}",
            "--allow-http", "--gpu", "none", "--wait", "--", *MODEL,
        )  # fmt: skip
    assert waited.returncode == 1
    assert "pull_error: checksum mismatch" in waited.stderr


def test_logs_come_from_the_node(stack, weights):
    platform, _ = stack
    deployment_id = deploy(platform, weights, "chatty")
    reaches(platform, deployment_id, "running")
    logs = platform.cli("deploy", "logs", deployment_id, "--tail", "5", check=True).stdout
    assert "model: serving on" in logs
    platform.cli("deploy", "stop", deployment_id, check=True)


def test_a_dropped_connection_reconnects_and_reconciles(stack, weights):
    platform, node = stack
    deployment_id = deploy(platform, weights, "steady")
    reaches(platform, deployment_id, "running")
    # The gateway's management API closes the node's connection, as API Gateway may: asked
    # (SigV4-signed) by an identity allowed to (the functions may only post).
    management = platform.aws("apigatewaymanagementapi", "operator")
    for connection_id in _connection_ids(platform):
        management.delete_connection(ConnectionId=connection_id)
    wait_for(node.online, timeout=30)
    assert status(platform, deployment_id)["status"] == "running"
    platform.cli("deploy", "stop", deployment_id, check=True)
    reaches(platform, deployment_id, "stopped")


def test_a_killed_agent_comes_back_and_readopts_its_models(stack, weights):
    platform, node = stack
    deployment_id = deploy(platform, weights, "survivor")
    running = reaches(platform, deployment_id, "running")
    pid_before = requests.get(running["endpoint_url"], timeout=5).json()["pid"]
    node.kill(signal.SIGKILL)
    # The model runs on; its endpoint (the agent's proxy) is back with the agent.
    assert _alive(pid_before)
    with pytest.raises(requests.ConnectionError):
        requests.get(running["endpoint_url"], timeout=2)
    node.up()
    time.sleep(1.5)  # a few probe intervals: nothing may be restarted or duplicated
    again = status(platform, deployment_id)
    assert again["status"] == "running"
    assert requests.get(again["endpoint_url"], timeout=5).json()["pid"] == pid_before
    platform.cli("deploy", "stop", deployment_id, check=True)
    reaches(platform, deployment_id, "stopped")
    wait_for(lambda: not _alive(pid_before), timeout=15)


def test_a_wrong_token_is_refused(stack):
    platform, node = stack
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            platform.ws_url,
            header=["Authorization: Bearer prismnode_node_0000000000000000.wrong"],
            timeout=5,
        )
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(platform.ws_url, timeout=5)


def test_malformed_frames_get_an_error_and_the_connection_stays(stack):
    platform, node = stack
    ws = websocket.create_connection(
        platform.ws_url, header=[f"Authorization: Bearer {node.token()}"], timeout=10
    )
    try:
        for frame in (
            "not json",
            '{"type": "launch_missiles", "id": "m1"}',
            '{"type": "deployment_stopped", "id": "m2"}',  # its required fields missing
        ):
            ws.send(frame)
            reply = json.loads(ws.recv())
            assert reply["type"] == "error" and reply["code"] in ("malformed", "unknown_type")
        # Still usable afterwards; a field this side does not know (a newer agent's) is ignored.
        ws.send('{"type": "heartbeat", "id": "m3", "added_in_a_later_version": 1}')
        ws.send(
            '{"type": "deployment_stopped", "id": "m4", '
            '"deployment_id": "dep_0123456789abcdef", "reason": "crash"}'
        )
        reply = json.loads(ws.recv())
        assert reply["code"] == "not_your_deployment" and reply["reply_to"] == "m4"
    finally:
        ws.close()
    wait_for(node.online, timeout=30)


def test_a_node_cannot_touch_another_owners_deployment(stack, weights, tmp_path):
    platform, _ = stack
    deployment_id = deploy(platform, weights, "mine")
    reaches(platform, deployment_id, "running")
    bob_key = json.loads(
        platform.cli("admin", "create-key", "--name", "bob", "--json", check=True).stdout
    )["api_key"]
    bob_node = platform.register_node("bobs", key=bob_key)
    ws = websocket.create_connection(
        platform.ws_url, header=[f"Authorization: Bearer {bob_node['token']}"], timeout=10
    )
    try:
        ws.send(
            json.dumps(
                {
                    "type": "deployment_stopped",
                    "id": "x1",
                    "deployment_id": deployment_id,
                    "reason": "stopped",
                }
            )
        )
        assert json.loads(ws.recv())["code"] == "not_your_deployment"
    finally:
        ws.close()
    assert status(platform, deployment_id)["status"] == "running"
    platform.cli("deploy", "stop", deployment_id, check=True)


def _connection_ids(platform) -> list[str]:
    """The node's live connection ids, read straight from the local connections table (a
    closed one stays there until the sweep has handled its silence)."""
    items = platform.aws("dynamodb", "operator").scan(
        TableName="prism-dev-connections",
        FilterExpression="attribute_not_exists(#closed)",
        ExpressionAttributeNames={"#closed": "closed"},
    )
    return [item["connection_id"]["S"] for item in items["Items"]]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_node_down_stop_all_stops_its_models(stack, weights):
    platform, node = stack
    deployment_id = deploy(platform, weights, "goner")
    running = reaches(platform, deployment_id, "running")
    pid = requests.get(running["endpoint_url"], timeout=5).json()["pid"]
    down = platform.cli("node", "down", "--state-dir", str(node.state_dir), "--stop-all")
    assert down.returncode == 0, down.stderr
    assert reaches(platform, deployment_id, "stopped")["status"] == "stopped"
    wait_for(lambda: not _alive(pid), timeout=15)
    node.process.wait(timeout=10)
    node.up()  # leave the stack as the other tests expect it
