"""Faults never lose a deployment: a crash report too long for the protocol is cut, not dropped;
a runtime that raises for one deployment neither stops the supervision of the others nor leaves
that one without a reported state (real processes, the real process runtime)."""

import os
import signal
import sys
import threading
import time

import pytest

from chalicelib.protocol import STOP_MESSAGE_MAX, DeployConfig, DeployModel, parse_node_message
from node_agent.agent import Agent, AgentSettings, free_port
from node_agent.health import UNHEALTHY_AFTER
from node_agent.runtime.process import ProcessRuntime

SERVE = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
# Ready, then 30 lines of 1,000 characters, then an exit nobody asked for.
CHATTY_CRASH = """
import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(1.0)
for n in range(30):
    print(f"line {n:02d} " + "x" * 1000, flush=True)
print("the last words", flush=True)
os._exit(3)
"""


class FlakyRuntime(ProcessRuntime):
    """The process runtime, except that asking about the deployments in `broken` raises, as a
    container engine that errs does."""

    def __init__(self):
        super().__init__()
        self.broken: set[str] = set()

    def is_running(self, handle):
        if handle.deployment_id in self.broken:
            raise ConnectionError("the engine is not answering")
        return super().is_running(handle)


@pytest.fixture
def node(tmp_path):
    sent = []
    runtime = FlakyRuntime()
    agent = Agent(
        AgentSettings(
            node_id="n", state_dir=tmp_path, probe_interval_s=0.2, liveness_interval_s=0.1
        ),
        {"process": runtime},
        sent.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    yield agent, runtime, sent
    agent.stop_all()
    stop.set()


def deploy(agent, deployment_id: str, script: str) -> None:
    agent.deploy(
        DeployModel(
            deployment_id=deployment_id,
            command=[sys.executable, "-c", script],
            deploy_config=DeployConfig(port=free_port(), health_path="/"),
        )
    )


def wait_for(sent, predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in list(sent) if predicate(m)]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"not sent; sent: {[m.type for m in sent]}")


def test_a_crash_with_long_output_is_reported_cut_to_fit(node):
    agent, _, sent = node
    deploy(agent, "dep_00000000000000a1", CHATTY_CRASH)
    stopped = wait_for(sent, lambda m: m.type == "deployment_stopped")
    assert (stopped.reason, stopped.exit_code) == ("crash", 3)
    assert stopped.message.startswith("the process exited unexpectedly with code 3")
    assert "earlier output cut" in stopped.message
    assert stopped.message.endswith("the last words")
    assert len(stopped.message) <= STOP_MESSAGE_MAX
    # ... and it goes over the wire: the control plane parses what the agent sends.
    assert parse_node_message(stopped.model_dump_json()).message == stopped.message
    assert agent.records == {}


def test_a_runtime_error_on_one_deployment_leaves_the_others_supervised(node):
    agent, runtime, sent = node
    deploy(agent, "dep_00000000000000b1", SERVE)
    deploy(agent, "dep_00000000000000b2", SERVE)
    for deployment_id in ("dep_00000000000000b1", "dep_00000000000000b2"):
        wait_for(
            sent, lambda m, d=deployment_id: m.type == "deployment_ready" and m.deployment_id == d
        )
    runtime.broken.add("dep_00000000000000b1")
    # The broken one is reported failing, up to unhealthy, with no crash invented...
    unhealthy = wait_for(
        sent,
        lambda m: (
            m.type == "deployment_health_update"
            and m.deployment_id == "dep_00000000000000b1"
            and m.consecutive_failures == UNHEALTHY_AFTER
        ),
    )
    assert unhealthy.healthy is False
    assert agent.records["dep_00000000000000b1"].status == "unhealthy"
    # ...while the other is still watched: its crash is seen at once.
    os.killpg(int(agent.records["dep_00000000000000b2"].handle.ref.split(":")[0]), signal.SIGKILL)
    crashed = wait_for(
        sent, lambda m: m.type == "deployment_stopped" and m.deployment_id == "dep_00000000000000b2"
    )
    assert crashed.reason == "crash"
    # The engine answers again: the broken one is healthy again, reported.
    runtime.broken.clear()
    wait_for(
        sent,
        lambda m: (
            m.type == "deployment_health_update"
            and m.deployment_id == "dep_00000000000000b1"
            and m.healthy
        ),
    )


def test_a_runtime_error_while_starting_fails_the_deployment_with_the_reason(node):
    agent, runtime, sent = node
    runtime.broken.add("dep_00000000000000c1")
    deploy(agent, "dep_00000000000000c1", SERVE)
    stopped = wait_for(sent, lambda m: m.type == "deployment_stopped")
    assert stopped.reason == "start_error"
    assert "ConnectionError: the engine is not answering" in stopped.message
    assert agent.records == {}
