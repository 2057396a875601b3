"""Reads that follow the work and writes spread over partition keys (issue 17), through the real
handlers on moto: a node's hello reads only its owner's waiting deployments; the minute sweep
forgets a lost node's connection once its deployments have ended, until its next heartbeat;
the sparse indexes every item of a kind is written to spread their items over shard keys."""

from datetime import timedelta

import pytest

from chalicelib.store.connections import ConnectionRepository
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem
from chalicelib.store.node_models import ConnectionItem, NodeItem
from chalicelib.store.shards import (
    AWAITING_ACK_SHARDS,
    CLOUD_SHARDS,
    LAST_SEEN_SHARDS,
    UNPLACED_SHARDS,
)
from tests.functional.node_sim import NodeSim, age_node

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"
WAITING = {"name": "m", "weights_source": "/srv/m", "gpu": False, "command": ["serve"]}


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


def connected(api, app, name="box") -> NodeSim:
    created = api.post(NODES, {"name": name}).data
    sim = NodeSim(app, created["token"], created["id"], connection_id=f"conn-{name}")
    assert sim.connect()["statusCode"] == 200
    return sim


def test_a_hello_places_its_owners_waiting_deployments_reading_no_one_elses(
    api, other_api, app, monkeypatch
):
    theirs = [other_api.post(DEPLOYMENTS, WAITING).data["id"] for _ in range(5)]
    mine = api.post(DEPLOYMENTS, WAITING).data["id"]

    def every_owners(*args, **kwargs):
        raise AssertionError("a hello read the cross-owner index of waiting deployments")

    monkeypatch.setattr(DeploymentItem.unplaced_index, "query", every_owners)
    sim = connected(api, app)
    sim.hello()
    assert DeploymentItem.get(mine).node_id == sim.node_id
    assert all(DeploymentItem.get(d).node_id is None for d in theirs)


def test_the_sweep_forgets_a_lost_nodes_connection_until_its_next_heartbeat(api, app, client):
    sim = connected(api, app)
    sim.hello()
    assert ConnectionItem.get(sim.connection_id).fleet in LAST_SEEN_SHARDS
    age_node(sim.node_id, 400)
    sweep(client)
    assert NodeItem.get(sim.node_id).status == "offline"
    # Still open (no $disconnect came): kept, so its messages are accepted, but out of the
    # index the sweep reads.
    assert ConnectionItem.get(sim.connection_id).fleet is None
    assert list(ConnectionRepository().silent_since(utcnow())) == []
    sim.say(type="heartbeat")
    assert ConnectionItem.get(sim.connection_id).fleet in LAST_SEEN_SHARDS
    assert NodeItem.get(sim.node_id).status == "online"


def test_items_every_member_of_a_kind_writes_spread_over_shard_keys(api, other_api, app):
    connections = [connected(api, app, f"n{i}").connection_id for i in range(24)]
    assert len({ConnectionItem.get(c).fleet for c in connections}) >= 8
    waiting = [other_api.post(DEPLOYMENTS, WAITING).data["id"] for _ in range(24)]  # no nodes
    shards = {DeploymentItem.get(d).unplaced for d in waiting}
    assert shards <= set(UNPLACED_SHARDS) and len(shards) >= 4
    repository = DeploymentRepository()
    sent = [api.post(DEPLOYMENTS, WAITING).data for _ in range(24)]  # placed on `connections`
    assert all(d["node_id"] for d in sent)
    shards = {DeploymentItem.get(d["id"]).awaiting_ack for d in sent}
    assert shards <= set(AWAITING_ACK_SHARDS) and len(shards) >= 4
    unanswered = repository.awaiting_ack(assigned_before=utcnow() + timedelta(seconds=1))
    assert sorted(item.id for item in unanswered) == sorted(d["id"] for d in sent)
    cloud = [
        repository.create(
            DeploymentItem(
                id=f"dep_{i:016x}", owner_id="u", name="c", target="runpod", image="a/b:1",
                status="provisioning", created_at=utcnow(), updated_at=utcnow(),
                deploy_config=DeployConfigAttribute(health_path="/health"),
            )
        ).id
        for i in range(24)
    ]  # fmt: skip
    shards = {DeploymentItem.get(d).cloud for d in cloud}
    assert shards <= set(CLOUD_SHARDS) and len(shards) >= 4
    assert sorted(item.id for item in repository.cloud_active()) == sorted(cloud)  # every shard


def sweep(client):
    client.lambda_.invoke(
        "sweep_nodes",
        client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        ),
    )
