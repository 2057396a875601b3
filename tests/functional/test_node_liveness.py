"""Node liveness on the connection item, through the real handlers on moto: a heartbeat writes
only its connection (1.5 write units on average); the sweep reads the connections' liveness
index, marks a silent node offline (its next heartbeat brings it back, and a heartbeat racing
the sweep wins), fails a node whose socket closed once it is lost, and leaves alone a node that
reconnected; a node item from before (filed in the nodes table's by-last-seen index) is still
swept."""

import math
from datetime import datetime, timedelta
from decimal import Decimal

import botocore.client
import pytest

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.store.connections import CLOSED_TTL_SECONDS, ConnectionRepository, minute_of
from chalicelib.store.model_base import utcnow
from chalicelib.store.node_models import ConnectionItem, NodeItem
from tests.functional.node_sim import NodeSim, age_node

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
EIGHT_GPUS = [
    {
        "index": i,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd",
    }
    | {"memory_total_mb": 81559}
    for i in range(8)
]


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def calls(monkeypatch):
    """Every AWS call the app makes from here on: (operation, tables)."""
    made: list[tuple[str, list[str]]] = []
    real = botocore.client.BaseClient._make_api_call

    def recording(self, operation, params):
        tables = [params["TableName"]] if "TableName" in params else []
        tables += sorted(params.get("RequestItems", {}))
        for entry in params.get("TransactItems", []):
            tables += [action["TableName"] for action in entry.values()]
        made.append((operation, tables))
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return made


def connected(api, app, name="box", connection_id="conn-1", gpus=()) -> NodeSim:
    created = api.post(NODES, {"name": name}).data
    sim = NodeSim(app, created["token"], created["id"], connection_id=connection_id)
    assert sim.connect()["statusCode"] == 200
    sim.say(type="node_hello", node_id=sim.node_id, gpus=list(gpus), running=[])
    return sim


def running(api, sim) -> str:
    body = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
    created = api.post(DEPLOYMENTS, body)
    assert created.data["node_id"] == sim.node_id, created.data
    deployment_id = created.data["id"]
    sim.say(type="deployment_ready", deployment_id=deployment_id, endpoint_url="http://n:1")
    assert status(api, deployment_id) == "running"
    return deployment_id


def status(api, deployment_id) -> str:
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data["status"]


def raw(table: str, key: dict) -> dict:
    return aws.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]


def node_raw(node_id: str) -> dict:
    return raw(settings.nodes_table, {"id": {"S": node_id}})


def sweep():
    registry.sweeper().sweep()


# --- what a heartbeat writes ----------------------------------------------------------------


def test_a_heartbeat_writes_only_its_connection_item(api, app, calls):
    sim = connected(api, app, gpus=EIGHT_GPUS)
    running(api, sim)
    node_before = node_raw(sim.node_id)
    seen_before = ConnectionItem.get(sim.connection_id).last_seen_at
    calls.clear()
    sim.say(type="heartbeat")
    assert [c for c in calls if c[0] in WRITES] == [("UpdateItem", [settings.connections_table])]
    assert node_raw(sim.node_id) == node_before  # the 1.3 KB node item is not rewritten
    assert ConnectionItem.get(sim.connection_id).last_seen_at > seen_before


