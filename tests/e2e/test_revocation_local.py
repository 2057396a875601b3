"""Key revocation and user deletion on the real local platform, through the real `prism admin`
CLI (operator identity from the CLI config, IAM enforced), the REST API behind the local API
Gateway and a node on the local WebSocket gateway. Also what that gateway answers itself."""

import json
import time

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from chalicelib.protocol import PROTOCOL_VERSION

DEPLOYMENTS = "/api/v1/compute/deployments"


def call(platform, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, platform.api_url + path, headers=headers, timeout=30, **kwargs)


def new_user(platform, name):
    result = platform.cli("admin", "create-key", "--name", name, "--json", check=True)
    return json.loads(result.stdout)


def assert_unauthorized(response):
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


def node_socket(platform, token):
    return connect(
        platform.ws_url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30
    )


def refused_status(platform, token) -> int | None:
    try:
        with node_socket(platform, token):
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


def receive_until(ws, wanted_type, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        if message["type"] == wanted_type:
            return message
    raise AssertionError(f"no {wanted_type} within {timeout} s")


def test_a_revoked_key_is_refused_at_once(platform):
    bob = new_user(platform, "bob")
    assert call(platform, "GET", DEPLOYMENTS, bob["api_key"]).status_code == 200
    listed = platform.cli("admin", "list-keys", "--user", bob["user_id"], "--json", check=True)
    assert [k["key_id"] for k in json.loads(listed.stdout)["keys"]] == [bob["key_id"]]

    revoked = platform.cli("admin", "revoke-key", bob["key_id"], check=True)
    assert bob["key_id"] in revoked.stdout

    assert_unauthorized(call(platform, "GET", DEPLOYMENTS, bob["api_key"]))
    cli = platform.cli("deploy", "list", key=bob["api_key"])
    assert cli.returncode == 1 and "401" in cli.stderr
    again = platform.cli("admin", "revoke-key", bob["key_id"])
    assert again.returncode == 1 and "no key" in again.stderr
    assert call(platform, "GET", DEPLOYMENTS, platform.api_key).status_code == 200  # others not


def test_delete_user_revokes_keys_and_node_tokens_and_cuts_off_connected_nodes(platform):
    carol = new_user(platform, "carol")
    box = platform.register_node("carol-box", key=carol["api_key"])
    idle = platform.register_node("carol-idle", key=carol["api_key"])
    with node_socket(platform, box["token"]) as ws:
        hello = {
            "type": "node_hello",
            "id": "hello-1",
            "node_id": box["id"],
            "agent_version": "test",
            "protocol_version": PROTOCOL_VERSION,
            "gpus": [],
            "running": [],
        }
        ws.send(json.dumps(hello))
        body = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
        created = call(platform, "POST", DEPLOYMENTS, carol["api_key"], json=body)
        assert created.status_code == 201, created.text
        deployment_id = created.json()["id"]
        deploy = receive_until(ws, "deploy_model")
        assert deploy["deployment_id"] == deployment_id
        ready = {
            "type": "deployment_ready",
            "id": "ready-1",
            "deployment_id": deployment_id,
            "endpoint_url": "http://127.0.0.1:9/",
        }
        ws.send(json.dumps(ready))
        deadline = time.monotonic() + 30
        while (
            call(platform, "GET", f"{DEPLOYMENTS}/{deployment_id}", carol["api_key"]).json()[
                "status"
            ]
            != "running"
        ):
            assert time.monotonic() < deadline, "never running"
            time.sleep(0.3)

        result = platform.cli("admin", "delete-user", carol["user_id"], "--yes", "--json")
        assert result.returncode == 0, result.stderr + result.stdout
        summary = json.loads(result.stdout)
        assert sorted(summary["nodes_removed"]) == sorted([box["id"], idle["id"]])
        assert len(summary["connections_closed"]) == 1 and summary["keys_revoked"]
        assert summary["deployments_stopped"] == {deployment_id: "stopped"}

        # The connected node heard the stop, then the gateway closed its connection.
        assert receive_until(ws, "stop_deployment")["deployment_id"] == deployment_id
        with pytest.raises(ConnectionClosed):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                ws.recv(timeout=deadline - time.monotonic())
            raise AssertionError("the node's connection was not closed")

    # REST: the key is refused.
    assert_unauthorized(call(platform, "GET", DEPLOYMENTS, carol["api_key"]))
    # WebSocket: neither node token connects any more.
    assert refused_status(platform, box["token"]) == 401
    assert refused_status(platform, idle["token"]) == 401
    # The deployment is over, on record; repeating the command finds nothing.
    operator = platform.aws("dynamodb", "operator")
    item = operator.get_item(
        TableName="prism-dev-deployments", Key={"id": {"S": deployment_id}}, ConsistentRead=True
    )["Item"]
    assert item["status"]["S"] == "stopped"
    assert "Item" not in operator.get_item(
        TableName="prism-dev-nodes", Key={"id": {"S": box["id"]}}, ConsistentRead=True
    )
    again = platform.cli("admin", "delete-user", carol["user_id"], "--yes")
    assert again.returncode == 1 and "no user" in again.stderr
    assert call(platform, "GET", DEPLOYMENTS, platform.api_key).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", DEPLOYMENTS + "/dep_0123456789abcdef/nope"),
        ("PUT", DEPLOYMENTS),
        ("TRACE", DEPLOYMENTS),
        ("OPTIONS", DEPLOYMENTS),
    ],
)
def test_the_local_api_gateway_answers_unknown_routes_in_our_error_shape(platform, method, path):
    for key in (None, platform.api_key):
        response = call(platform, method, path, key)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"


def test_head_and_hostile_bodies_through_the_local_api_gateway(platform):
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {platform.api_key}"
        head = session.head(platform.api_url + DEPLOYMENTS, timeout=30)
        assert head.status_code == 404 and head.content == b""
        assert session.get(platform.api_url + DEPLOYMENTS, timeout=30).status_code == 200
        deep = "[" * 10_000 + "]" * 10_000
        answer = session.post(
            platform.api_url + DEPLOYMENTS,
            data=deep,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "validation_error"
        bad = {"name": "m\n", "weights_source": "/srv/m", "gpu": "yes"}
        fields = session.post(platform.api_url + DEPLOYMENTS, json=bad, timeout=30).json()
        assert {"name", "gpu"} <= set(fields["error"]["fields"])
