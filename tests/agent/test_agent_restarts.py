"""The restart policy with real processes: a crash is restarted (on the port and GPUs it had)
with backoff up to the limit, then reported failed with why; `never` and a clean exit under
`on-failure` end it at once; `always` restarts a clean exit too; unhealthy for too long counts
as a failure; a stop during the backoff wins. The policy's arithmetic itself is pure."""

import sys
import threading
import time

import pytest

from chalicelib.protocol import DeployConfig, DeployModel, StopDeployment
from node_agent import restarts
from node_agent.agent import Agent, AgentSettings
from node_agent.runtime.process import ProcessRuntime

# Ready at once; exits with $EXIT_CODE once `exit-now` exists in its working directory (the
# test's switch), or after $LIVE_S seconds; serves 500 once `sick` exists.
MODEL = """
import os, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
here = os.environ["STATE"]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        sick = os.path.exists(os.path.join(here, "sick"))
        self.send_response(500 if sick else 200)
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
server = HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or "-"
with open(os.path.join(here, "starts"), "a") as out:
    out.write(f"{os.getpid()} {os.environ['PORT']} {gpus}\\n")
deadline = time.monotonic() + float(os.environ.get("LIVE_S", "3600"))
while time.monotonic() < deadline and not os.path.exists(os.path.join(here, "exit-now")):
    time.sleep(0.02)
print("exiting", flush=True)
os._exit(int(os.environ.get("EXIT_CODE", "3")))
"""
PROBE_S = 0.2


@pytest.fixture
def node(tmp_path):
    sent = []
    agent = Agent(
        AgentSettings(
            node_id="n",
            state_dir=tmp_path / "agent",
            probe_interval_s=PROBE_S,
            liveness_interval_s=0.05,
            restart_backoff_s=0.1,
            stop_grace_s=1.0,
        ),
        {"process": ProcessRuntime()},
        sent.append,
    )
    stop = threading.Event()
    threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
    yield agent, sent, tmp_path
    agent.stop_all()
    stop.set()


def deploy(agent, tmp_path, deployment_id="dep_00000000000000e1", env=None, **config):
    agent.deploy(
        DeployModel(
            deployment_id=deployment_id,
            command=[sys.executable, "-c", MODEL],
            env_vars={"STATE": str(tmp_path), **(env or {})},
            deploy_config=DeployConfig(health_path="/", **config),
        )
    )
    return deployment_id


def wait_for(sent, predicate, count=1, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in list(sent) if predicate(m)]
        if len(found) >= count:
            return found[count - 1]
        time.sleep(0.02)
    raise AssertionError(f"not sent {count} times; sent: {[m.type for m in sent]}")


def of_type(kind):
    return lambda m: m.type == kind


def starts(tmp_path) -> list[list[str]]:
    path = tmp_path / "starts"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_crash_is_restarted_on_its_port_until_the_limit_then_fails_with_why(node):
    agent, sent, tmp_path = node
    deploy(agent, tmp_path, env={"LIVE_S": "0.3"}, max_restarts=2)
    stopped = wait_for(sent, of_type("deployment_stopped"))
    restarted = [m for m in sent if m.type == "deployment_restarted"]
    assert [(m.restarts, m.cause, m.exit_code) for m in restarted] == [
        (1, "crash", 3),
        (2, "crash", 3),
    ]
    assert "exiting" in restarted[0].message
    assert (stopped.reason, stopped.exit_code) == ("crash", 3)
    assert stopped.message.endswith("[not restarted: it failed again after 2 restarts in a row]")
    # Three runs, all on the one port the agent picked (nobody else may take it meanwhile).
    runs = starts(tmp_path)
    assert len(runs) == 3 and len({port for _, port, _ in runs}) == 1
    assert len({pid for pid, _, _ in runs}) == 3


