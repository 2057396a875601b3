"""Placing deployments on a node and sending them there: prism_node deployments on the owner's
nodes, weights/command cloud deployments on the agent of their own instance.

Decide (which node, which GPUs) is pure; apply is one transaction that assigns the deployment
and claims its GPUs on the node (NodeItem.gpu_claims), followed by the `deploy_model` message
naming those GPUs. A deployment with no suitable node waits in `provisioning` with a reason.
"""

from dataclasses import dataclass

from chalicelib.lifecycle import Status
from chalicelib.node_channel import NodeChannel
from chalicelib.protocol import DeployConfig, DeployModel, gpu_matches
from chalicelib.schemas import DeployConfig as RestDeployConfig
from chalicelib.store.deployments import Assignment, DeploymentRepository
from chalicelib.store.models import DeploymentItem
from chalicelib.store.node_models import NodeItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.secrets import DeploymentSecrets, SecretStore

# Each round places the deployment or learns something that changes the next choice (a GPU
# another placement took, a node that turned out to be gone, stale claims freed).
MAX_PLACEMENT_ROUNDS = 8


@dataclass(frozen=True)
class Choice:
    node: NodeItem
    gpu_indices: list[int] | None  # the GPUs to reserve; None: no GPU, or the whole node


def deploy_message(item: DeploymentItem, secrets: DeploymentSecrets | None = None) -> DeployModel:
    """What the node runs, its secrets included: opened from the secrets table (KMS Decrypt)
    unless the caller has them (`secrets`)."""
    dedicated = item.target != "prism_node"  # a cloud instance of its own
    secrets = secrets if secrets is not None else SecretStore().open(item)
    return DeployModel(
        deployment_id=item.id,
        image=item.image,
        weights_source=secrets.weights_source(item.weights_source),
        framework=item.framework,
        command=list(item.command or []),
        env_vars=dict(secrets.env),
        deploy_config=DeployConfig(**RestDeployConfig.of(item.deploy_config).model_dump()),
        gpu=bool(item.gpu),
        gpu_type=item.gpu_type,
        whole_node=True if dedicated else None,  # left out otherwise: older agents
        gpu_indices=[int(i) for i in item.gpu_indices] if item.gpu_indices else None,
        endpoint_key_hashes=list(item.endpoint_key_hashes or []),  # deploy_config.auth "key"
    )


def matching_gpus(item: DeploymentItem, node: NodeItem) -> list[int]:
    """The node's GPU indices of the requested type, lowest first."""
    return sorted(
        gpu.index
        for gpu in node.gpus or []
        if gpu_matches(gpu.name, item.gpu_type, gpu.memory_total_mb)
    )


def free_gpus(item: DeploymentItem, node: NodeItem) -> list[int]:
    claimed = node.gpu_claim_holders()
    return [index for index in matching_gpus(item, node) if index not in claimed]


def choose_node(item: DeploymentItem, nodes: list[NodeItem]) -> Choice | None:
    """Where the deployment goes. A cloud instance's node runs its own deployment only (every
    GPU, no claim). Without a GPU: the first online node listed. With one: the node with the
    most free matching GPUs (spreading load; the first listed on a tie), on its lowest free
    matching GPU."""
    best: tuple[int, Choice] | None = None
    for node in nodes:
        if item.pinned_node_id and node.id != item.pinned_node_id:
            continue
        if node.dedicated_to:
            if node.dedicated_to == item.id:
                return Choice(node, None)
            continue
        if not item.gpu:
            return Choice(node, None)
        free = free_gpus(item, node)
        if free and (best is None or len(free) > best[0]):
            best = (len(free), Choice(node, free[:1]))
    return best[1] if best else None


