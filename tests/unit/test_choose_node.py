"""Which node a deployment goes to: a cloud instance's node runs its own deployment only."""

from chalicelib.protocol import GpuInfo
from chalicelib.services.placement import choose_node, deploy_message
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem, GpuAttribute, NodeItem


def node(node_id, dedicated_to=None, gpus=()):
    return NodeItem(
        id=node_id,
        owner_id="u",
        name=node_id,
        token_hash="h",
        dedicated_to=dedicated_to,
        gpus=[GpuAttribute(**gpu.model_dump()) for gpu in gpus],
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


def test_a_cloud_instance_node_takes_only_its_own_deployment():
    instance = node("node_i", dedicated_to="dep_0000000000000002", gpus=[A100])
    assert choose_node(deployment(gpu=True), [instance], {}) is None
    own = deployment("dep_0000000000000002", target="runpod", gpu=True, pinned="node_i")
    assert choose_node(own, [instance], {}) is instance


def test_its_own_deployment_goes_there_even_when_the_agent_sees_no_gpu():
    """The provider rented the GPU; a driver problem shows up when the model starts."""
    instance = node("node_i", dedicated_to="dep_0000000000000002")
    own = deployment("dep_0000000000000002", target="lambda", gpu=True, pinned="node_i")
    assert choose_node(own, [node("node_mine", gpus=[A100]), instance], {}) is instance


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
        return choose_node(item, nodes, {})

    assert wanting("A100-80GB") is sxm  # the README's own example, NVML's name for the card
    assert wanting("A10") is a10  # not the A100
    assert wanting("L40") is None  # an L40S is not an L40
    assert wanting("A100-40GB") is None
