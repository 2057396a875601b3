"""Endpoint keys and request metrics, as the control plane keeps them: the key returned once by
create and by rotation, only its hash stored and sent to the node (deploy_model, endpoint_keys,
again at the node's next hello), and the proxy's deployment_metrics on the detail and in
`prism deploy status`. The node is played over the real WebSocket handlers."""

import json
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner

from chalicelib.protocol import ENDPOINT_KEY_PREFIX, hash_endpoint_key
from chalicelib.services import registry
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.endpoints import replace_key_hashes
from prism.client import ApiClient, ApiError
from prism.dev.events import websocket_event
from tests.functional.node_sim import NodeSim

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"
WEIGHTS = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
IMAGE_ON_RUNPOD = {
    "name": "web",
    "image": "ghcr.io/acme/model-server:1.2",
    "target": "runpod",
    "gpu_type": "A100",
    "budget_max_usd": 5,
}


class RecordingManagementApi:
    """The WebSocket management API: what was posted, to which connection."""

    def __init__(self):
        self.posted: list[tuple[str, dict]] = []

    def post_to_connection(self, ConnectionId, Data):  # noqa: N803 - boto3's names
        self.posted.append((ConnectionId, json.loads(Data)))

    def of_type(self, kind: str, connection_id: str | None = None) -> list[dict]:
        return [
            message
            for connection, message in self.posted
            if message["type"] == kind and connection_id in (None, connection)
        ]


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def management(aws_backend, monkeypatch):
    """Every channel to the nodes (placement, API requests, replies to a node) recorded."""
    recording = RecordingManagementApi()
    for channel in (
        registry.placement()._channel,
        registry.node_requests()._channel,
        registry.node_channel(),
    ):
        monkeypatch.setattr(channel, "_client_factory", lambda: recording)
    return recording


def connected_node(api, app, name="box", connection_id="conn-1") -> NodeSim:
    created = api.post(NODES, {"name": name}).data
    sim = NodeSim(app, created["token"], created["id"], connection_id=connection_id)
    assert sim.connect()["statusCode"] == 200
    sim.hello()
    return sim


@pytest.fixture
def node(api, app, management):
    return connected_node(api, app)


def create(api, body=WEIGHTS, **headers) -> dict:
    response = api.post(DEPLOYMENTS, body, headers=headers or None)
    assert response.status_code == 201, response.data
    return response.data


def running(api, node, body=WEIGHTS) -> dict:
    created = create(api, body)
    node.say(type="deployment_ready", deployment_id=created["id"], endpoint_url="http://n:9000")
    assert get(api, created["id"])["status"] == "running"
    return created


def get(api, deployment_id) -> dict:
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data


def rotate(api, deployment_id):
    return api.post(f"{DEPLOYMENTS}/{deployment_id}/endpoint-keys")


def stored_hashes(deployment_id) -> list[str] | None:
    return DeploymentRepository().get(deployment_id).endpoint_key_hashes


def handle(node, message: dict) -> list:
    """What the control plane answers the node (NodeSim.say drops the replies)."""
    message.setdefault("id", "m")
    return registry.node_message_handler().handle(node.connection_id, json.dumps(message))


# --- keys at create ------------------------------------------------------------------------


def test_create_returns_the_key_once_and_only_its_hash_reaches_the_store_and_the_node(
    api, node, management
):
    created = create(api)
    key = created["endpoint_key"]
    assert key.startswith(ENDPOINT_KEY_PREFIX) and len(key) > len(ENDPOINT_KEY_PREFIX) + 40
    assert created["endpoint_auth"] == "key"
    assert stored_hashes(created["id"]) == [hash_endpoint_key(key)]
    stored = DeploymentRepository().get(created["id"]).attribute_values
    assert key not in json.dumps(stored, default=str)

    [deploy] = management.of_type("deploy_model")
    assert deploy["endpoint_key_hashes"] == [hash_endpoint_key(key)]
    assert deploy["deploy_config"]["auth"] == "key"

    detail, listed = get(api, created["id"]), api.get(DEPLOYMENTS).data
    for shown in (detail, listed):
        text = json.dumps(shown)
        assert key not in text and hash_endpoint_key(key) not in text
    assert "endpoint_key" not in detail and "endpoint_key" not in listed["items"][0]
    assert detail["endpoint_auth"] == "key"


