"""Edge cases a hostile test pass found, each a regression test with real processes: models
whose health path hangs never delay noticing another's crash; unhealthy restarts respect
max_restarts; GPUs the control plane reserved are waited for while a deployment that is ending
still holds them; a model port taken during a restart's backoff is replaced; a deploy_model
sent again is answered with where the deployment stands; the workers of a model re-adopted by
a restarted agent die with it."""

import os
import signal
import sys
import threading
import time

import pytest

from chalicelib.protocol import DeployConfig, DeployModel, GpuInfo, StopDeployment
from node_agent import restarts
from node_agent.agent import Agent, AgentSettings
from node_agent.runtime.process import ProcessRuntime, start_time

# Ready at once; exits with 3 once `exit-now` exists in $STATE (or after $LIVE_S); answers
# 500 after $SICK_AFTER requests; logs each start's pid, port and GPUs to $STATE/starts.
MODEL = """
import os, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
here, count = os.environ["STATE"], [0]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        count[0] += 1
        sick = count[0] > int(os.environ.get("SICK_AFTER", "1000000000"))
        self.send_response(500 if sick else 200)
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or "-"
with open(os.path.join(here, "starts"), "a") as out:
    out.write(f"{os.getpid()} {os.environ['PORT']} {gpus}\\n")
server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
deadline = time.monotonic() + float(os.environ.get("LIVE_S", "3600"))
while time.monotonic() < deadline and not os.path.exists(os.path.join(here, "exit-now")):
    time.sleep(0.02)
os._exit(3)
"""
# Answers its first health check (ready), then accepts and never answers again.
HANGS_AFTER_READY = """
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
n = [0]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        n[0] += 1
        if n[0] > 1:
            time.sleep(3600)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
# A leader that forks a serving worker into its process group, then exits on `exit-now`.
LEADER_AND_WORKER = """
import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
here = os.environ["STATE"]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
if os.fork() == 0:
    open(os.path.join(here, "worker"), "w").write(str(os.getpid()))
    server.serve_forever()
while not os.path.exists(os.path.join(here, "exit-now")):
    time.sleep(0.05)
