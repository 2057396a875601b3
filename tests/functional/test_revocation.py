"""Revoking an API key and deleting a user (`prism admin revoke-key`, `delete-user`) through the
real services on moto: what they revoke stops working at once, over REST (401 in our error
shape) and over the node WebSocket (a connect refused; a node already connected cut off, every
further message answered with an error and changing nothing)."""

import json

import pytest

from chalicelib.errors import Conflict, NotFound, ValidationFailed
from chalicelib.services import registry
from chalicelib.services.auth import Accounts
from chalicelib.store.connections import ConnectionRepository
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import ApiKeyItem, UserItem
from chalicelib.store.node_models import ConnectionItem, NodeItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.users import UserRepository, hash_key, key_id
from tests.functional.conftest import Api
from tests.functional.node_sim import NodeSim

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"


def accounts(closed: list | None = None) -> Accounts:
    """As `prism admin` builds it; `closed` records the connections it closes."""
    return Accounts(
        UserRepository(),
        NodeRepository(),
        DeploymentRepository(),
        stop=registry.deployment_service().stop,
        end_stopped=registry.ending().stopped,
        close_connection=None if closed is None else (lambda c: closed.append(c) or True),
    )


def assert_unauthorized(response):
    assert response.status_code == 401, response.data
    assert response.data["error"]["code"] == "unauthorized"


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def posted(monkeypatch):
    """What the control plane posts to each node connection."""

    class Recording:
        def __init__(self):
            self.messages: list[tuple[str, dict]] = []

        def post_to_connection(self, ConnectionId, Data):  # noqa: N803 - boto3's names
            self.messages.append((ConnectionId, json.loads(Data)))

    recording = Recording()
    for channel in (registry.placement()._channel, registry.node_requests()._channel):
        monkeypatch.setattr(channel, "_client_factory", lambda: recording)
    return recording.messages


# --- revoke-key ---------------------------------------------------------------------------


def test_a_revoked_key_is_refused_at_once_and_the_users_other_keys_keep_working(api, users):
    owner = users.owner_of_key(api.key)
    second = users.add_key(owner, "alice")
    assert api.get(DEPLOYMENTS).status_code == 200
    revoked = accounts().revoke_key(key_id(hash_key(api.key)))
    assert revoked.owner_id == owner
    assert_unauthorized(api.get(DEPLOYMENTS))
    assert_unauthorized(api.post(NODES, {"name": "box"}))
    assert Api(api.client, second.api_key).get(DEPLOYMENTS).status_code == 200


@pytest.mark.parametrize("by", ["key", "key_id", "prefix"])
def test_a_key_is_named_by_itself_its_id_or_its_first_characters(api, users, by):
    reference = {
        "key": api.key,
        "key_id": key_id(hash_key(api.key)),
        "prefix": api.key[:10],
    }[by]
    accounts().revoke_key(reference)
    assert_unauthorized(api.get(DEPLOYMENTS))
    with pytest.raises(NotFound):  # revoking again: it is gone
        accounts().revoke_key(reference)


def test_a_prefix_several_keys_share_is_refused_and_a_user_narrows_it(users):
    alice, bob = users.create_user_with_key("alice"), users.create_user_with_key("bob")
    for new in (alice, bob):  # both keys start alike (only 4 random characters are shown)
        item = ApiKeyItem.get(hash_key(new.api_key))
        item.update(actions=[ApiKeyItem.key_prefix.set("prism_AAAA")])
    with pytest.raises(Conflict) as ambiguous:
        accounts().revoke_key("prism_AAAA")
    assert alice.key_id in ambiguous.value.message and bob.key_id in ambiguous.value.message
    assert accounts().revoke_key("prism_AAAA", user_id=bob.user_id).owner_id == bob.user_id
    assert users.owner_of_key(bob.api_key) is None
    assert users.owner_of_key(alice.api_key) == alice.user_id


@pytest.mark.parametrize("reference", ["", "nope", "key_xyz", "key_0123", "usr_1", "prism_"])
def test_a_reference_that_names_no_key_is_refused(users, reference):
    with pytest.raises(ValidationFailed):
        accounts().revoke_key(reference)


def test_list_keys_shows_ids_and_prefixes_never_the_key(users):
    new = users.create_user_with_key("alice")
    users.add_key(new.user_id, "alice")
    listed = accounts().list_keys(new.user_id)
    assert len(listed) == 2 and new.key_id in {key_id(k.key_hash) for k in listed}
    assert new.api_key not in json.dumps([k.attribute_values for k in listed], default=str)


# --- delete-user --------------------------------------------------------------------------


def create(api, **body):
    request = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
    response = api.post(DEPLOYMENTS, request | body)
    assert response.status_code == 201, response.data
    return response.data["id"]


