"""Restarts the node agent makes under a deployment's restart policy, as the control plane
records them: `deployment_restarted` through the real WebSocket handlers (played node), seen on
the REST detail and by `prism deploy status`."""

import json

import pytest
from click.testing import CliRunner

from chalicelib.services import registry
from chalicelib.services.node_messages import LAST_EXIT_MESSAGE_MAX
from tests.functional.node_sim import NodeSim

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


def connected_node(api, app, name="gpu-box", connection_id="conn-1") -> NodeSim:
    created = api.post(NODES, {"name": name}).data
    sim = NodeSim(app, created["token"], created["id"], connection_id=connection_id)
    assert sim.connect()["statusCode"] == 200
    sim.hello()
    return sim


@pytest.fixture
def node(api, app):
    return connected_node(api, app)


def running_deployment(api, node, **body) -> str:
    request = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
    created = api.post(DEPLOYMENTS, request | body)
    assert created.status_code == 201, created.data
    deployment_id = created.data["id"]
    node.say(type="deployment_ready", deployment_id=deployment_id, endpoint_url="http://n:9000")
    assert get(api, deployment_id)["status"] == "running"
    return deployment_id


def get(api, deployment_id):
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data


def restarted(deployment_id, restarts, cause="crash", exit_code=1, message="boom") -> dict:
    report = {"type": "deployment_restarted", "deployment_id": deployment_id}
    return report | {
        "restarts": restarts,
        "cause": cause,
        "exit_code": exit_code,
        "message": message,
    }


def handle(node, message: dict) -> list:
    """What the control plane answers the node (NodeSim.say drops the replies)."""
    return registry.node_message_handler().handle(node.connection_id, json.dumps(message))


def test_restarts_show_on_the_deployment_and_survive_the_final_crash(api, node):
    d = running_deployment(api, node)
    fresh = get(api, d)
    assert (fresh["restarts"], fresh["last_exit"]) == (0, None)

    node.say(**restarted(d, 1, exit_code=1, message="Traceback ...\nValueError: bad weights"))
    first = get(api, d)
    assert (first["status"], first["restarts"]) == ("starting", 1)
    assert first["status_message"] == "restarted (1 of 3) after a crash, exit code 1"
    last = first["last_exit"]
    assert (last["cause"], last["exit_code"]) == ("crash", 1)
    assert last["message"].endswith("ValueError: bad weights") and last["at"]
    assert api.get(f"{DEPLOYMENTS}/{d}/health").data["healthy"] is False

    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:9001")
    back = get(api, d)
    assert (back["status"], back["restarts"], back["endpoint_url"]) == (
        "running",
        1,
        "http://n:9001",  # the port may change across a restart
    )
    assert back["status_message"] is None and back["last_exit"] == last

    node.say(**restarted(d, 2, cause="unhealthy", exit_code=None, message=None))
    second = get(api, d)
    assert (second["status"], second["restarts"]) == ("starting", 2)
    assert second["status_message"] == "restarted (2 of 3) after being unhealthy for 300 s"
    assert second["last_exit"]["cause"] == "unhealthy" and second["last_exit"]["message"] is None

    node.say(
        type="deployment_stopped", deployment_id=d, reason="crash", exit_code=1, message="gave up"
    )
    failed = get(api, d)
    assert (failed["status"], failed["failure_reason"], failed["restarts"]) == (
        "failed",
        "crash",
        2,
    )
    assert failed["last_exit"]["cause"] == "unhealthy"


def test_an_unhealthy_deployment_can_be_restarted(api, node):
    d = running_deployment(api, node)
    node.say(
        type="deployment_health_update", deployment_id=d, healthy=False, consecutive_failures=3
    )
    assert get(api, d)["status"] == "unhealthy"
    node.say(**restarted(d, 1, cause="unhealthy", exit_code=-15))
    assert (get(api, d)["status"], get(api, d)["restarts"]) == ("starting", 1)


def test_a_duplicate_or_overtaken_restart_report_changes_nothing(api, node):
    d = running_deployment(api, node)
    node.say(**restarted(d, 1))
    node.say(**restarted(d, 2, exit_code=2))
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:9000")
    for late in (restarted(d, 2, exit_code=2), restarted(d, 1)):
        node.say(**late)
        current = get(api, d)
        assert (current["status"], current["restarts"]) == ("running", 2)
        assert current["last_exit"]["exit_code"] == 2


