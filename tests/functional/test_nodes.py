"""Nodes through the real handlers on moto: registration, the WebSocket routes with API
Gateway-shaped events, message handling against the lifecycle, and the minute sweep."""

import json
from datetime import timedelta

import pytest

from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeploymentItem
from chalicelib.store.node_models import NodeItem
from prism.dev.events import websocket_event
from tests.functional.node_sim import NodeSim, age_node

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def node(api, app):
    created = api.post(NODES, {"name": "gpu-box"})
    assert created.status_code == 201
    sim = NodeSim(app, created.data["token"], created.data["id"])
    assert sim.connect()["statusCode"] == 200
    sim.hello()
    return sim


def create(api, **body):
    response = api.post(
        DEPLOYMENTS,
        {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]} | body,
    )
    assert response.status_code == 201, response.data
    return response.data


def get(api, deployment_id):
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data


def test_register_shows_the_token_once_and_stores_only_its_hash(api):
    created = api.post(NODES, {"name": "box-1"}).data
    assert created["token"].startswith("prismnode_" + created["id"])
    listed = api.get(NODES).data["items"]
    assert [n["id"] for n in listed] == [created["id"]] and "token" not in listed[0]
    assert created["token"] not in json.dumps(
        NodeItem.get(created["id"]).attribute_values, default=str
    )


def test_a_wrong_or_missing_token_is_refused_at_connect(node, app):
    assert node.connect(token="prismnode_node_0000000000000000.nope")["statusCode"] == 401
    bare = app.handler_map["node_connect"](websocket_event("$connect", "c9"), None)
    assert bare["statusCode"] == 401


def test_a_deployment_waits_for_a_node_then_is_placed_when_one_says_hello(api, app):
    waiting = create(api)
    assert waiting["status"] == "provisioning" and waiting["node_id"] is None
    assert "prism node up" in waiting["status_message"]
    created = api.post(NODES, {"name": "late"}).data
    sim = NodeSim(app, created["token"], created["id"])
    sim.connect()
    sim.hello()
    assert get(api, waiting["id"])["node_id"] == created["id"]


def test_gpu_deployments_only_go_to_nodes_with_a_matching_free_gpu(api, node):
    node.say(
        type="node_hello",
        node_id=node.node_id,
        gpus=[{"index": 0, "name": "NVIDIA A100-SXM4-80GB"}],
    )
    a100 = create(api, name="a", gpu=True, gpu_type="A100")
    h100 = create(api, name="h", gpu=True, gpu_type="H100")
    second = create(api, name="b", gpu=True, gpu_type="A100")
    assert get(api, a100["id"])["node_id"] == node.node_id
    assert get(api, h100["id"])["node_id"] is None
    assert get(api, second["id"])["node_id"] is None  # its only A100 is taken
    assert "A100" in get(api, second["id"])["status_message"]


def test_pull_progress_and_the_resolved_revision_show_on_the_deployment(api, node):
    d = create(api)["id"]
    for done in (10, 60, 100):
        node.say(
            type="deployment_progress",
            deployment_id=d,
            status="pulling",
            bytes_done=done,
            bytes_total=100,
        )
        pulling = get(api, d)
        assert (pulling["status"], pulling["bytes_done"], pulling["bytes_total"]) == (
            "pulling",
            done,
            100,
        )
    node.say(
        type="deployment_progress", deployment_id=d, status="starting", weights_revision="a" * 40
    )
    assert get(api, d)["weights_revision"] == "a" * 40


def test_messages_walk_the_lifecycle(api, node):
    d = create(api)["id"]
    node.say(
        type="deployment_progress",
        deployment_id=d,
        status="pulling",
        bytes_done=10,
        bytes_total=100,
    )
    assert (get(api, d)["status"], get(api, d)["bytes_done"]) == ("pulling", 10)
    node.say(type="deployment_progress", deployment_id=d, status="starting")
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://10.0.0.5:9000")
    ready = get(api, d)
    assert (ready["status"], ready["endpoint_url"]) == ("running", "http://10.0.0.5:9000")
    for failures in (1, 2):
        node.say(
            type="deployment_health_update",
            deployment_id=d,
            healthy=False,
            consecutive_failures=failures,
        )
        assert get(api, d)["status"] == "running"
    node.say(
        type="deployment_health_update", deployment_id=d, healthy=False, consecutive_failures=3
    )
    assert get(api, d)["status"] == "unhealthy"
    node.say(type="deployment_health_update", deployment_id=d, healthy=True, consecutive_failures=0)
    assert get(api, d)["status"] == "running"
    node.say(
        type="deployment_stopped", deployment_id=d, reason="crash", exit_code=137, message="killed"
    )
    failed = get(api, d)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "crash")
    assert "exit code 137" in failed["failure_message"]
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://late")  # too late
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped")  # duplicate
    assert get(api, d)["status"] == "failed" and get(api, d)["endpoint_url"] != "http://late"