def test_delete_user_cuts_off_its_keys_nodes_and_connections_and_stops_its_deployments(
    api, other_api, users, app, posted
):
    owner = users.owner_of_key(api.key)
    created = api.post(NODES, {"name": "box"}).data
    node = NodeSim(app, created["token"], created["id"], connection_id="conn-alice")
    assert node.connect()["statusCode"] == 200
    node.hello()
    idle = api.post(NODES, {"name": "idle"}).data  # registered, never connected
    running = create(api)
    node.say(type="deployment_ready", deployment_id=running, endpoint_url="http://n:1")
    waiting = create(api, name="w", node_id=idle["id"])  # pinned to the offline node
    # Bob, untouched throughout.
    bobs_node = other_api.post(NODES, {"name": "bob-box"}).data
    bob = NodeSim(app, bobs_node["token"], bobs_node["id"], connection_id="conn-bob")
    assert bob.connect()["statusCode"] == 200
    bob.hello()
    bobs = create(other_api, name="b")
    bob.say(type="deployment_ready", deployment_id=bobs, endpoint_url="http://b:1")

    closed: list[str] = []
    report = accounts(closed).delete_user(owner)

    assert report.user_existed and len(report.keys_revoked) == 1
    assert set(report.nodes_removed) == {created["id"], idle["id"]}
    assert closed == ["conn-alice"] and report.connections_closed == ["conn-alice"]
    assert report.deployments_stopped == {running: "stopped", waiting: "stopped"}
    # REST: the key is gone.
    assert_unauthorized(api.get(DEPLOYMENTS))
    # WebSocket: neither token connects any more.
    assert node.connect()["statusCode"] == 401
    assert NodeSim(app, idle["token"], idle["id"], "c-idle").connect()["statusCode"] == 401
    # The node told to stop its model while it was still connected.
    assert ("conn-alice", "stop_deployment") in [(c, m["type"]) for c, m in posted]
    # The connected node is cut off: any further message is an error and changes nothing.
    handler = registry.node_message_handler()
    for message in (
        {"type": "heartbeat", "id": "h"},
        {"type": "node_hello", "id": "n", "node_id": created["id"]},
        {"type": "deployment_health_update", "id": "u", "deployment_id": running}
        | {"healthy": False, "consecutive_failures": 9},
        {"type": "deployment_progress", "id": "p", "deployment_id": running}
        | {"status": "pulling"},
    ):
        [reply] = handler.handle("conn-alice", json.dumps(message))
        assert (reply.type, reply.code) == ("error", "unknown_connection")
    with pytest.raises(NodeItem.DoesNotExist):  # no late write recreated it
        NodeItem.get(created["id"])
    with pytest.raises(ConnectionItem.DoesNotExist):
        ConnectionItem.get("conn-alice")
    ended = DeploymentRepository().get(running)
    assert (ended.status, ended.status_message) == ("stopped", "stopped: its owner was deleted")
    with pytest.raises(UserItem.DoesNotExist):
        UserItem.get(owner)
    # Bob's key, node and deployment are as they were.
    assert [n["id"] for n in other_api.get(NODES).data["items"]] == [bobs_node["id"]]
    assert other_api.get(f"{DEPLOYMENTS}/{bobs}").data["status"] == "running"
    assert NodeItem.get(bobs_node["id"]).connection_id == "conn-bob"
    # Repeating it finds nothing left.
    again = accounts([]).delete_user(owner)
    assert not again.found_anything


def test_delete_user_forgets_a_closed_connection_without_trying_to_close_it(api, users, app):
    """A connection whose socket closed stays recorded until the sweep has handled its
    silence: a deleted user's is forgotten with the rest, but there is nothing to close."""
    owner = users.owner_of_key(api.key)
    created = api.post(NODES, {"name": "box"}).data
    gone = NodeSim(app, created["token"], created["id"], connection_id="conn-gone")
    assert gone.connect()["statusCode"] == 200
    gone.disconnect()
    live = NodeSim(app, created["token"], created["id"], connection_id="conn-live")
    assert live.connect()["statusCode"] == 200
    closed: list[str] = []
    report = accounts(closed).delete_user(owner)
    assert closed == ["conn-live"] and report.connections_not_closed == []
    for connection_id in ("conn-gone", "conn-live"):
        with pytest.raises(ConnectionItem.DoesNotExist):
            ConnectionItem.get(connection_id)


def test_a_node_deleted_or_given_a_new_token_while_connecting_is_refused(api):
    created = api.post(NODES, {"name": "box"}).data
    nodes = NodeRepository()
    node = nodes.authenticate(created["token"])
    NodeItem(id=node.id).delete()  # its owner deleted meanwhile
    assert not nodes.mark_connected(node, "c1")
    assert ConnectionRepository().live("c1") is None
    with pytest.raises(NodeItem.DoesNotExist):  # not recreated by the online mark
        NodeItem.get(node.id)

    created = api.post(NODES, {"name": "box2"}).data
    node = nodes.authenticate(created["token"])
    nodes.new_token(NodeItem.get(node.id))
    assert not nodes.mark_connected(node, "c2")
    assert ConnectionRepository().live("c2") is None
    assert NodeItem.get(node.id).status == "offline"


@pytest.mark.parametrize(
    "token",
    [
        "prismnode_" + "n" * 5000 + ".secret",  # an id DynamoDB would refuse as a key
        "prismnode_node_0123456789abcdef\n.secret",
        "prismnode_.x",
        "x" * 300,
    ],
)
def test_a_malformed_node_token_is_refused_not_an_error(app, token):
    assert NodeSim(app, token, "node_x", "c-bad").connect()["statusCode"] == 401


def test_deleting_an_unknown_user_finds_nothing(users):
    report = accounts([]).delete_user("usr_0000000000000000")
    assert not report.found_anything
