"""Ports and GPUs are the node's to hand out, one deployment each, reserved before the pull:
five deployments asking for one port at once get one winner and four clear `port_in_use`
failures (none ever reported with the winner's endpoint); a port another program holds fails
at once; no port asked for means a free one, the endpoint's (the proxy's), and the model gets
another free one of its own on loopback; a health answer from a server that is not the
deployment's own never makes it ready; two GPU deployments racing for one GPU (a fake NVML
inventory): one runs, the other fails before its pull; the GPUs the control plane reserved are
the ones the model gets."""

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from chalicelib.protocol import DeployConfig, DeployModel, GpuInfo
from node_agent.agent import Agent, AgentSettings
from node_agent.ports import free_port
from node_agent.runtime.process import ProcessRuntime

SERVE = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"pid": os.getpid(), "port": os.environ["PORT"],
                           "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
IDLE = "import time; time.sleep(3600)"  # never listens on its port
ONE_GPU = [GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", memory_total_mb=81920)]


@pytest.fixture
def node(tmp_path):
    sent = []
    agent = Agent(
        AgentSettings(
            node_id="n",
            state_dir=tmp_path,
            probe_interval_s=0.2,
            liveness_interval_s=0.05,
            startup_timeout_s=2.0,
            gpu_wait_s=0.5,
        ),
        {"process": ProcessRuntime()},
        sent.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    yield agent, sent
    agent.stop_all()
    stop.set()


def model(deployment_id, script=SERVE, port=None, **fields) -> DeployModel:
    return DeployModel(
        deployment_id=deployment_id,
        command=[sys.executable, "-c", script],
        deploy_config=DeployConfig(port=port, health_path="/", restart="never", auth="public"),
        **fields,
    )


def ends(sent, ids, timeout=20.0) -> dict:
    """deployment id -> its first deployment_ready or deployment_stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {}
        for m in list(sent):
            if m.type in ("deployment_ready", "deployment_stopped"):
                seen.setdefault(m.deployment_id, m)
        if set(ids) <= set(seen):
            return {i: seen[i] for i in ids}
        time.sleep(0.02)
    raise AssertionError(f"not all ended; sent: {[(m.type, m.deployment_id) for m in sent]}")


def ids(count, prefix="a"):
    return [f"dep_{prefix * 14}{n:02d}" for n in range(count)]


def test_five_deployments_on_one_port_at_once_one_wins_four_fail_fast(node):
    agent, sent = node
    port, deployments = free_port(), ids(5)
    threads = [
        threading.Thread(target=agent.on_message, args=(model(d, port=port),)) for d in deployments
    ]
    for thread in threads:
        thread.start()
    outcome = ends(sent, deployments)
    ready = [m for m in outcome.values() if m.type == "deployment_ready"]
    failed = [m for m in outcome.values() if m.type == "deployment_stopped"]
    assert len(ready) == 1 and ready[0].endpoint_url.endswith(f":{port}")
    assert len(failed) == 4
    for stopped in failed:
        assert stopped.reason == "start_error" and stopped.message.startswith("port_in_use")
    # No loser was ever reported ready (with the winner's endpoint), nor started a process.
    losers = {m.deployment_id for m in failed}
    assert not [m for m in sent if m.type == "deployment_ready" and m.deployment_id in losers]
    answer = requests.get(ready[0].endpoint_url.replace("localhost", "127.0.0.1"), timeout=5)
    winner = agent.records[ready[0].deployment_id]
    assert answer.json()["port"] == str(winner.model_port) != str(port)  # behind the proxy


def test_a_port_another_program_holds_fails_at_once(node):
    agent, sent = node
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.monotonic()
        agent.deploy(model("dep_00000000000000b1", port=taken.getsockname()[1]))
        stopped = ends(sent, ["dep_00000000000000b1"])["dep_00000000000000b1"]
    assert stopped.type == "deployment_stopped" and stopped.reason == "start_error"
    assert "port_in_use" in stopped.message and "another program" in stopped.message
    assert time.monotonic() - started < 1.0


def test_no_port_asked_for_gets_distinct_free_ports_shown_in_the_endpoints(node):
    agent, sent = node
    deployments = ids(4, "c")
    for deployment_id in deployments:
        agent.deploy(model(deployment_id))
    outcome = ends(sent, deployments)
    ports = set()
    for deployment_id, ready in outcome.items():
        assert ready.type == "deployment_ready", ready
        port = int(ready.endpoint_url.rsplit(":", 1)[1])
        model_port = agent.describe(deployment_id)["model_port"]
        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=5).json()
        assert answer["port"] == str(model_port)
        assert agent.describe(deployment_id)["port"] == port
        ports |= {port, model_port}
    assert len(ports) == 8  # an endpoint port and a model port each, none shared


class Impostor(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_answer_from_a_server_that_is_not_the_deployments_own_never_makes_it_ready(node):
    agent, sent = node
    agent.deploy(model("dep_00000000000000d1", script=IDLE))
    deadline = time.monotonic() + 10
    while agent.records["dep_00000000000000d1"].handle is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # Someone else's server takes the port the model never bound, and answers 200.
    impostor = ThreadingHTTPServer(
        ("127.0.0.1", agent.records["dep_00000000000000d1"].model_port), Impostor
    )
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    try:
        stopped = ends(sent, ["dep_00000000000000d1"])["dep_00000000000000d1"]
    finally:
        impostor.shutdown()
    assert stopped.type == "deployment_stopped" and stopped.reason == "start_error"
    assert "another program answered on its port" in stopped.message


def test_two_gpu_deployments_racing_for_one_gpu_one_runs_the_other_fails_before_its_pull(
    node, tmp_path
):
    agent, sent = node
    agent.gpus = ONE_GPU
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "model.bin").write_bytes(b"w" * 1024)
    racers = ids(2, "e")
    threads = [
        threading.Thread(
            target=agent.deploy,
            args=(model(d, weights_source=str(weights), gpu=True, gpu_type="A100"),),
        )
        for d in racers
    ]
    for thread in threads:
        thread.start()
    outcome = ends(sent, racers)
    ready = [m for m in outcome.values() if m.type == "deployment_ready"]
    failed = [m for m in outcome.values() if m.type == "deployment_stopped"]
    assert len(ready) == 1 and len(failed) == 1
    assert failed[0].reason == "start_error" and "no free A100 GPU" in failed[0].message
    loser = failed[0].deployment_id
    assert not [m for m in sent if m.type == "deployment_progress" and m.deployment_id == loser]
    port = ready[0].endpoint_url.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).json()["cuda"] == "0"


def test_the_gpus_the_control_plane_reserved_are_the_ones_the_model_gets(node):
    agent, sent = node
    agent.gpus = [
        GpuInfo(index=i, name="NVIDIA GeForce RTX 4090", memory_total_mb=24564) for i in range(4)
    ]
    agent.deploy(model("dep_00000000000000f1", gpu=True, gpu_indices=[2]))
    ready = ends(sent, ["dep_00000000000000f1"])["dep_00000000000000f1"]
    port = ready.endpoint_url.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).json()["cuda"] == "2"
    # A reservation the node cannot honour (in use here, or no such GPU) fails with why.
    agent.deploy(model("dep_00000000000000f2", gpu=True, gpu_indices=[2]))
    agent.deploy(model("dep_00000000000000f3", gpu=True, gpu_indices=[7]))
    outcome = ends(sent, ["dep_00000000000000f2", "dep_00000000000000f3"])
    for stopped in outcome.values():
        assert stopped.type == "deployment_stopped" and stopped.reason == "start_error"
        assert "reserved:" in stopped.message
