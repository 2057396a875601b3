"""Placing deployments on a node and sending them there: prism_node deployments on the owner's
nodes, weights/command cloud deployments on the agent of their own instance.

Decide (which node) is pure; apply is a conditional claim on the deployment followed by the
`deploy_model` message. A deployment with no suitable node waits in `provisioning` with a reason.
"""

from chalicelib.node_channel import NodeChannel
from chalicelib.protocol import DeployConfig, DeployModel, gpu_matches
from chalicelib.schemas import DeployConfig as RestDeployConfig
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem, NodeItem
from chalicelib.store.nodes import NodeRepository


def deploy_message(item: DeploymentItem) -> DeployModel:
    dedicated = item.target != "prism_node"  # a cloud instance of its own
    return DeployModel(
        deployment_id=item.id,
        image=item.image,
        weights_source=item.weights_source,
        framework=item.framework,
        command=list(item.command or []),
        env_vars=item.env_dict(),
        deploy_config=DeployConfig(**RestDeployConfig.of(item.deploy_config).model_dump()),
        gpu=bool(item.gpu),
        gpu_type=item.gpu_type,
        whole_node=True if dedicated else None,  # left out otherwise: older agents
    )


def choose_node(
    item: DeploymentItem, nodes: list[NodeItem], load: dict[str, int]
) -> NodeItem | None:
    """The least loaded online node that fits: any node when no GPU is needed, else one with
    more matching GPUs than GPU deployments already placed on it."""
    fitting = []
    for node in nodes:
        if item.pinned_node_id and node.id != item.pinned_node_id:
            continue
        if node.dedicated_to:  # a cloud instance's agent runs its own deployment only
            if node.dedicated_to == item.id:
                fitting.append(node)
            continue
        if item.gpu:
            matching = sum(
                1
                for gpu in node.gpus or []
                if gpu_matches(gpu.name, item.gpu_type, gpu.memory_total_mb)
            )
            if matching <= load.get(node.id, 0):
                continue
        fitting.append(node)
    return min(fitting, key=lambda n: load.get(n.id, 0), default=None)


def waiting_reason(item: DeploymentItem) -> str:
    if item.target != "prism_node":
        return "waiting for the node agent on the instance to connect"
    if item.pinned_node_id:
        return f"waiting for node {item.pinned_node_id} to come online with room for it"
    if item.gpu:
        kind = f"a free {item.gpu_type} GPU" if item.gpu_type else "a free GPU"
        return f"waiting for an online node with {kind}; start one with `prism node up`"
    return "waiting for an online node; start one with `prism node up`"


class Placement:
    def __init__(
        self, deployments: DeploymentRepository, nodes: NodeRepository, channel: NodeChannel
    ):
        self._deployments = deployments
        self._nodes = nodes
        self._channel = channel

    def place(self, item: DeploymentItem) -> DeploymentItem:
        if item.status != "provisioning" or item.node_id:
            return item
        if item.target != "prism_node" and not item.pinned_node_id:
            return item  # a cloud deployment whose instance does not run our agent
        online = self._online_for(item)
        tried: set[str] = set()
        while True:
            candidates = [n for n in online if n.id not in tried]
            node = choose_node(item, candidates, self._gpu_load(candidates) if item.gpu else {})
            if node is None:
                break
            tried.add(node.id)
            if not self._deployments.assign_node(item, node.id, f"sent to node {node.name}"):
                return self._deployments.get(item.id) or item  # placed or ended meanwhile
            if self._channel.send(node.connection_id, deploy_message(item)):
                return self._deployments.get(item.id) or item
            self._nodes.mark_offline(node, node.connection_id)
            self._deployments.unassign(item, node.id, waiting_reason(item))
        if item.status_message != waiting_reason(item):
            self._deployments.record(item, status_message=waiting_reason(item))
        return item

    def _online_for(self, item: DeploymentItem) -> list[NodeItem]:
        """A pinned deployment's node read consistently (it may have connected a moment ago;
        the owner index lags), else the owner's online nodes."""
        if not item.pinned_node_id:
            return self._nodes.online_owned(item.owner_id)
        node = self._nodes.get(item.pinned_node_id)
        online = node is not None and node.status == "online" and node.connection_id
        return [node] if online else []

    def place_waiting(self, owner_id: str | None = None) -> None:
        for item in self._deployments.unplaced():
            if owner_id is None or item.owner_id == owner_id:
                self.place(item)

    def _gpu_load(self, nodes: list[NodeItem]) -> dict[str, int]:
        return {n.id: sum(1 for d in self._deployments.on_node(n.id) if d.gpu) for n in nodes}