def _size(value: dict) -> int:
    """DynamoDB's size of an attribute value (developer guide, "Item sizes")."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        digits = Decimal(inner).normalize().as_tuple().digits
        return math.ceil(len(digits) / 2) + 1
    if kind in ("BOOL", "NULL"):
        return 1
    raise AssertionError(f"unexpected type {kind}")


def item_size(item: dict) -> int:
    return sum(len(name.encode()) + _size(value) for name, value in item.items())


def liveness_entry(item: dict) -> dict:
    index = ConnectionItem.liveness.Meta
    names = ["connection_id", "fleet", "seen_minute", *index.projection.non_key_attributes]
    return {name: item[name] for name in names if name in item}


def test_a_heartbeat_costs_one_write_unit_and_moves_its_index_entry_once_a_minute(api, app):
    """One unit for the connection item (under 1 KB). Its liveness index entry is keyed by the
    minute of the last heartbeat and does not hold the exact time, so a heartbeat within the
    same minute writes no index entry, and the first of a new minute moves it (a delete and a
    put of ~110 bytes): with heartbeats every 15 s, 1 + 2/4 = 1.5 write units on average."""
    sim = connected(api, app, connection_id="L0SM9cOFvHcCIhw=")  # API Gateway's form
    key = {"connection_id": {"S": sim.connection_id}}
    before = raw(settings.connections_table, key)
    sim.say(type="heartbeat")
    item = raw(settings.connections_table, key)
    assert item["last_seen_at"] != before["last_seen_at"]
    assert math.ceil(item_size(item) / 1024) == 1
    if item["seen_minute"] == before["seen_minute"]:  # not across a minute's end
        assert liveness_entry(item) == liveness_entry(before)  # no index write
    assert math.ceil(item_size(liveness_entry(item)) / 1024) == 1

    ConnectionItem(connection_id=sim.connection_id).update(  # as if heard a minute ago
        actions=[ConnectionItem.seen_minute.set("2026-01-01T00:00")]
    )
    sim.say(type="heartbeat")
    moved = raw(settings.connections_table, key)
    assert moved["seen_minute"]["S"] == moved["last_seen_at"]["S"][:16]


# --- the sweep --------------------------------------------------------------------------------


def test_a_silent_node_goes_offline_and_its_next_heartbeat_brings_it_back(api, app):
    sim = connected(api, app)
    d = running(api, sim)
    age_node(sim.node_id, 90)  # past the 60 s node timeout
    sweep()
    assert NodeItem.get(sim.node_id).status == "offline"
    assert status(api, d) == "unhealthy"
    assert ConnectionItem.get(sim.connection_id).marked_offline
    sim.say(type="heartbeat")  # the socket was alive after all
    node = NodeItem.get(sim.node_id)
    assert (node.status, node.connection_id) == ("online", sim.connection_id)
    assert ConnectionItem.get(sim.connection_id).marked_offline is None
    sim.say(type="deployment_health_update", deployment_id=d, healthy=True, consecutive_failures=0)
    assert status(api, d) == "running"


def test_a_heartbeat_landing_between_the_sweeps_read_and_its_write_wins(api, app, monkeypatch):
    sim = connected(api, app)
    d = running(api, sim)
    age_node(sim.node_id, 90)
    read = ConnectionRepository.silent_since

    def read_then_heartbeat(self, cutoff):
        found = list(read(self, cutoff))
        assert [c.connection_id for c in found] == [sim.connection_id]
        sim.say(type="heartbeat")
        yield from found

    monkeypatch.setattr(ConnectionRepository, "silent_since", read_then_heartbeat)
    sweep()
    node = NodeItem.get(sim.node_id)
    assert (node.status, node.connection_id) == ("online", sim.connection_id)
    assert status(api, d) == "running"
    assert ConnectionItem.get(sim.connection_id).marked_offline is None


def test_a_node_that_disconnected_is_failed_node_lost_once_lost(api, app):
    sim = connected(api, app)
    d = running(api, sim)
    sim.disconnect()
    assert NodeItem.get(sim.node_id).status == "offline"
    closed = ConnectionItem.get(sim.connection_id)  # kept: it carries the silence
    assert closed.closed and closed.expires_at >= utcnow().timestamp() + CLOSED_TTL_SECONDS - 60
    [reply] = registry.node_message_handler().handle(sim.connection_id, '{"type": "heartbeat"}')
    assert reply.code == "unknown_connection"  # a closed connection speaks no more
    assert ConnectionItem.get(sim.connection_id).last_seen_at == closed.last_seen_at
    sweep()
    assert status(api, d) == "running"  # within the node timeout
    age_node(sim.node_id, 90)
    sweep()
    assert status(api, d) == "unhealthy"
    age_node(sim.node_id, 400)  # past the 300 s lost timeout
    sweep()
    lost = api.get(f"{DEPLOYMENTS}/{d}").data
    assert (lost["status"], lost["failure_reason"]) == ("failed", "node_lost")
    with pytest.raises(ConnectionItem.DoesNotExist):  # handled: forgotten
        ConnectionItem.get(sim.connection_id)


def test_a_node_that_reconnected_is_not_affected_by_its_old_connections_silence(api, app):
    old = connected(api, app, connection_id="conn-old")
    d = running(api, old)
    new = NodeSim(app, old.token, old.node_id, connection_id="conn-new")
    assert new.connect()["statusCode"] == 200
    new.hello(running=[{"deployment_id": d, "status": "running", "endpoint_url": "http://n:1"}])
    then = utcnow() - timedelta(seconds=400)
    ConnectionItem(connection_id="conn-old").update(
        actions=[
            ConnectionItem.last_seen_at.set(then),
            ConnectionItem.seen_minute.set(minute_of(then)),
        ]
    )
    sweep()
    assert status(api, d) == "running"
    node = NodeItem.get(old.node_id)
    assert (node.status, node.connection_id) == ("online", "conn-new")
    assert ConnectionItem.get("conn-old").fleet is None  # history: the sweep reads it no more
    old.disconnect()  # its late $disconnect changes nothing either
    assert NodeItem.get(old.node_id).connection_id == "conn-new"


def test_an_older_socket_still_alive_brings_the_node_back_once_the_newer_one_closes(api, app):
    """Two agents on one token (or a test's own socket beside the agent's): the node follows
    the newest connection, and a live older one takes it back when that one closes."""
    older = connected(api, app, connection_id="conn-a")
    newer = NodeSim(app, older.token, older.node_id, connection_id="conn-b")
    assert newer.connect()["statusCode"] == 200
    older.say(type="heartbeat")
    assert NodeItem.get(older.node_id).connection_id == "conn-b"  # a late socket never wins
    newer.disconnect()
    assert NodeItem.get(older.node_id).status == "offline"
    older.say(type="heartbeat")
    node = NodeItem.get(older.node_id)
    assert (node.status, node.connection_id) == ("online", "conn-a")
    assert ConnectionItem.get("conn-a").marked_offline is None


class _Unreachable:
    def post_to_connection(self, **_):
        from botocore.exceptions import EndpointConnectionError

        raise EndpointConnectionError(endpoint_url="https://nowhere.invalid")


def test_a_node_marked_offline_by_a_failed_post_comes_back_on_its_next_heartbeat(
    api, app, monkeypatch
):
    """The management API failed, not the socket: the node is marked offline with its
    connection marked, so the socket's next heartbeat brings it back."""
    sim = connected(api, app)
    monkeypatch.setattr(registry.placement()._channel, "_client_factory", _Unreachable)
    body = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}
    assert api.post(DEPLOYMENTS, body).data["node_id"] is None  # the deploy_model failed
    assert NodeItem.get(sim.node_id).status == "offline"
    sim.say(type="heartbeat")
    node = NodeItem.get(sim.node_id)
    assert (node.status, node.connection_id) == ("online", sim.connection_id)