os._exit(9)
"""


class Node:
    def __init__(self, state_dir, **settings):
        self.sent = []
        defaults = {
            "probe_interval_s": 0.2,
            "liveness_interval_s": 0.05,
            "restart_backoff_s": 0.1,
            "stop_grace_s": 1.0,
        }
        self.agent = Agent(
            AgentSettings(node_id="n", state_dir=state_dir, **(defaults | settings)),
            {"process": ProcessRuntime()},
            self.sent.append,
        )
        self._stop = threading.Event()
        threading.Thread(target=self.agent.supervise, args=(self._stop,), daemon=True).start()

    def wait(self, predicate, count=1, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in list(self.sent) if predicate(m)]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.02)
        raise AssertionError(f"not sent; sent: {[(m.type, m.deployment_id) for m in self.sent]}")

    def close(self, stop_models=True):
        if stop_models:
            self.agent.stop_all()
        self.agent.shutdown()
        self._stop.set()


def of(kind, deployment_id):
    return lambda m: m.type == kind and m.deployment_id == deployment_id


def model(deployment_id, tmp_path, script=MODEL, env=None, fields=None, **config):
    return DeployModel(
        deployment_id=deployment_id,
        command=[sys.executable, "-c", script],
        env_vars={"STATE": str(tmp_path), **(env or {})},
        deploy_config=DeployConfig(health_path="/", auth="public", **config),
        **(fields or {}),
    )


def test_hung_health_paths_never_delay_noticing_another_models_crash(tmp_path):
    node = Node(tmp_path / "agent", probe_interval_s=1.0)
    hung = [f"dep_00000000000001{i:02d}" for i in range(4)]
    try:
        for deployment_id in hung:
            node.agent.deploy(model(deployment_id, tmp_path, HANGS_AFTER_READY))
        node.agent.deploy(model("dep_00000000000000e1", tmp_path))
        for deployment_id in [*hung, "dep_00000000000000e1"]:
            node.wait(of("deployment_ready", deployment_id))
        time.sleep(2.5)  # their probes now hang, one after another
        (tmp_path / "exit-now").touch()
        crashed = time.monotonic()
        node.wait(of("deployment_restarted", "dep_00000000000000e1"), timeout=30)
        assert time.monotonic() - crashed < 1.0
    finally:
        (tmp_path / "exit-now").touch()
        node.close()


def test_unhealthy_restarts_stop_at_max_restarts(tmp_path, monkeypatch):
    """Unhealthy time never counts as healthy time towards resetting the count in a row."""
    monkeypatch.setattr(restarts, "RESET_AFTER_S", 1.5)
    node = Node(tmp_path / "agent")
    try:
        config = {"max_restarts": 1, "unhealthy_timeout_s": 1}
        node.agent.deploy(
            model("dep_00000000000000e2", tmp_path, env={"SICK_AFTER": "1"}, **config)
        )
        stopped = node.wait(of("deployment_stopped", "dep_00000000000000e2"), timeout=30)
        assert "after 1 restarts in a row" in stopped.message
        assert [m.restarts for m in node.sent if m.type == "deployment_restarted"] == [1]
    finally:
        node.close()


def test_reserved_gpus_an_ending_deployment_still_holds_are_waited_for(tmp_path):
    """The control plane moved the GPU on (the old deployment is over there) before the node
    has stopped the old one: the new one waits for it instead of failing."""
    node = Node(tmp_path / "agent", stop_grace_s=2.0)
    node.agent.gpus = [GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_total_mb=81559)]
    gpu = {"gpu": True, "gpu_indices": [0]}
    try:
        node.agent.deploy(model("dep_00000000000000f1", tmp_path, fields=gpu))
        node.wait(of("deployment_ready", "dep_00000000000000f1"))
        node.agent.deploy(model("dep_00000000000000f2", tmp_path, fields=gpu))
        time.sleep(0.5)  # its deploy_model came first; the stop of the old one just after
        node.agent.on_message(StopDeployment(deployment_id="dep_00000000000000f1"))
        node.wait(of("deployment_ready", "dep_00000000000000f2"))
        assert node.agent.records["dep_00000000000000f2"].gpu_indices == [0]
        assert not [m for m in node.sent if of("deployment_stopped", "dep_00000000000000f2")(m)]
    finally:
        node.close()


def test_a_model_port_taken_during_the_backoff_is_replaced_behind_the_same_endpoint(tmp_path):
    import socket

    node = Node(tmp_path / "agent", restart_backoff_s=1.0)
    deployment_id = "dep_00000000000000a1"
    try:
        node.agent.deploy(model(deployment_id, tmp_path, env={"LIVE_S": "0.5"}, max_restarts=3))
        ready = node.wait(of("deployment_ready", deployment_id))
        taken = node.agent.records[deployment_id].model_port
        node.wait(of("deployment_restarted", deployment_id))
        with socket.socket() as squatter:  # some other program, during the backoff
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", taken))
            squatter.listen()
            again = node.wait(of("deployment_ready", deployment_id), count=2)
            assert again.endpoint_url == ready.endpoint_url
            assert node.agent.records[deployment_id].model_port != taken
    finally:
        node.close()


def test_a_deploy_model_sent_again_is_answered_with_where_it_stands(tmp_path):
    node = Node(tmp_path / "agent", restart_backoff_s=0.1)
    try:
        running = model("dep_00000000000000c1", tmp_path)
        node.agent.deploy(running)
        first = node.wait(of("deployment_ready", "dep_00000000000000c1"))
        node.agent.deploy(running)  # our ready was lost on the way: the server asks again
        again = node.wait(of("deployment_ready", "dep_00000000000000c1"), count=2)
        assert again.endpoint_url == first.endpoint_url
        ended = model("dep_00000000000000c2", tmp_path, env={"LIVE_S": "0"}, restart="never")
        node.agent.deploy(ended)
        stopped = node.wait(of("deployment_stopped", "dep_00000000000000c2"))
        node.agent.deploy(ended)
        repeated = node.wait(of("deployment_stopped", "dep_00000000000000c2"), count=2)
        assert (repeated.reason, repeated.exit_code) == (stopped.reason, stopped.exit_code)
        assert len((tmp_path / "starts").read_text().splitlines()) == 2  # nothing started again
    finally:
        node.close()


def test_the_workers_of_a_readopted_model_die_with_it(tmp_path):
    first = Node(tmp_path / "agent")
    deployment_id = "dep_00000000000000d9"
    first.agent.deploy(model(deployment_id, tmp_path, LEADER_AND_WORKER, restart="never"))
    first.wait(of("deployment_ready", deployment_id))
    first.close(stop_models=False)  # the agent goes (an upgrade); its model runs on
    second = Node(tmp_path / "agent")
    worker = int((tmp_path / "worker").read_text())
    try:
        second.agent.adopt_existing()
        (tmp_path / "exit-now").touch()  # the leader dies; its worker would live on
        second.wait(of("deployment_stopped", deployment_id))
        deadline = time.monotonic() + 5
        while start_time(worker) is not None:
            assert time.monotonic() < deadline, "the worker outlived its deployment"
            time.sleep(0.05)
    finally:
        second.close()
        if start_time(worker) is not None:
            os.kill(worker, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _no_leftover_exit_switch(tmp_path):
    yield
    (tmp_path / "exit-now").touch()  # any model of a failed test exits