def test_stop_waits_for_the_node_and_its_confirmation_ends_it(api, node):
    d = create(api)["id"]
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:1")
    assert api.delete(f"{DEPLOYMENTS}/{d}").status_code == 202
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped", exit_code=0)
    assert get(api, d)["status"] == "stopped"


def test_hello_reconciles_both_ways(api, node):
    kept = create(api, name="kept")["id"]
    vanished = create(api, name="vanished")["id"]
    stopped = create(api, name="stopped")["id"]
    for d in (kept, vanished, stopped):
        node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:1")
    api.delete(f"{DEPLOYMENTS}/{stopped}")
    node.hello(
        running=[
            {"deployment_id": kept, "status": "running", "endpoint_url": "http://n:1"},
            {"deployment_id": stopped, "status": "running"},
        ]
    )
    assert get(api, kept)["status"] == "running"
    lost = get(api, vanished)
    assert (lost["status"], lost["failure_reason"]) == ("failed", "node_lost")
    assert get(api, stopped)["status"] == "stopping"  # the node was told to stop it


def test_a_hello_reporting_a_deployment_on_its_way_up_counts_as_the_nodes_answer(api, node):
    """Its progress reports were lost (say, the agent was killed before they went out): the
    hello that reports it pulling is its answer, so it is not sent again or given up on."""
    pulling = create(api, name="resumed")["id"]
    assert get(api, pulling)["status"] == "provisioning"
    node.hello(running=[{"deployment_id": pulling, "status": "pulling"}])
    assert get(api, pulling)["status"] == "pulling"


def sweep(client):
    client.lambda_.invoke(
        "sweep_nodes",
        client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        ),
    )


def test_a_silent_node_makes_its_deployments_unhealthy_then_lost(api, node, client):
    d = create(api)["id"]
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:1")
    age_node(node.node_id, 90)  # past the 60 s node timeout
    sweep(client)
    assert get(api, d)["status"] == "unhealthy"
    assert api.get(NODES).data["items"][0]["status"] == "offline"
    age_node(node.node_id, 400)  # past the 300 s lost timeout
    sweep(client)
    lost = get(api, d)
    assert (lost["status"], lost["failure_reason"]) == ("failed", "node_lost")


def test_a_deployment_nobody_can_place_fails_with_no_node(api, client):
    d = create(api)["id"]
    item = DeploymentRepository().get(d)
    item.update(actions=[DeploymentItem.created_at.set(utcnow() - timedelta(minutes=11))])
    sweep(client)
    failed = get(api, d)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "no_node")


def test_pinning_an_unknown_node_is_a_400(api):
    response = api.post(
        DEPLOYMENTS, {"name": "m", "image": "nginx", "node_id": "node_0123456789abcdef"}
    )
    assert response.status_code == 400 and "node_id" in response.data["error"]["fields"]


def test_a_stop_the_node_decided_itself_ends_stopped(api, node):
    d = create(api)["id"]
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:1")
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped", exit_code=0)
    assert get(api, d)["status"] == "stopped"


def test_an_unreachable_management_api_leaves_the_deployment_waiting_not_a_500(api, node):
    from chalicelib.services import registry

    channel = registry.placement()._channel
    broken = channel._client_factory
    channel._client_factory = lambda: _Unreachable()
    try:
        response = api.post(
            DEPLOYMENTS,
            {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]},
        )
    finally:
        channel._client_factory = broken
    assert response.status_code == 201
    assert response.data["status"] == "provisioning" and response.data["node_id"] is None


class _Unreachable:
    def post_to_connection(self, **_):
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="https://nowhere.invalid")


def test_reports_about_a_stopping_or_finished_deployment_tell_the_node_to_stop_it(api, node):
    from chalicelib.services import registry

    d = create(api)["id"]
    node.say(type="deployment_ready", deployment_id=d, endpoint_url="http://n:1")
    api.delete(f"{DEPLOYMENTS}/{d}")
    handler = registry.node_message_handler()
    late = json.dumps(
        {
            "type": "deployment_health_update",
            "id": "h",
            "deployment_id": d,
            "healthy": True,
            "consecutive_failures": 0,
        }
    )
    [reply] = handler.handle(node.connection_id, late)
    assert (reply.type, reply.deployment_id) == ("stop_deployment", d)
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped")
    handler.handle(node.connection_id, late)
    stopped = get(api, d)
    assert stopped["status"] == "stopped"
    assert api.get(f"{DEPLOYMENTS}/{d}/health").data["healthy"] is None  # not rewritten


def test_an_agent_too_old_for_the_protocol_is_told_to_upgrade(api, node):
    from chalicelib.protocol import MIN_PROTOCOL_VERSION
    from chalicelib.services import registry

    hello = {
        "type": "node_hello",
        "id": "h-old",
        "node_id": node.node_id,
        "protocol_version": MIN_PROTOCOL_VERSION - 1,
    }
    replies = registry.node_message_handler().handle(node.connection_id, json.dumps(hello))
    assert [(r.code, r.reply_to) for r in replies] == [("protocol_too_old", "h-old")]
    assert "upgrade" in replies[0].message
