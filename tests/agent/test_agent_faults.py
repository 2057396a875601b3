"""Faults never lose a deployment: a crash report too long for the protocol is cut, not dropped;
a runtime that raises for one deployment neither stops the supervision of the others nor leaves
that one without a reported state (real processes, the real process runtime)."""

import os
import signal
import sys
import threading
import time

import pytest

from chalicelib.protocol import (
    STOP_MESSAGE_MAX,
    UNHEALTHY_AFTER,
    DeployConfig,
    DeployModel,
    parse_node_message,
)
from node_agent.agent import Agent, AgentSettings
from node_agent.ports import free_port
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


def deploy(agent, deployment_id: str, script: str, restart: str = "never") -> None:
    agent.deploy(
        DeployModel(
            deployment_id=deployment_id,
            command=[sys.executable, "-c", script],
            deploy_config=DeployConfig(port=free_port(), health_path="/", restart=restart),
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


class RaisingRuntime(ProcessRuntime):
    """The process runtime, except that the `nth` call of `method` raises, as an engine that
    errs once does."""

    def __init__(self, method: str, nth: int):
        super().__init__()
        self.method, self.nth, self.calls = method, nth, 0

    def __getattribute__(self, name):
        attribute = super().__getattribute__(name)
        if name != super().__getattribute__("method"):
            return attribute

        def maybe_raise(*args, **kwargs):
            self.calls += 1
            if self.calls == self.nth:
                raise ConnectionError(f"the engine failed {name} (call {self.nth})")
            return attribute(*args, **kwargs)

        return maybe_raise


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("method", ["start", "is_running", "exit_code", "stop", "serves"])
def test_a_runtime_that_raises_at_each_call_in_turn_never_loses_a_deployment(tmp_path, method, nth):
    """Deploy, crash the model, and whatever call raised: the deployment ends with a reason
    (or runs), the agent's view matches what it reported, and nothing of it is left running."""
    sent = []
    runtime = RaisingRuntime(method, nth)
    agent = Agent(
        AgentSettings(
            node_id="n", state_dir=tmp_path, probe_interval_s=0.2, liveness_interval_s=0.05
        ),
        {"process": runtime},
        sent.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    deployment_id = "dep_00000000000000f1"
    try:
        deploy(agent, deployment_id, SERVE)
        first = wait_for(sent, lambda m: m.type in ("deployment_ready", "deployment_stopped"))
        if first.type == "deployment_ready":
            pid = int(agent.records[deployment_id].handle.ref.split(":")[0])
            os.killpg(pid, signal.SIGKILL)
            started = time.monotonic()
            ended = wait_for(sent, lambda m: m.type == "deployment_stopped", timeout=10)
            # Within one probe interval (plus the liveness tick and a failed check, on CI).
            assert time.monotonic() - started < 0.2 + 1.0
        else:
            ended = first
        assert ended.reason in ("crash", "start_error") and ended.message
        assert deployment_id not in agent.records  # the agent's view is what it reported
        assert len([m for m in sent if m.type == "deployment_stopped"]) == 1
        assert agent.store.load() == {}
        if first.type == "deployment_ready":  # its whole process group is gone
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
    finally:
        agent.stop_all()
        stop.set()


def test_a_stop_the_engine_fails_once_is_tried_again_and_confirmed(tmp_path):
    sent = []
    agent = Agent(
        AgentSettings(node_id="n", state_dir=tmp_path, probe_interval_s=0.2),
        {"process": RaisingRuntime("stop", 1)},
        sent.append,
    )
    deploy(agent, "dep_00000000000000f2", SERVE)
    wait_for(sent, lambda m: m.type == "deployment_ready")
    pid = int(agent.records["dep_00000000000000f2"].handle.ref.split(":")[0])
    agent.stop("dep_00000000000000f2")
    stopped = wait_for(sent, lambda m: m.type == "deployment_stopped")
    assert stopped.reason == "stopped" and stopped.message is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
