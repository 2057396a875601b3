"""GPU slots reserved at placement (NodeItem.gpu_claims), released on every way a deployment
leaves its node, reclaimed when stale; and deploy_model messages a node never answers. Through
the real handlers and services on moto."""

import threading

import pytest

from chalicelib.node_channel import NodeChannel
from chalicelib.services import placement as placement_module
from chalicelib.services import registry
from chalicelib.services.nodes import MAX_UNANSWERED_DEPLOYS, Sweeper
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem
from chalicelib.store.node_models import NodeItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.shards import UNPLACED_SHARDS
from tests.functional.node_sim import NodeSim, age_node

NODES = "/api/v1/compute/nodes"
DEPLOYMENTS = "/api/v1/compute/deployments"


def a100s(count):
    return [{"index": i, "name": "NVIDIA A100-SXM4-80GB"} for i in range(count)]


@pytest.fixture
def app():
    from app import app as chalice_app

    return chalice_app


@pytest.fixture
def sent(monkeypatch):
    """Every message the control plane sends to a node: (connection id, message)."""
    messages = []
    real_send = NodeChannel.send

    def recording(self, connection_id, message):
        delivered = real_send(self, connection_id, message)
        if delivered:
            messages.append((connection_id, message))
        return delivered

    monkeypatch.setattr(NodeChannel, "send", recording)
    return messages


def deploys(sent, deployment_id):
    return [m for _, m in sent if m.type == "deploy_model" and m.deployment_id == deployment_id]


def start_node(api, app, gpus=1, name="box", connection_id="conn-1"):
    created = api.post(NODES, {"name": name}).data
    sim = NodeSim(app, created["token"], created["id"], connection_id=connection_id)
    assert sim.connect()["statusCode"] == 200
    sim.say(type="node_hello", node_id=sim.node_id, gpus=a100s(gpus))
    return sim


def create(api, name="m", gpu=True):
    body = {"name": name, "weights_source": "/srv/m", "command": ["serve"], "gpu": gpu}
    if gpu:
        body["gpu_type"] = "A100"
    response = api.post(DEPLOYMENTS, body)
    assert response.status_code == 201, response.data
    return response.data["id"]


def stored(deployment_id) -> DeploymentItem:
    return DeploymentRepository().get(deployment_id)


def claims(node_id) -> dict[int, str]:
    return NodeItem.get(node_id, consistent_read=True).gpu_claim_holders()


def ready(node, deployment_id):
    node.say(type="deployment_ready", deployment_id=deployment_id, endpoint_url="http://n:1")


# --- the race ---------------------------------------------------------------------------------