def test_an_idempotent_replay_returns_the_same_deployment_without_the_key(api):
    first = create(api, **{"Idempotency-Key": "create-m-1"})
    replay = create(api, **{"Idempotency-Key": "create-m-1"})
    assert replay["id"] == first["id"]
    assert first["endpoint_key"] and replay["endpoint_key"] is None  # shown once
    assert stored_hashes(first["id"]) == [hash_endpoint_key(first["endpoint_key"])]


def test_a_public_deployment_has_no_key_and_cannot_be_rotated(api, node, management):
    created = create(api, WEIGHTS | {"deploy_config": {"auth": "public"}})
    assert (created["endpoint_key"], created["endpoint_auth"]) == (None, "public")
    assert stored_hashes(created["id"]) is None
    [deploy] = management.of_type("deploy_model")
    assert (deploy["deploy_config"]["auth"], deploy["endpoint_key_hashes"]) == ("public", [])

    refused = rotate(api, created["id"])
    assert refused.status_code == 409
    assert "public endpoint" in refused.data["error"]["message"]


def test_an_image_on_runpod_is_unprotected_and_has_no_key_to_rotate(api):
    created = create(api, IMAGE_ON_RUNPOD)
    assert (created["endpoint_key"], created["endpoint_auth"]) == (None, "none")
    assert get(api, created["id"])["endpoint_auth"] == "none"
    assert stored_hashes(created["id"]) is None
    refused = rotate(api, created["id"])
    assert refused.status_code == 409
    assert "not by PRISM's proxy" in refused.data["error"]["message"]


def test_an_image_on_a_node_goes_through_the_proxy_and_gets_a_key(api):
    created = create(api, {"name": "web", "image": "nginx:1.27", "gpu": False})
    assert created["endpoint_auth"] == "key" and created["endpoint_key"]


# --- rotation ------------------------------------------------------------------------------


def test_rotation_replaces_the_key_and_tells_the_node_at_once(api, node, management):
    created = running(api, node)
    rotated = rotate(api, created["id"])
    assert rotated.status_code == 201
    new_key = rotated.data["endpoint_key"]
    assert rotated.data["deployment_id"] == created["id"] and rotated.data["delivered"] is True
    assert new_key.startswith(ENDPOINT_KEY_PREFIX) and new_key != created["endpoint_key"]
    assert stored_hashes(created["id"]) == [hash_endpoint_key(new_key)]  # the old one dropped
    [keys] = management.of_type("endpoint_keys", node.connection_id)
    assert keys == keys | {
        "deployment_id": created["id"],
        "key_hashes": [hash_endpoint_key(new_key)],
    }
    assert new_key not in json.dumps(get(api, created["id"]))


def test_a_rotation_while_the_node_is_away_reaches_it_at_its_next_hello(api, app, node, management):
    created = running(api, node)
    app.handler_map["node_disconnect"](websocket_event("$disconnect", node.connection_id), None)
    rotated = rotate(api, created["id"]).data
    assert rotated["delivered"] is False
    assert management.of_type("endpoint_keys") == []

    assert node.connect()["statusCode"] == 200
    reported = {"deployment_id": created["id"], "status": "running", "endpoint_url": "http://n:1"}
    node.hello(running=[reported])
    [keys] = management.of_type("endpoint_keys", node.connection_id)
    assert keys["key_hashes"] == [hash_endpoint_key(rotated["endpoint_key"])]
    assert get(api, created["id"])["status"] == "running"


def test_a_deployment_not_placed_yet_gets_the_rotated_key_with_its_deploy_model(
    api, app, management
):
    created = create(api)  # no node online: it waits
    rotated = rotate(api, created["id"]).data
    assert rotated["delivered"] is False
    connected_node(api, app)
    [deploy] = management.of_type("deploy_model")
    assert deploy["endpoint_key_hashes"] == [hash_endpoint_key(rotated["endpoint_key"])]


def test_a_concurrent_rotation_loses_instead_of_handing_out_a_dead_key(api, node):
    created = running(api, node)
    read_before = DeploymentRepository().get(created["id"])
    assert rotate(api, created["id"]).status_code == 201
    assert replace_key_hashes(read_before, [hash_endpoint_key("prismep_other")]) is False
    assert stored_hashes(created["id"]) != [hash_endpoint_key("prismep_other")]


