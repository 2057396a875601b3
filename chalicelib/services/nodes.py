"""Nodes: registration, the WebSocket connection lifecycle, and the sweep that notices silent
nodes and deployments that waited too long for one."""

from datetime import timedelta

from chalicelib.errors import ValidationFailed
from chalicelib.lifecycle import FailureReason, Status, towards
from chalicelib.logs import logger
from chalicelib.services.ending import Ending
from chalicelib.services.placement import Placement
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import NodeItem, utcnow
from chalicelib.store.nodes import NodeRepository


class NodeService:
    def __init__(
        self, nodes: NodeRepository, deployments: DeploymentRepository, placement: Placement
    ):
        self._nodes = nodes
        self._deployments = deployments
        self._placement = placement

    def register(self, owner_id: str, name: str) -> tuple[NodeItem, str]:
        return self._nodes.register(owner_id, name)

    def list(self, owner_id: str) -> list[NodeItem]:
        return self._nodes.list_owned(owner_id)

    def require_owned(self, owner_id: str, node_id: str) -> NodeItem:
        node = self._nodes.get(node_id)
        if node is None or node.owner_id != owner_id:
            raise ValidationFailed(f"unknown node {node_id}", fields={"node_id": "not your node"})
        return node

    def connect(self, token: str | None, connection_id: str) -> NodeItem | None:
        """None refuses the connection: no token or a wrong one."""
        node = self._nodes.authenticate(token) if token else None
        if node is not None:
            self._nodes.mark_connected(node, connection_id)
            logger.info("node connected", extra={"node_id": node.id})
        return node

    def disconnect(self, connection_id: str) -> None:
        conn = self._nodes.forget_connection(connection_id)
        if conn is not None:
            node = self._nodes.get(conn.node_id)
            if node is not None:
                self._nodes.mark_offline(node, connection_id)
            logger.info("node disconnected", extra={"node_id": conn.node_id})


class Sweeper:
    """Runs every minute: nodes silent past the timeouts, and deployments nobody can place."""

    def __init__(
        self,
        nodes: NodeRepository,
        deployments: DeploymentRepository,
        placement: Placement,
        node_timeout_s: int,
        node_lost_s: int,
        no_node_timeout_s: int,
        ending: Ending,
    ):
        self._nodes = nodes
        self._deployments = deployments
        self._placement = placement
        self._ending = ending
        self._node_timeout = timedelta(seconds=node_timeout_s)
        self._node_lost = timedelta(seconds=node_lost_s)
        self._no_node_timeout = timedelta(seconds=no_node_timeout_s)

    def sweep(self) -> None:
        now = utcnow()
        for node in self._nodes.silent_since(now - self._node_timeout):
            self._silent_node(node, now - node.last_seen_at)
        for item in self._deployments.unplaced(created_before=now - self._no_node_timeout):
            self._deployments.transition_latest(
                item.id,
                towards(Status.FAILED),
                first=item,
                failure_reason=FailureReason.NO_NODE.value,
                failure_message=f"no suitable node within {self._no_node_timeout}: "
                + (item.status_message or "none was online"),
            )
        self._placement.place_waiting()

    def _silent_node(self, node: NodeItem, silence: timedelta) -> None:
        if node.status == "online":
            self._nodes.mark_offline(node)
        lost = silence >= self._node_lost
        note = f"node {node.name} silent for {int(silence.total_seconds())} s"
        for item in self._deployments.on_node(node.id):
            status = Status(item.status)
            if status.is_terminal():
                continue
            if status is Status.STOPPING and lost:
                self._ending.stopped(item, note)
            elif lost:
                self._ending.fail(item, FailureReason.NODE_LOST, note)
            elif status is Status.RUNNING:
                self._deployments.transition_latest(
                    item.id,
                    towards(Status.UNHEALTHY),
                    first=item,
                    status_message=note,
                    healthy=False,
                )