def claim_is_stale(node_id: str, index: int, holder: DeploymentItem | None) -> bool:
    """A claim frees itself when its holder is gone, over, or no longer on that GPU (it was
    unassigned, or moved): the release after those writes never happened."""
    return (
        holder is None
        or Status(holder.status).is_terminal()
        or holder.node_id != node_id
        or index not in [int(i) for i in holder.gpu_indices or []]
    )


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

    def place(
        self,
        item: DeploymentItem,
        secrets: DeploymentSecrets | None = None,
        candidates: list[NodeItem] | None = None,
    ) -> DeploymentItem:
        """`secrets` and `candidates` (online_for): when the caller has them (create), not read
        again."""
        if item.status != "provisioning" or item.node_id:
            return item
        if item.target != "prism_node" and not item.pinned_node_id:
            return item  # a cloud deployment whose instance does not run our agent
        if candidates is None:
            candidates = self.online_for(item)
        reclaimed = False
        for _ in range(MAX_PLACEMENT_ROUNDS):
            choice = choose_node(item, candidates)
            if choice is None:
                if reclaimed or not item.gpu or not self._reclaim_stale(item, candidates):
                    break
                reclaimed = True  # once: what is still claimed then is really in use
                candidates = self._fresh(candidates)
                continue
            outcome = self._assign(item, choice)
            if outcome is Assignment.MOVED:
                return self._deployments.get(item.id) or item  # placed or ended meanwhile
            if outcome is Assignment.GPU_TAKEN:
                candidates = self._fresh(candidates)
                continue
            if secrets is None:  # opened once, and only when a node was found for it
                secrets = SecretStore().open(item)
            if self._channel.send(choice.node.connection_id, deploy_message(item, secrets)):
                return self._deployments.get(item.id) or item
            self._nodes.mark_offline(choice.node, choice.node.connection_id)
            self._deployments.unassign(item, choice.node.id, waiting_reason(item))
            candidates = [n for n in candidates if n.id != choice.node.id]
        if item.status_message != waiting_reason(item):
            self._deployments.record(item, status_message=waiting_reason(item))
        return item

    def _assign(self, item: DeploymentItem, choice: Choice) -> Assignment:
        if choice.gpu_indices:
            self._nodes.ensure_gpu_claims(choice.node)
        message = f"sent to node {choice.node.name}"
        return self._deployments.assign_node(item, choice.node.id, message, choice.gpu_indices)

    def online_for(self, item: DeploymentItem) -> list[NodeItem]:
        """A pinned deployment's node read consistently (it may have connected a moment ago;
        the owner index lags), else the owner's online nodes: read again consistently when
        the deployment needs a GPU, whose claims the index may not show yet."""
        if not item.pinned_node_id:
            online = self._nodes.online_owned(item.owner_id)
            return self._fresh(online) if item.gpu else online
        node = self._nodes.get(item.pinned_node_id)
        return [node] if node is not None and _is_online(node) else []

    def _fresh(self, nodes: list[NodeItem]) -> list[NodeItem]:
        if not nodes:
            return []
        return [n for n in self._nodes.get_many([n.id for n in nodes]) if _is_online(n)]

    def _reclaim_stale(self, item: DeploymentItem, nodes: list[NodeItem]) -> bool:
        """Free the claims on the matching GPUs of these nodes whose holders no longer hold
        them (one consistent BatchGet of the holders). True when any GPU was freed."""
        claims = [
            (node.id, index, holder)
            for node in nodes
            if not node.dedicated_to
            for index, holder in node.gpu_claim_holders().items()
            if index in matching_gpus(item, node)
        ]
        if not claims:
            return False
        holders = self._deployments.get_many({holder for _, _, holder in claims})
        freed = False
        for node_id, index, holder in claims:
            if claim_is_stale(node_id, index, holders.get(holder)):
                freed |= self._nodes.release_stale_claim(node_id, index, holder)
        return freed

    def place_waiting(self, owner_id: str | None = None) -> None:
        """Try again for deployments waiting for a node: one owner's (their node said hello,
        or freed GPUs), or every owner's (the sweep)."""
        if owner_id is None:
            waiting = self._deployments.unplaced()
        else:
            waiting = self._deployments.waiting_for(owner_id)
        for item in waiting:
            self.place(item)


def _is_online(node: NodeItem) -> bool:
    return node.status == "online" and bool(node.connection_id)