@pytest.mark.parametrize("deployment_id", ["dep_0123456789abcdef", "dep_nope", "x" * 300])
def test_rotating_an_unknown_deployment_is_a_404(api, deployment_id):
    response = rotate(api, deployment_id)
    assert response.status_code == 404
    assert response.data["error"]["code"] == "not_found"


def test_rotating_another_owners_deployment_is_a_404(api, other_api):
    created = create(api)
    assert rotate(other_api, created["id"]).status_code == 404
    assert stored_hashes(created["id"]) == [hash_endpoint_key(created["endpoint_key"])]


def test_rotation_needs_a_valid_api_key(api):
    created = create(api)
    response = api.post(f"{DEPLOYMENTS}/{created['id']}/endpoint-keys", key=None)
    assert response.status_code == 401


def test_a_stopped_deployment_cannot_be_rotated(api):
    created = create(api)  # never placed: the stop is immediate
    assert api.delete(f"{DEPLOYMENTS}/{created['id']}").data["status"] == "stopped"
    refused = rotate(api, created["id"])
    assert refused.status_code == 409 and "stopped" in refused.data["error"]["message"]


# --- request metrics -----------------------------------------------------------------------


def metrics(deployment_id, requests_total, **fields) -> dict:
    return {
        "type": "deployment_metrics",
        "deployment_id": deployment_id,
        "requests_total": requests_total,
        "window_s": 60,
    } | fields


def test_a_metrics_report_shows_on_the_detail(api, node):
    created = running(api, node)
    assert get(api, created["id"])["request_metrics"] is None
    report = {
        "status_2xx": 95,
        "status_4xx": 4,
        "status_5xx": 1,
        "unauthorized": 3,
        "in_flight": 2,
        "latency_p50_ms": 12.5,
        "latency_p95_ms": 40.0,
        "latency_p99_ms": 91.25,
    }
    assert handle(node, metrics(created["id"], 100, **report)) == []
    shown = get(api, created["id"])["request_metrics"]
    assert shown == shown | report | {"requests_total": 100, "status_3xx": 0, "window_s": 60}
    assert shown["reported_at"]


def test_a_late_report_with_fewer_requests_is_ignored(api, node):
    created = running(api, node)
    node.say(**metrics(created["id"], 100, status_2xx=100, in_flight=5))
    node.say(**metrics(created["id"], 40, status_2xx=40, in_flight=0))  # overtaken
    assert get(api, created["id"])["request_metrics"]["requests_total"] == 100
    node.say(**metrics(created["id"], 100, status_2xx=100, in_flight=0))  # idle since
    shown = get(api, created["id"])["request_metrics"]
    assert (shown["requests_total"], shown["in_flight"]) == (100, 0)


def test_counts_from_a_restarted_agent_replace_the_old_ones(api, node):
    """A restarted agent's proxy counts from zero again: its later counting_since says so, so
    its reports are not taken for late ones; a late report of the old run still is."""
    created = running(api, node)
    node.say(**metrics(created["id"], 500, status_2xx=500) | {"counting_since": 1000.0})
    node.say(**metrics(created["id"], 7, status_2xx=7) | {"counting_since": 2000.0})
    assert get(api, created["id"])["request_metrics"]["requests_total"] == 7
    node.say(**metrics(created["id"], 600, status_2xx=600) | {"counting_since": 1000.0})
    assert get(api, created["id"])["request_metrics"]["requests_total"] == 7


def test_another_nodes_metrics_are_refused(api, app, node):
    created = running(api, node)
    other = connected_node(api, app, name="other", connection_id="conn-2")
    [reply] = handle(other, metrics(created["id"], 7) | {"id": "r-1"})
    assert (reply.type, reply.code, reply.reply_to) == ("error", "not_your_deployment", "r-1")
    assert get(api, created["id"])["request_metrics"] is None


def test_metrics_after_the_deployment_ended_are_ignored(api, node):
    created = running(api, node)
    node.say(**metrics(created["id"], 10))
    api.delete(f"{DEPLOYMENTS}/{created['id']}")
    node.say(type="deployment_stopped", deployment_id=created["id"], reason="stopped")
    assert handle(node, metrics(created["id"], 50)) == []  # no stop_deployment needed
    ended = get(api, created["id"])
    assert (ended["status"], ended["request_metrics"]["requests_total"]) == ("stopped", 10)


# --- the CLI -------------------------------------------------------------------------------