def test_a_restart_before_the_first_ready_is_recorded_and_it_stays_starting(api, node):
    created = api.post(
        DEPLOYMENTS, {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["s"]}
    )
    d = created.data["id"]
    node.say(type="deployment_progress", deployment_id=d, status="starting")
    node.say(**restarted(d, 1, exit_code=3))
    current = get(api, d)
    assert (current["status"], current["restarts"]) == ("starting", 1)
    assert current["last_exit"]["exit_code"] == 3
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:9000")
    assert get(api, d)["status"] == "running"


def test_the_note_follows_the_restart_policy(api, node):
    always = running_deployment(
        api, node, name="always", deploy_config={"restart": "always", "unhealthy_timeout_s": 60}
    )
    node.say(**restarted(always, 7, exit_code=None))
    assert get(api, always)["status_message"] == "restarted (7) after a crash"
    node.say(**restarted(always, 8, cause="unhealthy", exit_code=None))
    assert get(api, always)["status_message"] == "restarted (8) after being unhealthy for 60 s"
    five = running_deployment(api, node, name="five", deploy_config={"max_restarts": 5})
    node.say(**restarted(five, 1, exit_code=137))
    assert get(api, five)["status_message"] == "restarted (1 of 5) after a crash, exit code 137"


def test_a_long_last_output_is_cut_to_its_first_line_and_end(api, node):
    d = running_deployment(api, node)
    output = "model crashed\n" + "".join(f"line {n}\n" for n in range(5000)) + "the last line"
    node.say(**restarted(d, 1, message=output))
    kept = get(api, d)["last_exit"]["message"]
    assert len(kept) <= LAST_EXIT_MESSAGE_MAX
    assert kept.startswith("model crashed\n") and kept.endswith("line 4999\nthe last line")


def test_a_restart_report_from_another_node_is_refused(api, app, node):
    d = running_deployment(api, node)
    other = connected_node(api, app, name="other-box", connection_id="conn-2")
    [reply] = handle(other, restarted(d, 1) | {"id": "r-1"})
    assert (reply.type, reply.code, reply.reply_to) == ("error", "not_your_deployment", "r-1")
    untouched = get(api, d)
    assert (untouched["status"], untouched["restarts"], untouched["last_exit"]) == (
        "running",
        0,
        None,
    )


def test_a_restart_report_after_a_stop_tells_the_node_to_stop_it(api, node):
    d = running_deployment(api, node)
    assert api.delete(f"{DEPLOYMENTS}/{d}").status_code == 202
    [reply] = handle(node, restarted(d, 1))
    assert (reply.type, reply.deployment_id) == ("stop_deployment", d)
    assert (get(api, d)["status"], get(api, d)["restarts"]) == ("stopping", 0)
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped", exit_code=0)
    [reply] = handle(node, restarted(d, 1))
    assert (reply.type, reply.deployment_id) == ("stop_deployment", d)
    assert (get(api, d)["status"], get(api, d)["restarts"]) == ("stopped", 0)


def test_prism_deploy_status_and_list_show_the_restarts(api, node, monkeypatch):
    from prism import cli, output

    d = running_deployment(api, node)
    node.say(**restarted(d, 2, exit_code=1, message="Traceback ...\nRuntimeError: [oom] cuda"))
    monkeypatch.setattr(cli, "api_client", lambda: _ApiThroughTestClient(api))
    monkeypatch.setattr(output.console, "width", 200)

    status = CliRunner().invoke(cli.main, ["deploy", "status", d])
    assert status.exit_code == 0, status.output

    def row(key):
        lines = [line.strip() for line in status.output.splitlines()]
        return next(line for line in lines if line.startswith(key + " "))

    assert row("restarts").split() == ["restarts", "2"]
    assert "crash, exit code 1 at" in row("last exit")
    assert "RuntimeError: [oom] cuda" in status.output  # the output, markup-escaped
    assert "on-failure, up to 3" in row("restart")
    assert "restarted (2 of 3) after a crash, exit code 1" in row("note")

    listed = CliRunner().invoke(cli.main, ["deploy", "list"])
    assert listed.exit_code == 0, listed.output
    header, row = (line for line in listed.output.splitlines() if "RESTARTS" in line or d in line)
    assert row.split()[header.split().index("RESTARTS")] == "2"


class _ApiThroughTestClient:
    """prism.client.ApiClient's calls answered by the functional test's API."""

    def __init__(self, api):
        self._api = api

    def get_deployment(self, deployment_id):
        return self._api.get(f"{DEPLOYMENTS}/{deployment_id}").data

    def list_deployments(self, statuses=None, limit=50, next_token=None):
        return self._api.get(f"{DEPLOYMENTS}?limit={limit}").data
