"""The endpoint proxy with the in-process Agent and a real model process (tests/agent/
endpoint_model.py, aiohttp) over real sockets: the key is required and never reaches the model;
a public endpoint needs none; SSE arrives event by event; 50 MB each way intact; WebSocket
echo; a client gone mid-stream cancels its upstream request and the proxy serves on; keys rotate
live and survive an agent restart; counts and latencies are reported; the model's own port is
on loopback only; the model sees none of the agent's environment; a model down is a 502 while
the proxy stays up through its restart; the port is free again once the deployment stops."""

import gzip
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import websocket

from chalicelib.protocol import (
    DeployConfig,
    DeployModel,
    EndpointKeys,
    hash_endpoint_key,
)
from node_agent.agent import Agent, AgentSettings
from node_agent.endpoint_metrics import LATENCY_SAMPLES, EndpointMetrics
from node_agent.ports import free_port, port_is_free
from node_agent.runtime.base import LaunchSpec
from node_agent.runtime.process import ProcessRuntime
from node_agent.state import Record, StateStore

MODEL = [sys.executable, str(Path(__file__).with_name("endpoint_model.py"))]
KEY, OTHER_KEY = "prismep_" + "a" * 43, "prismep_" + "b" * 43
MB = 1024 * 1024


class Node:
    """An in-process agent with its supervisor loop, as `prism node up` runs it."""

    def __init__(self, state_dir: Path, **settings):
        self.sent: list = []
        self.state_dir = state_dir
        defaults = {"probe_interval_s": 0.2, "liveness_interval_s": 0.05, "stop_grace_s": 1.0}
        self.agent = Agent(
            AgentSettings(node_id="n", state_dir=state_dir, **(defaults | settings)),
            {"process": ProcessRuntime()},
            self.sent.append,
        )
        self._stop = threading.Event()
        threading.Thread(target=self.agent.supervise, args=(self._stop,), daemon=True).start()

    def deploy(self, deployment_id: str, auth="key", keys=(KEY,), **config) -> str:
        """Deploy the test model and return its endpoint once it is ready."""
        self.agent.deploy(
            DeployModel(
                deployment_id=deployment_id,
                command=MODEL,
                env_vars={"STATE": str(self.state_dir), "MODEL_SETTING": "mine"},
                deploy_config=DeployConfig(health_path="/health", auth=auth, **config),
                endpoint_key_hashes=[hash_endpoint_key(k) for k in keys],
            )
        )
        return self.ready(deployment_id).endpoint_url

    def ready(self, deployment_id: str, count: int = 1):
        return self.wait(
            lambda m: m.type == "deployment_ready" and m.deployment_id == deployment_id, count
        )

    def wait(self, predicate, count: int = 1, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in list(self.sent) if predicate(m)]
            if len(found) >= count:
                return found[count - 1]
            stopped = [m for m in self.sent if m.type == "deployment_stopped"]
            assert not stopped, stopped
            time.sleep(0.02)
        raise AssertionError(f"not sent; sent: {self.sent}")

    def close(self, stop_models: bool = True) -> None:
        if stop_models:
            self.agent.stop_all()
        self.agent.shutdown()
        self._stop.set()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One node running a key deployment and a public one, for the tests that change nothing."""
    node = Node(tmp_path_factory.mktemp("served"))
    urls = {
        "key": node.deploy("dep_00000000000000a1"),
        "public": node.deploy("dep_00000000000000a2", auth="public", keys=()),
    }
    yield node, urls
    node.close()


@pytest.fixture
def node(tmp_path):
    started = Node(tmp_path, metrics_interval_s=0.2, restart_backoff_s=1.5)
    yield started
    started.close()


# --- keys --------------------------------------------------------------------------------


def test_no_key_or_a_wrong_key_is_refused_and_the_key_never_reaches_the_model(served):
    _, urls = served
    for headers in ({}, bearer(OTHER_KEY), {"Authorization": f"Basic {KEY}"}, bearer("")):
        refused = requests.get(urls["key"] + "/echo", headers=headers, timeout=5)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.json()["error"]["code"] == "unauthorized"
    answer = requests.get(urls["key"] + "/echo", headers=bearer(KEY), timeout=5)
    assert answer.status_code == 200
    assert "authorization" not in {h.lower() for h in answer.json()["headers"]}


def test_a_public_endpoint_answers_without_a_key_and_passes_authorization_on(served):
    _, urls = served
    assert requests.get(urls["public"] + "/echo", timeout=5).status_code == 200
    seen = requests.get(urls["public"] + "/echo", headers=bearer("model-own"), timeout=5).json()
    assert seen["headers"]["Authorization"] == "Bearer model-own"  # the model's own auth


def test_rotated_keys_work_at_once_the_old_one_is_refused_and_they_are_kept(node):
    url = node.deploy("dep_00000000000000b1")
    node.agent.on_message(
        EndpointKeys(
            deployment_id="dep_00000000000000b1", key_hashes=[hash_endpoint_key(OTHER_KEY)]
        )
    )
    assert requests.get(url + "/echo", headers=bearer(OTHER_KEY), timeout=5).status_code == 200
    assert requests.get(url + "/echo", headers=bearer(KEY), timeout=5).status_code == 401
    kept = json.loads((node.state_dir / "state.json").read_text())["dep_00000000000000b1"]
    assert kept["key_hashes"] == [hash_endpoint_key(OTHER_KEY)]


def test_a_restarted_agent_serves_the_adopted_model_with_the_kept_keys(tmp_path):
    first = Node(tmp_path)
    url = first.deploy("dep_00000000000000b2")
    first.agent.on_message(
        EndpointKeys(
            deployment_id="dep_00000000000000b2", key_hashes=[hash_endpoint_key(OTHER_KEY)]
        )
    )
    pid = requests.get(url + "/echo", headers=bearer(OTHER_KEY), timeout=5).json()["pid"]
    first.close(stop_models=False)  # the agent goes; its model runs on
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/echo", timeout=2)
    second = Node(tmp_path)
    try:
        second.agent.adopt_existing()
        again = requests.get(url + "/echo", headers=bearer(OTHER_KEY), timeout=5)
        assert again.status_code == 200 and again.json()["pid"] == pid  # the same process
        assert requests.get(url + "/echo", headers=bearer(KEY), timeout=5).status_code == 401
    finally:
        second.close()


def test_a_model_an_agent_before_the_proxy_started_keeps_serving_its_own_port(tmp_path):
    deployment_id, port = "dep_00000000000000b3", free_port()
    runtime = ProcessRuntime()
    spec = LaunchSpec(
        deployment_id=deployment_id,
        port=port,
        command=MODEL,
        env={"STATE": str(tmp_path)},
        log_path=tmp_path / "model.log",
    )
    handle = runtime.start(spec)
    message = DeployModel(
        deployment_id=deployment_id,
        command=MODEL,
        deploy_config=DeployConfig(health_path="/health", port=port),
    )
    old = Record(deployment_id, "running", port, "/health", str(spec.log_path), handle=handle)
    old.deploy = message.model_dump(mode="json")  # no model_port: it listens on the endpoint
    StateStore(tmp_path / "state.json").save({deployment_id: old})
    node = Node(tmp_path)
    try:
        node.agent.adopt_existing()
        deadline = time.monotonic() + 10
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/echo", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert answer.json()["pid"] == int(handle.ref.split(":")[0])
        assert node.agent.records[deployment_id].status == "running"
        assert node.agent.proxy.serving() == set()
    finally:
        node.close()


# --- passing through ---------------------------------------------------------------------


def test_requests_pass_unchanged_but_hop_by_hop_headers(served):
    _, urls = served
    headers = bearer(KEY) | {"X-Custom": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "1"}
    seen = requests.get(urls["key"] + "/echo?a=1&b=%2F%20", headers=headers, timeout=5).json()
    assert seen["path_qs"] == "/echo?a=1&b=%2F%20"
    assert seen["headers"]["X-Custom"] == "kept"
    assert "X-Hop" not in seen["headers"]
    moved = requests.get(urls["key"] + "/redirect", headers=bearer(KEY), allow_redirects=False)
    assert moved.status_code == 302 and moved.headers["Location"] == "/echo"  # not followed
    raw = requests.get(urls["key"] + "/gzip", headers=bearer(KEY), stream=True, timeout=5)
    assert raw.headers["Content-Encoding"] == "gzip"  # bytes as the model sent them
    assert gzip.decompress(raw.raw.read(decode_content=False)) == b"squeezed " * 100


def test_server_sent_events_arrive_one_by_one(served):
    _, urls = served
    arrived, events = [], []
    with requests.get(
        urls["key"] + "/sse?n=5&gap=0.2", headers=bearer(KEY), stream=True, timeout=10
    ) as stream:
        for chunk in stream.iter_content(chunk_size=None):
            arrived.append(time.time())
            events.append(json.loads(chunk.decode().removeprefix("data: ")))
    assert [e["i"] for e in events] == [0, 1, 2, 3, 4]  # one chunk each
    assert arrived[0] < events[-1]["sent_at"]  # the first was here before the last was sent
    assert arrived[-1] - arrived[0] > 0.6


def test_50_mb_up_and_down_pass_intact(served):
    _, urls = served
    body = os.urandom(50 * MB)
    answer = requests.post(urls["key"] + "/digest", data=body, headers=bearer(KEY), timeout=60)
    assert answer.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    chunked = requests.post(
        urls["key"] + "/digest",
        data=(body[i : i + MB] for i in range(0, 5 * MB, MB)),  # streamed, no length
        headers=bearer(KEY),
        timeout=60,
    )
    assert chunked.json()["sha256"] == hashlib.sha256(body[: 5 * MB]).hexdigest()
    sha, length = hashlib.sha256(), 0
    with requests.get(
        urls["key"] + f"/bytes?size={50 * MB}", headers=bearer(KEY), stream=True, timeout=60
    ) as download:
        for chunk in download.iter_content(chunk_size=MB):
            sha.update(chunk)
            length += len(chunk)
    expected = (bytes(range(256)) * 4096) * 50
    assert (length, sha.hexdigest()) == (50 * MB, hashlib.sha256(expected).hexdigest())


def test_a_websocket_is_proxied_both_ways(served):
    _, urls = served
    ws_url = urls["key"].replace("http://", "ws://") + "/ws"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url, timeout=5)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: Bearer {KEY}"], subprotocols=["echo"], timeout=5
    )
    try:
        assert ws.subprotocol == "echo"
        ws.send("hello")
        assert ws.recv() == "echo: hello"
        ws.send_binary(b"\x01\x02\x03")
        assert ws.recv() == b"\x03\x02\x01"
    finally:
        ws.close()


def test_a_client_gone_mid_stream_cancels_upstream_and_others_are_served(served):
    node, urls = served
    port = int(urls["key"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        request = f"GET /slow?id=gone1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        client.sendall(request.encode())
        assert b"tick 0" in client.recv(4096) + client.recv(4096)
    deadline = time.monotonic() + 10
    while not (node.state_dir / "gone1.gone").exists():  # the model saw its client go
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requests.get(urls["key"] + "/echo", headers=bearer(KEY), timeout=5).status_code == 200
    events = requests.get(urls["key"] + "/sse?n=3&gap=0.05", headers=bearer(KEY), timeout=5)
    assert events.text.count("data: ") == 3


# --- ports and environment ---------------------------------------------------------------


def test_the_endpoint_is_the_proxys_port_and_the_models_own_port_is_on_loopback_only(tmp_path):
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    node = Node(tmp_path, advertise_host=address)
    try:
        url = node.deploy("dep_00000000000000c1")
        record = node.agent.records["dep_00000000000000c1"]
        assert url == f"http://{address}:{record.port}"
        assert requests.get(url + "/echo", timeout=5).status_code == 401  # the proxy, reachable
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, record.model_port), timeout=5).close()
    finally:
        node.close()


def test_the_model_sees_none_of_the_agents_environment(node, monkeypatch):
    for name, value in {
        "RUNPOD_API_KEY": "rp-secret",
        "LAMBDA_API_KEY": "lambda-secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "HF_TOKEN": "hf-agent",
        "PRISM_NODE_TOKEN": "node-secret",
        "LC_ALL": "C.UTF-8",
    }.items():
        monkeypatch.setenv(name, value)
    url = node.deploy("dep_00000000000000c2")
    env = requests.get(url + "/echo", headers=bearer(KEY), timeout=5).json()["env"]
    record = node.agent.records["dep_00000000000000c2"]
    assert not {"RUNPOD_API_KEY", "LAMBDA_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} & set(env)
    # Only what the agent tells every model (which deployment it serves), none of its own.
    assert [k for k in env if k.startswith("PRISM_")] == ["PRISM_DEPLOYMENT_ID"]
    assert "secret" not in json.dumps(env)
    assert env["PORT"] == str(record.model_port) and env["HOST"] == "127.0.0.1"
    assert env["MODEL_SETTING"] == "mine" and env["LC_ALL"] == "C.UTF-8" and "PATH" in env


# --- the model down, metrics, the end ------------------------------------------------------


def test_a_model_down_is_a_502_and_the_proxy_stays_up_through_its_restart(node):
    url = node.deploy("dep_00000000000000d1", restart="always")
    record = node.agent.records["dep_00000000000000d1"]
    pid = requests.get(url + "/echo", headers=bearer(KEY), timeout=5).json()["pid"]
    os.killpg(pid, signal.SIGKILL)
    node.wait(lambda m: m.type == "deployment_restarted")
    down = requests.get(url + "/echo", headers=bearer(KEY), timeout=5)  # within the 1.5 s backoff
    assert down.status_code == 502 and down.json()["error"]["code"] == "model_unreachable"
    node.ready("dep_00000000000000d1", count=2)
    again = requests.get(url + "/echo", headers=bearer(KEY), timeout=5).json()
    assert again["pid"] != pid and node.agent.records["dep_00000000000000d1"] is record


def test_counts_and_latencies_are_reported_until_they_stop_changing(node):
    deployment_id = "dep_00000000000000d2"
    url = node.deploy(deployment_id)
    for _ in range(3):
        assert requests.get(url + "/echo", headers=bearer(KEY), timeout=5).ok
    assert requests.get(url + "/missing", headers=bearer(KEY), timeout=5).status_code == 404
    assert requests.get(url + "/echo", timeout=5).status_code == 401

    def metrics(m):
        return m.type == "deployment_metrics" and m.deployment_id == deployment_id

    last = node.wait(lambda m: metrics(m) and m.requests_total == 5 and not m.in_flight, 1, 5)
    assert (last.status_2xx, last.status_4xx, last.status_5xx) == (3, 2, 0)
    assert last.unauthorized == 1
    reported = [m for m in node.sent if metrics(m)]
    assert all(m.latency_p50_ms <= m.latency_p95_ms <= m.latency_p99_ms for m in reported)
    assert any(m.latency_p50_ms > 0 for m in reported)
    time.sleep(1.0)  # five intervals without a request: nothing more to say
    assert [m for m in node.sent if metrics(m)] == reported
    # A request in flight is seen, then its end (in flight 0 again).
    with requests.get(url + "/slow?id=m", headers=bearer(KEY), stream=True, timeout=5) as slow:
        ticks = slow.iter_content(chunk_size=None)  # kept: a collected one closes the stream
        next(ticks)
        node.wait(lambda m: metrics(m) and m.in_flight == 1, timeout=5)
    node.wait(lambda m: metrics(m) and m.requests_total == 6 and m.in_flight == 0, timeout=5)


def test_percentiles_are_of_the_last_window_with_answers_and_the_window_is_bounded():
    metrics = EndpointMetrics()
    for latency in range(1, 101):
        metrics.arrived()
        metrics.answered(200, float(latency))
        metrics.done()
    first = metrics.report()
    assert (first["latency_p50_ms"], first["latency_p95_ms"], first["latency_p99_ms"]) == (
        50.0,
        95.0,
        99.0,
    )
    assert (first["requests_total"], first["status_2xx"], first["in_flight"]) == (100, 100, 0)
    metrics.arrived()
    idle = metrics.report()  # sent for the request in flight: nothing answered since
    assert (idle["latency_p50_ms"], idle["window_s"], idle["in_flight"]) == (
        50.0,
        first["window_s"],
        1,
    )
    metrics.answered(200, 7.0)
    metrics.done()
    assert metrics.report()["latency_p99_ms"] == 7.0  # a new window: only the newest answer
    assert EndpointMetrics().report()["latency_p50_ms"] is None  # nothing answered ever
    for _ in range(LATENCY_SAMPLES + 10):
        metrics.answered(200, 1.0)
    assert len(metrics._latencies) == LATENCY_SAMPLES


def test_the_endpoint_closes_with_the_deployment_and_its_port_is_free_again(node):
    url = node.deploy("dep_00000000000000d3")
    port = node.agent.records["dep_00000000000000d3"].port
    node.agent.stop("dep_00000000000000d3")
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/echo", timeout=2)
    assert port_is_free(port)
    assert node.agent.proxy.serving() == set()


def _non_loopback_ipv4() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address