class ApiClientThroughTestClient(ApiClient):
    """prism.client.ApiClient, its requests answered by the functional test's API."""

    def __init__(self, api):
        super().__init__("http://prism.test", api.key)
        self._api = api

    def _request(self, method, path, **kwargs):
        if kwargs.get("params"):
            path += "?" + urlencode(kwargs["params"])
        response = self._api.request(
            method, path, body=kwargs.get("json"), headers=kwargs.get("headers") or None
        )
        if response.status_code >= 400:
            error = response.data["error"]
            raise ApiError(response.status_code, error["code"], error["message"])
        return response.status_code, response.data


@pytest.fixture
def cli(api, monkeypatch):
    from prism import cli as cli_module
    from prism import output

    monkeypatch.setattr(cli_module, "api_client", lambda: ApiClientThroughTestClient(api))
    monkeypatch.setattr(output.console, "width", 200)

    def run(*args):
        return CliRunner().invoke(cli_module.main, list(args))

    return run


def test_prism_deploy_create_prints_the_key_once(cli, api):
    result = cli("deploy", "create", "--name", "m", "--weights", "/srv/m", "--gpu", "none")
    assert result.exit_code == 0, result.output
    [deployment] = api.get(DEPLOYMENTS).data["items"]
    [key] = [w for w in result.stdout.split() if w.startswith(ENDPOINT_KEY_PREFIX)]
    assert stored_hashes(deployment["id"]) == [hash_endpoint_key(key)]
    assert "shown once" in result.stdout

    as_json = cli("deploy", "create", "--name", "j", "--weights", "/srv/m", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["endpoint_key"].startswith(ENDPOINT_KEY_PREFIX)


def test_prism_deploy_create_warns_that_an_image_on_runpod_is_unprotected(cli):
    args = ["--image", "ghcr.io/acme/server:1", "--target", "runpod", "--gpu", "A100"]
    result = cli("deploy", "create", "--name", "web", *args, "--budget", "5")
    assert result.exit_code == 0, result.output
    assert (
        "the endpoint of this image deployment on runpod is not protected: anyone with the URL "
        "can use it; deploy weights + command to have the agent's proxy check a key"
    ) in " ".join(result.stderr.split())
    assert ENDPOINT_KEY_PREFIX not in result.output


def test_prism_deploy_create_public_sends_no_key(cli, api):
    result = cli("deploy", "create", "--name", "p", "--weights", "/srv/m", "--public")
    assert result.exit_code == 0, result.output
    assert ENDPOINT_KEY_PREFIX not in result.output
    [deployment] = api.get(DEPLOYMENTS).data["items"]
    assert deployment["endpoint_auth"] == "public"


def test_prism_deploy_rotate_key_prints_the_new_key(cli, api, node, management):
    created = running(api, node)
    result = cli("deploy", "rotate-key", created["id"])
    assert result.exit_code == 0, result.output
    [key] = [w for w in result.stdout.split() if w.startswith(ENDPOINT_KEY_PREFIX)]
    assert stored_hashes(created["id"]) == [hash_endpoint_key(key)]
    assert "the old key no longer works" in result.stdout

    public = create(api, WEIGHTS | {"name": "p", "deploy_config": {"auth": "public"}})
    refused = cli("deploy", "rotate-key", public["id"])
    assert refused.exit_code == 1 and "error (409)" in refused.stderr
    unknown = cli("deploy", "rotate-key", "dep_0123456789abcdef")
    assert unknown.exit_code == 1 and "error (404)" in unknown.stderr


def test_prism_deploy_status_shows_the_request_metrics(cli, api, node):
    created = running(api, node)
    report = {"status_2xx": 196, "status_5xx": 4, "in_flight": 3, "latency_p50_ms": 12.0}
    node.say(**metrics(created["id"], 200, latency_p95_ms=40.5, latency_p99_ms=90.0, **report))
    result = cli("deploy", "status", created["id"])
    assert result.exit_code == 0, result.output

    def row(key):
        lines = [line.strip() for line in result.stdout.splitlines()]
        return next(line for line in lines if line.startswith(key + " "))

    assert "200 (2xx 196, 3xx 0, 4xx 0, 5xx 4; 0 without a valid key)" in row("requests")
    assert row("error rate").endswith("2.0% (5xx)")
    assert "p50 12.0 ms · p95 40.5 ms · p99 90.0 ms (over 60 s)" in row("latency")
    assert row("in flight").split()[-1] == "3"
    assert "endpoint key required" in row("endpoint auth")