# --- nodes from before liveness moved to the connection ------------------------------------


def _as_from_before(sim: NodeSim, fleet: str, seconds: float) -> None:
    """Filed in the nodes table's by-last-seen index, its connection not filed at all."""
    then = utcnow() - timedelta(seconds=seconds)
    NodeItem(id=sim.node_id).update(
        actions=[NodeItem.fleet.set(fleet), NodeItem.last_seen_at.set(then)]
    )
    ConnectionItem(connection_id=sim.connection_id).update(
        actions=[ConnectionItem.fleet.remove(), ConnectionItem.last_seen_at.remove()]
    )


@pytest.mark.parametrize("fleet", ["all", "7"])
def test_a_silent_node_item_from_before_is_still_swept(api, app, fleet):
    sim = connected(api, app)
    d = running(api, sim)
    _as_from_before(sim, fleet, 400)
    sweep()
    lost = api.get(f"{DEPLOYMENTS}/{d}").data
    assert (lost["status"], lost["failure_reason"]) == ("failed", "node_lost")
    node = NodeItem.get(sim.node_id)
    assert (node.status, node.fleet) == ("offline", None)  # handled: out of the old index


def test_a_heartbeat_on_a_connection_from_before_moves_its_node_to_the_new_liveness(api, app):
    sim = connected(api, app)
    _as_from_before(sim, "3", 30)
    sim.say(type="heartbeat")
    node = NodeItem.get(sim.node_id)
    assert (node.status, node.fleet) == ("online", None)  # out of the old index
    assert ConnectionItem.get(sim.connection_id).fleet is not None  # filed in the new one


# --- the node list --------------------------------------------------------------------------


def _shown(node: dict) -> datetime:
    return datetime.fromisoformat(node["last_seen_at"].replace("Z", "+00:00"))


def test_the_node_list_shows_an_online_nodes_last_heartbeat_in_one_batch_read(api, app, calls):
    sims = [connected(api, app, f"box{i}", f"conn-{i}") for i in range(3)]
    sims[2].disconnect()
    for sim in sims[:2]:
        sim.say(type="heartbeat")
    calls.clear()
    listed = {n["id"]: n for n in api.get(NODES).data["items"]}
    assert [op for op, _ in calls].count("BatchGetItem") == 1
    for sim in sims[:2]:
        heartbeat = ConnectionItem.get(sim.connection_id).last_seen_at
        assert _shown(listed[sim.node_id]) == heartbeat > NodeItem.get(sim.node_id).last_seen_at
    offline = listed[sims[2].node_id]
    assert offline["status"] == "offline"
    assert _shown(offline) == NodeItem.get(sims[2].node_id).last_seen_at  # its disconnect
