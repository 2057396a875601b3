"""Which node a deployment goes to, and which of its GPUs: a cloud instance's node runs its own
deployment only; a GPU deployment needs a free (unclaimed) matching GPU."""

from chalicelib.protocol import GpuInfo
from chalicelib.services.placement import (
    choose_node,
    claim_is_stale,
    deploy_message,
    free_gpus,
)
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem
from chalicelib.store.node_models import GpuAttribute, NodeItem


def node(node_id, dedicated_to=None, gpus=(), claims=None):
    return NodeItem(
        id=node_id,
        owner_id="u",
        name=node_id,
        token_hash="h",
        dedicated_to=dedicated_to,
        gpus=[GpuAttribute(**gpu.model_dump()) for gpu in gpus],
        gpu_claims=claims,
    )


def deployment(dep_id="dep_0000000000000001", target="prism_node", gpu=False, pinned=None):
    return DeploymentItem(
        id=dep_id,
        owner_id="u",
        name="m",
        target=target,
        status="provisioning",
        gpu=gpu,
        gpu_type="A100" if gpu else None,
        weights_source="hf://acme/llm",
        pinned_node_id=pinned,
        deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
    )


A100 = GpuInfo(index=0, name="NVIDIA A100 80GB PCIe", uuid="GPU-1", memory_total_mb=81920)


def a100s(*indices):
    return [GpuInfo(index=i, name="NVIDIA A100-SXM4-80GB") for i in indices]


def test_a_cloud_instance_node_takes_only_its_own_deployment():
    instance = node("node_i", dedicated_to="dep_0000000000000002", gpus=[A100])
    assert choose_node(deployment(gpu=True), [instance]) is None
    own = deployment("dep_0000000000000002", target="runpod", gpu=True, pinned="node_i")
    chosen = choose_node(own, [instance])
    assert chosen.node is instance and chosen.gpu_indices is None  # every GPU, no claim


def test_its_own_deployment_goes_there_even_when_the_agent_sees_no_gpu():
    """The provider rented the GPU; a driver problem shows up when the model starts."""
    instance = node("node_i", dedicated_to="dep_0000000000000002")
    own = deployment("dep_0000000000000002", target="lambda", gpu=True, pinned="node_i")
    assert choose_node(own, [node("node_mine", gpus=[A100]), instance]).node is instance


def test_on_an_instance_of_its_own_the_model_gets_the_whole_node():
    assert deploy_message(deployment(target="runpod", gpu=True, pinned="node_i")).whole_node
    # Left out for prism_node deployments, so agents that predate the field still parse it.
    assert "whole_node" not in deploy_message(deployment(gpu=True)).to_json()


def test_a_gpu_type_goes_to_its_family_only_whatever_the_cards_are_called():
    sxm = node("node_sxm", gpus=[GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB")])
    a10 = node("node_a10", gpus=[GpuInfo(index=0, name="NVIDIA A10")])
    l40s = node("node_l40s", gpus=[GpuInfo(index=0, name="NVIDIA L40S")])
    nodes = [a10, l40s, sxm]

    def wanting(gpu_type):
        item = deployment(gpu=True)
        item.gpu_type = gpu_type
        chosen = choose_node(item, nodes)
        return chosen and chosen.node

    assert wanting("A100-80GB") is sxm  # the README's own example, NVML's name for the card
    assert wanting("A10") is a10  # not the A100
    assert wanting("L40") is None  # an L40S is not an L40
    assert wanting("A100-40GB") is None


def test_a_claimed_gpu_is_not_free_and_the_lowest_free_matching_one_is_reserved():
    mixed = node(
        "node_m",
        gpus=[*a100s(0, 2), GpuInfo(index=1, name="NVIDIA H100 80GB HBM3")],
        claims={"0": "dep_00000000000000aa"},
    )
    item = deployment(gpu=True)
    assert free_gpus(item, mixed) == [2]  # 0 is claimed, 1 is an H100
    assert choose_node(item, [mixed]).gpu_indices == [2]
    full = node("node_f", gpus=a100s(0), claims={"0": "dep_00000000000000aa"})
    assert choose_node(item, [full]) is None


def test_the_node_with_the_most_free_matching_gpus_wins_and_ties_go_to_the_first():
    busy = node("node_busy", gpus=a100s(0, 1, 2), claims={"0": "a", "1": "b"})
    idle = node("node_idle", gpus=a100s(0, 1))
    also_idle = node("node_also", gpus=a100s(0, 1))
    assert choose_node(deployment(gpu=True), [busy, idle, also_idle]).node is idle
    assert choose_node(deployment(gpu=True), [busy]).gpu_indices == [2]


def test_without_a_gpu_any_online_node_will_do_and_nothing_is_reserved():
    full = node("node_f", gpus=a100s(0), claims={"0": "dep_00000000000000aa"})
    chosen = choose_node(deployment(gpu=False), [full])
    assert chosen.node is full and chosen.gpu_indices is None


def test_a_pinned_deployment_goes_only_to_its_node():
    mine = node("node_mine", gpus=a100s(0, 1, 2))
    pinned = node("node_pinned", gpus=a100s(0))
    item = deployment(gpu=True, pinned="node_pinned")
    assert choose_node(item, [mine, pinned]).node is pinned


def test_the_deploy_message_names_the_reserved_gpus():
    item = deployment(gpu=True)
    item.gpu_indices = [3]
    assert deploy_message(item).gpu_indices == [3]
    assert deploy_message(deployment(gpu=False)).gpu_indices is None


def test_a_claim_is_stale_once_its_holder_ended_left_the_node_or_the_gpu():
    holder = deployment(gpu=True)
    holder.node_id, holder.gpu_indices = "node_a", [0]
    assert not claim_is_stale("node_a", 0, holder)
    assert claim_is_stale("node_a", 0, None)  # gone
    assert claim_is_stale("node_a", 1, holder)  # holds another GPU there
    assert claim_is_stale("node_b", 0, holder)  # on another node
    for status in ("failed", "stopped"):
        holder.status = status
        assert claim_is_stale("node_a", 0, holder)
    holder.status = "stopping"  # its process may still be on the GPU
    assert not claim_is_stale("node_a", 0, holder)