def race_to_place(monkeypatch, items):
    """Place the deployments in threads that have all chosen (the same free GPU) before any
    of them writes: the claim alone must decide."""
    barrier = threading.Barrier(len(items), timeout=10)
    first_choice = threading.local()
    real_choose = placement_module.choose_node

    def choose_then_wait(item, nodes):
        choice = real_choose(item, nodes)
        if not getattr(first_choice, "made", False):
            first_choice.made = True
            barrier.wait()
        return choice

    monkeypatch.setattr(placement_module, "choose_node", choose_then_wait)
    service = registry.placement()
    threads = [threading.Thread(target=service.place, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    monkeypatch.setattr(placement_module, "choose_node", real_choose)
    return [stored(item.id) for item in items]


@pytest.mark.parametrize("first_ends_by", ["stop", "crash"])
def test_two_deployments_racing_for_one_gpu_share_it_in_turn(
    api, app, sent, monkeypatch, first_ends_by
):
    created = api.post(NODES, {"name": "one-gpu"}).data
    node = NodeSim(app, created["token"], created["id"])
    node.connect()
    node.hello()  # no GPUs yet: both deployments wait
    waiting = [stored(create(api, name=n)) for n in ("a", "b")]
    assert all(item.node_id is None for item in waiting)
    NodeRepository().record_hello(NodeItem.get(node.node_id), a100s(1), "test")

    first, second = race_to_place(monkeypatch, waiting)

    placed = [item for item in (first, second) if item.node_id == node.node_id]
    assert len(placed) == 1, [(i.id, i.node_id) for i in (first, second)]
    winner = placed[0]
    loser = second if winner is first else first
    assert (loser.status, loser.node_id) == ("provisioning", None)
    assert "free A100 GPU" in loser.status_message
    assert claims(node.node_id) == {0: winner.id}
    assert [m.gpu_indices for m in deploys(sent, winner.id)] == [[0]]
    assert deploys(sent, loser.id) == []

    if first_ends_by == "stop":
        api.delete(f"{DEPLOYMENTS}/{winner.id}")
        node.say(type="deployment_stopped", deployment_id=winner.id, reason="stopped")
    else:
        ready(node, winner.id)
        node.say(type="deployment_stopped", deployment_id=winner.id, reason="crash", exit_code=1)
    assert stored(winner.id).status in ("stopped", "failed")

    after = stored(loser.id)  # placed at once, on the GPU just freed
    assert (after.node_id, after.gpu_indices) == (node.node_id, [0])
    assert claims(node.node_id) == {0: loser.id}
    assert [m.gpu_indices for m in deploys(sent, loser.id)] == [[0]]


def test_each_gpu_of_a_node_goes_to_one_deployment(api, app, sent):
    node = start_node(api, app, gpus=2)
    first, second, third = (create(api, name=n) for n in ("a", "b", "c"))
    assert [m.gpu_indices for m in deploys(sent, first)] == [[0]]
    assert [m.gpu_indices for m in deploys(sent, second)] == [[1]]
    assert stored(third).node_id is None
    assert claims(node.node_id) == {0: first, 1: second}
    cpu_only = create(api, name="cpu", gpu=False)  # needs no GPU: placed, claims nothing
    assert stored(cpu_only).node_id == node.node_id
    assert [m.gpu_indices for m in deploys(sent, cpu_only)] == [None]


# --- release on every way out -----------------------------------------------------------------


def _crash(api, node, d):
    ready(node, d)
    node.say(type="deployment_stopped", deployment_id=d, reason="crash", exit_code=137)


def _pull_error(api, node, d):
    node.say(type="deployment_progress", deployment_id=d, status="pulling", bytes_done=0)
    node.say(type="deployment_stopped", deployment_id=d, reason="pull_error", message="404")


def _start_error(api, node, d):
    node.say(type="deployment_progress", deployment_id=d, status="starting")
    node.say(type="deployment_stopped", deployment_id=d, reason="start_error", message="oom")


def _stop_confirmed(api, node, d):
    ready(node, d)
    api.delete(f"{DEPLOYMENTS}/{d}")
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped", exit_code=0)


def _stopped_by_the_node_owner(api, node, d):
    ready(node, d)
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped", exit_code=0)


def _stop_before_the_node_answered(api, node, d):
    api.delete(f"{DEPLOYMENTS}/{d}")
    node.say(type="deployment_stopped", deployment_id=d, reason="stopped")


def _node_lost(api, node, d):
    ready(node, d)
    age_node(node.node_id, 400)
    registry.sweeper().sweep()


def _node_lost_while_stopping(api, node, d):
    ready(node, d)
    api.delete(f"{DEPLOYMENTS}/{d}")
    age_node(node.node_id, 400)
    registry.sweeper().sweep()


def _reconnected_without_it(api, node, d):
    ready(node, d)
    node.say(type="node_hello", node_id=node.node_id, gpus=a100s(1), running=[])


def _never_acknowledged(api, node, d):
    sweeper = _sweeper(deploy_ack_s=0)
    for _ in range(MAX_UNANSWERED_DEPLOYS):
        sweeper.sweep()


ENDINGS = {
    "crash": (_crash, "failed"),
    "pull_error": (_pull_error, "failed"),
    "start_error": (_start_error, "failed"),
    "stop confirmed by the node": (_stop_confirmed, "stopped"),
    "stopped by the node's owner": (_stopped_by_the_node_owner, "stopped"),
    "stopped before the node answered": (_stop_before_the_node_answered, "stopped"),
    "node lost (sweep)": (_node_lost, "failed"),
    "node lost while stopping (sweep)": (_node_lost_while_stopping, "stopped"),
    "node reconnected without it (hello)": (_reconnected_without_it, "failed"),
    "never acknowledged (sweep)": (_never_acknowledged, "failed"),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_end_frees_the_gpu(api, app, sent, ending):
    end, final_status = ENDINGS[ending]
    node = start_node(api, app)
    d = create(api)
    assert claims(node.node_id) == {0: d}
    end(api, node, d)
    assert stored(d).status == final_status
    assert claims(node.node_id) == {}


def test_a_failed_send_unassigns_it_and_frees_the_gpu(api, app, sent, monkeypatch):
    node = start_node(api, app)
    monkeypatch.setattr(NodeChannel, "send", lambda self, connection_id, message: False)
    d = create(api)
    item = stored(d)
    assert (item.status, item.node_id, item.gpu_indices) == ("provisioning", None, None)
    assert item.unplaced in UNPLACED_SHARDS  # waits for a node again
    assert claims(node.node_id) == {}
    assert NodeItem.get(node.node_id).status == "offline"


# --- stale claims -----------------------------------------------------------------------------


def _holder_ended_without_release(holder_id, node_id):
    # as if the function died between the terminal write and the release
    DeploymentItem(id=holder_id).update(
        actions=[DeploymentItem.status.set("failed")], add_version_condition=False
    )


def _holder_deleted(holder_id, node_id):
    DeploymentItem(id=holder_id).delete(add_version_condition=False)


def _holder_moved_elsewhere(holder_id, node_id):
    DeploymentItem(id=holder_id).update(
        actions=[DeploymentItem.node_id.set("node_elsewhere")], add_version_condition=False
    )


@pytest.mark.parametrize(
    "make_stale", [_holder_ended_without_release, _holder_deleted, _holder_moved_elsewhere]
)
def test_a_stale_claim_is_reclaimed_when_placement_finds_the_node_full(api, app, sent, make_stale):
    node = start_node(api, app)
    holder = create(api, name="holder")
    make_stale(holder, node.node_id)
    assert claims(node.node_id) == {0: holder}  # still claimed
    d = create(api, name="next")
    assert stored(d).node_id == node.node_id
    assert claims(node.node_id) == {0: d}
    assert [m.gpu_indices for m in deploys(sent, d)] == [[0]]


def test_a_live_claim_is_kept(api, app, sent):
    node = start_node(api, app)
    holder = create(api, name="holder")
    ready(node, holder)
    d = create(api, name="next")
    assert stored(d).node_id is None
    assert claims(node.node_id) == {0: holder}


def test_a_node_from_before_claims_existed_gets_its_map_at_placement(api, app, sent):
    node = start_node(api, app)
    NodeItem(id=node.node_id).update(actions=[NodeItem.gpu_claims.remove()])
    d = create(api)
    assert claims(node.node_id) == {0: d}


# --- deploy_model never acknowledged ----------------------------------------------------------


def _sweeper(deploy_ack_s):
    return Sweeper(
        NodeRepository(),
        DeploymentRepository(),
        registry.placement(),
        node_timeout_s=60,
        node_lost_s=300,
        no_node_timeout_s=600,
        ending=registry.ending(),
        deploy_ack_s=deploy_ack_s,
    )


def test_an_unanswered_deploy_is_placed_again_then_fails_naming_the_node(api, app, sent):
    node = start_node(api, app, name="mute-box")
    d = create(api)
    answered = create(api, name="answered", gpu=False)
    node.say(type="deployment_progress", deployment_id=answered, status="pulling")

    _sweeper(deploy_ack_s=60).sweep()  # within the timeout: left alone
    assert len(deploys(sent, d)) == 1 and stored(d).unacked_deploys is None

    sweeper = _sweeper(deploy_ack_s=0)
    for attempt in range(1, MAX_UNANSWERED_DEPLOYS):
        sweeper.sweep()
        again = stored(d)
        assert (again.status, again.node_id, again.unacked_deploys) == (
            "provisioning",
            node.node_id,
            attempt,
        )
        assert claims(node.node_id) == {0: d}
    assert [m.gpu_indices for m in deploys(sent, d)] == [[0]] * MAX_UNANSWERED_DEPLOYS

    sweeper.sweep()
    failed = stored(d)
    assert (failed.status, failed.failure_reason) == ("failed", "no_node")
    assert "mute-box" in failed.failure_message and node.node_id in failed.failure_message
    assert claims(node.node_id) == {}
    assert stored(answered).status == "pulling"  # it answered: never touched
    assert len(deploys(sent, answered)) == 1


def test_an_answer_after_a_resend_stops_the_clock(api, app, sent):
    node = start_node(api, app)
    d = create(api)
    sweeper = _sweeper(deploy_ack_s=0)
    sweeper.sweep()  # sent again
    node.say(type="deployment_progress", deployment_id=d, status="pulling")
    for _ in range(MAX_UNANSWERED_DEPLOYS):
        sweeper.sweep()
    item = stored(d)
    assert (item.status, item.node_id, item.awaiting_ack) == ("pulling", node.node_id, None)
    assert claims(node.node_id) == {0: d}


def test_an_unanswered_deploy_can_move_to_another_node(api, app, sent):
    mute = start_node(api, app, name="mute")
    d = create(api)
    assert stored(d).node_id == mute.node_id
    other = start_node(api, app, gpus=2, name="other", connection_id="conn-2")
    _sweeper(deploy_ack_s=0).sweep()
    moved = stored(d)
    assert moved.node_id == other.node_id  # more free GPUs there
    assert claims(mute.node_id) == {} and claims(other.node_id) == {0: d}
