"""The agent running an image deployment through the real docker SDK against the fake Engine
API: the same start -> ready -> crash / stop path as processes. The container is published on
loopback only, on the model's own port; the endpoint is the agent's proxy."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest
import requests

from chalicelib.protocol import DeployConfig, DeployModel, LogsRequest, StopDeployment
from node_agent.agent import Agent, AgentSettings
from node_agent.ports import free_port
from node_agent.runtime.docker import DockerRuntime
from tests.fakes.docker_engine import FakeDockerEngine

DEPLOYMENT = "dep_00000000000000d1"


class Healthy(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def setup(tmp_path):
    with FakeDockerEngine(images=["acme/model:1"]) as engine:
        client = docker.DockerClient(base_url=engine.url, version=engine.api_version)
        messages = []
        agent = Agent(
            AgentSettings(
                node_id="n", state_dir=tmp_path, probe_interval_s=0.2, liveness_interval_s=0.05
            ),
            {"docker": DockerRuntime(client)},
            messages.append,
        )
        stop = threading.Event()
        supervisor = threading.Thread(target=agent.supervise, args=(stop,), daemon=True)
        supervisor.start()
        yield engine, agent, messages
        stop.set()
        supervisor.join()


def wait_for(messages, kind, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in messages:
            if message.type == kind:
                return message
        time.sleep(0.02)
    raise AssertionError(f"no {kind}; got {[m.type for m in messages]}")


def wait_for_where(messages, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(predicate(m) for m in list(messages)):
            return
        time.sleep(0.02)
    raise AssertionError(f"not sent; got {[m.type for m in messages]}")


def serve_container_port(agent, deployment_id=DEPLOYMENT) -> ThreadingHTTPServer:
    """The fake engine runs nothing: answer on the mapped port as the container would."""
    deadline = time.monotonic() + 10
    while agent.records[deployment_id].model_port == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    server = ThreadingHTTPServer(("127.0.0.1", agent.records[deployment_id].model_port), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def deploy(agent, **config):
    agent.deploy(
        DeployModel(
            deployment_id=DEPLOYMENT,
            image="acme/model:1",
            env_vars={"MODE": "fast"},
            deploy_config=DeployConfig(health_path="/health", **{"auth": "public", **config}),
        )
    )


def test_an_image_deployment_becomes_ready_and_a_container_exit_is_a_crash(setup):
    engine, agent, messages = setup
    deploy(agent, restart="never")
    server = serve_container_port(agent)
    try:
        ready = wait_for(messages, "deployment_ready")
        created = engine.container(f"prism-{DEPLOYMENT}").body
        # No port asked for: the image's conventional 8000 inside, the model's own port on
        # loopback outside; the endpoint is the proxy's port, which reaches it.
        assert "MODE=fast" in created["Env"] and "PORT=8000" in created["Env"]
        binding = created["HostConfig"]["PortBindings"]["8000/tcp"][0]
        record = agent.records[DEPLOYMENT]
        assert binding["HostIp"] == "127.0.0.1"
        assert int(binding["HostPort"]) == record.model_port != record.port
        assert ready.endpoint_url == f"http://127.0.0.1:{record.port}"
        assert requests.get(ready.endpoint_url + "/health", timeout=5).status_code == 200
        engine.set_logs(f"prism-{DEPLOYMENT}", ["loading", "out of memory"])
        agent.on_message(LogsRequest(deployment_id=DEPLOYMENT, request_id="r", tail=1))
        assert wait_for(messages, "logs_result").lines == ["out of memory"]
        engine.exit(f"prism-{DEPLOYMENT}", 137)
        stopped = wait_for(messages, "deployment_stopped")
        assert (stopped.reason, stopped.exit_code) == ("crash", 137)
    finally:
        server.shutdown()


def test_a_container_exit_is_restarted_on_the_same_port_under_the_default_policy(setup):
    engine, agent, messages = setup
    deploy(agent)
    server = serve_container_port(agent)
    try:
        wait_for(messages, "deployment_ready")
        first = engine.container(f"prism-{DEPLOYMENT}").id
        model_port = agent.records[DEPLOYMENT].model_port
        engine.exit(f"prism-{DEPLOYMENT}", 137)
        server.shutdown()  # an exited container's port is free again
        server.server_close()
        restarted = wait_for(messages, "deployment_restarted")
        assert (restarted.restarts, restarted.cause, restarted.exit_code) == (1, "crash", 137)
        deadline = time.monotonic() + 10
        while (container := engine.container(f"prism-{DEPLOYMENT}")) is None or (
            container.id == first
        ):  # until the new container is there
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert agent.records[DEPLOYMENT].model_port == model_port
        server = serve_container_port(agent)
        while sum(m.type == "deployment_ready" for m in messages) < 2:
            assert time.monotonic() < deadline, [m.type for m in messages]
            time.sleep(0.02)
        # A new container, published on the port it had.
        assert engine.container(f"prism-{DEPLOYMENT}").id != first
        assert agent.describe(DEPLOYMENT)["restarts"] == 1
    finally:
        server.shutdown()


def test_an_explicit_port_is_the_endpoints_and_the_containers(setup):
    engine, agent, messages = setup
    port = free_port()
    deploy(agent, port=port)
    server = serve_container_port(agent)
    try:
        ready = wait_for(messages, "deployment_ready")
        created = engine.container(f"prism-{DEPLOYMENT}").body
        binding = created["HostConfig"]["PortBindings"][f"{port}/tcp"][0]
        assert binding == {
            "HostIp": "127.0.0.1",
            "HostPort": str(agent.records[DEPLOYMENT].model_port),
        }
        assert ready.endpoint_url.endswith(f":{port}")
    finally:
        server.shutdown()


def test_the_container_gets_none_of_the_agents_environment(setup, monkeypatch):
    engine, agent, messages = setup
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-agent")
    deploy(agent, restart="never")
    server = serve_container_port(agent)
    try:
        wait_for(messages, "deployment_ready")
        env = engine.container(f"prism-{DEPLOYMENT}").body["Env"]
        assert sorted(env) == ["MODE=fast", "PORT=8000", f"PRISM_DEPLOYMENT_ID={DEPLOYMENT}"]
    finally:
        server.shutdown()


def test_engine_errors_count_against_each_deployment_and_never_stop_supervision(setup):
    """The engine answers 500 to every inspect for a while: each deployment is reported failing
    (unhealthy after 3), none is invented a crash, and once the engine answers again both are
    healthy and a real exit is still seen at once."""
    engine, agent, messages = setup
    other = "dep_00000000000000d2"
    deploy(agent, restart="never")
    agent.deploy(
        DeployModel(
            deployment_id=other,
            image="acme/model:1",
            deploy_config=DeployConfig(health_path="/health", restart="never"),
        )
    )
    servers = [serve_container_port(agent, d) for d in (DEPLOYMENT, other)]
    try:
        for d in (DEPLOYMENT, other):
            wait_for_where(
                messages, lambda m, d=d: m.type == "deployment_ready" and m.deployment_id == d
            )
        engine.fail("inspect_container", 1000)
        for d in (DEPLOYMENT, other):
            wait_for_where(
                messages,
                lambda m, d=d: (
                    m.type == "deployment_health_update"
                    and m.deployment_id == d
                    and m.consecutive_failures == 3
                ),
            )
        assert not [m for m in messages if m.type == "deployment_stopped"]
        engine.fail("inspect_container", 0)
        for d in (DEPLOYMENT, other):
            wait_for_where(
                messages,
                lambda m, d=d: (
                    m.type == "deployment_health_update" and m.deployment_id == d and m.healthy
                ),
            )
        engine.exit(f"prism-{other}", 1)
        stopped = wait_for(messages, "deployment_stopped")
        assert (stopped.deployment_id, stopped.reason) == (other, "crash")
        assert agent.records[DEPLOYMENT].status == "running"
    finally:
        for server in servers:
            server.shutdown()


def test_stopping_an_image_deployment_removes_its_container(setup):
    engine, agent, messages = setup
    deploy(agent)
    server = serve_container_port(agent)
    try:
        wait_for(messages, "deployment_ready")
        agent.on_message(StopDeployment(deployment_id=DEPLOYMENT))
        assert wait_for(messages, "deployment_stopped").reason == "stopped"
        assert engine.container(f"prism-{DEPLOYMENT}") is None
    finally:
        server.shutdown()


def test_an_unpullable_image_is_a_start_error_with_the_engines_reason(setup):
    engine, agent, messages = setup
    engine.unpullable.add("private/model:1")
    agent.deploy(
        DeployModel(
            deployment_id=DEPLOYMENT,
            image="private/model:1",
            deploy_config=DeployConfig(health_path="/health"),
        )
    )
    stopped = wait_for(messages, "deployment_stopped")
    assert stopped.reason == "start_error" and "private/model:1" in stopped.message


def test_a_deployment_that_ended_here_is_not_started_again(setup):
    engine, agent, messages = setup
    agent.on_message(StopDeployment(deployment_id=DEPLOYMENT))  # the stop overtook the deploy
    wait_for(messages, "deployment_stopped")
    deploy(agent)
    time.sleep(0.3)
    assert engine.container(f"prism-{DEPLOYMENT}") is None


def test_placeholders_in_an_image_command_are_the_container_port_and_weights_path(setup):
    engine, agent, messages = setup
    agent.deploy(
        DeployModel(
            deployment_id=DEPLOYMENT,
            image="acme/model:1",
            command=["serve", "--port", "{port}", "--listen=0.0.0.0:{port}"],
            deploy_config=DeployConfig(health_path="/health"),
        )
    )
    server = serve_container_port(agent)
    try:
        wait_for(messages, "deployment_ready")
        created = engine.container(f"prism-{DEPLOYMENT}").body
        # The container's own port, whatever host port the agent mapped it to.
        assert created["Cmd"] == ["serve", "--port", "8000", "--listen=0.0.0.0:8000"]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("advertise", "listening"),
    [("127.0.0.1", "127.0.0.1"), ("localhost", "127.0.0.1"), ("10.1.2.3", "0.0.0.0")],
)
def test_the_endpoint_listens_where_it_is_reached_and_the_container_on_loopback_only(
    tmp_path, advertise, listening
):
    with FakeDockerEngine(images=["acme/model:1"]) as engine:
        client = docker.DockerClient(base_url=engine.url, version=engine.api_version)
        messages = []
        agent = Agent(
            AgentSettings(node_id="n", state_dir=tmp_path, advertise_host=advertise),
            {"docker": DockerRuntime(client)},
            messages.append,
        )
        deploy(agent)
        server = serve_container_port(agent)
        try:
            ready = wait_for(messages, "deployment_ready")
            created = engine.container(f"prism-{DEPLOYMENT}").body
            assert created["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
            assert ready.endpoint_url.startswith(f"http://{advertise}:")
            assert listening_on(agent.records[DEPLOYMENT].port) == {listening}
        finally:
            agent.stop_all()
            server.shutdown()


def listening_on(port: int) -> set[str]:
    """The IPv4 addresses something listens on at `port` (Linux's /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found