def test_a_crash_is_noticed_and_restarted_within_one_probe_interval(node):
    agent, sent, tmp_path = node
    deployment_id = deploy(agent, tmp_path)
    wait_for(sent, of_type("deployment_ready"))
    (tmp_path / "exit-now").touch()
    crashed_at = time.monotonic()
    wait_for(sent, of_type("deployment_restarted"))
    assert time.monotonic() - crashed_at < PROBE_S + 0.3  # + the liveness tick, on a busy CI
    (tmp_path / "exit-now").unlink()
    wait_for(sent, of_type("deployment_ready"), count=2)
    assert agent.describe(deployment_id)["restarts"] == 1
    assert agent.records[deployment_id].status == "running"


@pytest.mark.parametrize(
    ("policy", "code", "restarted"),
    [("never", 3, False), ("on-failure", 0, False), ("always", 0, True), ("on-failure", 3, True)],
)
def test_which_exits_the_policy_restarts(node, policy, code, restarted):
    agent, sent, tmp_path = node
    deploy(agent, tmp_path, env={"LIVE_S": "0.3", "EXIT_CODE": str(code)}, restart=policy)
    first = wait_for(sent, lambda m: m.type in ("deployment_restarted", "deployment_stopped"))
    assert first.type == ("deployment_restarted" if restarted else "deployment_stopped")
    if not restarted:
        assert (first.reason, first.exit_code) == ("crash", code)
        assert ("not restarted" in first.message) == (policy != "never")


def test_unhealthy_for_too_long_is_restarted_as_a_failure(node):
    agent, sent, tmp_path = node
    deploy(agent, tmp_path, unhealthy_timeout_s=1)
    wait_for(sent, of_type("deployment_ready"))
    (tmp_path / "sick").touch()
    sick_at = time.monotonic()
    restarted = wait_for(sent, of_type("deployment_restarted"))
    assert restarted.cause == "unhealthy" and "unhealthy for" in restarted.message
    # 3 failed probes make it unhealthy; then 1 s more.
    assert 1.0 <= time.monotonic() - sick_at < 1.0 + 6 * PROBE_S + 1.0
    (tmp_path / "sick").unlink()
    wait_for(sent, of_type("deployment_ready"), count=2)
    assert len(starts(tmp_path)) == 2


def test_unhealthy_stays_unhealthy_under_never(node):
    agent, sent, tmp_path = node
    deployment_id = deploy(agent, tmp_path, unhealthy_timeout_s=1, restart="never")
    wait_for(sent, of_type("deployment_ready"))
    (tmp_path / "sick").touch()
    time.sleep(1.0 + 6 * PROBE_S)
    assert not [m for m in sent if m.type in ("deployment_restarted", "deployment_stopped")]
    assert agent.records[deployment_id].status == "unhealthy"


def test_a_stop_during_the_backoff_stops_it_for_good(node, monkeypatch):
    agent, sent, tmp_path = node
    monkeypatch.setattr(restarts, "BACKOFF_CAP_S", 60.0)
    agent.settings = AgentSettings(**{**agent.settings.__dict__, "restart_backoff_s": 30.0})
    deployment_id = deploy(agent, tmp_path, env={"LIVE_S": "0.3"})
    wait_for(sent, of_type("deployment_restarted"))
    agent.on_message(StopDeployment(deployment_id=deployment_id))
    assert wait_for(sent, of_type("deployment_stopped")).reason == "stopped"
    time.sleep(0.3)
    assert len(starts(tmp_path)) == 1 and deployment_id not in agent.records


# --- the policy, pure ----------------------------------------------------------------------


def test_backoff_doubles_and_is_capped():
    delays = [restarts.decide("always", 3, n, 1).delay_s for n in range(10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == restarts.BACKOFF_CAP_S


def test_the_count_in_a_row_starts_again_after_long_enough_healthy():
    now = 10_000.0
    assert restarts.restarts_in_a_row(3, now - restarts.RESET_AFTER_S, now) == 0
    assert restarts.restarts_in_a_row(3, now - restarts.RESET_AFTER_S + 1, now) == 3
    assert restarts.restarts_in_a_row(3, None, now) == 3
    assert restarts.decide("on-failure", 3, 3, 1).restart is False
    assert restarts.decide("on-failure", 3, 2, None).restart is True  # unknown exit: a failure
