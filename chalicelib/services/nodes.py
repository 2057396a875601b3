"""Nodes: registration, the WebSocket connection lifecycle, and the sweep that notices silent
nodes, deployments that waited too long for one, and deployments a node never answered."""

from datetime import timedelta

from chalicelib.errors import ValidationFailed
from chalicelib.lifecycle import FailureReason, Status, towards
from chalicelib.logs import logger
from chalicelib.services.ending import Ending
from chalicelib.services.placement import Placement
from chalicelib.store.connections import ConnectionRepository
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeploymentItem
from chalicelib.store.node_models import ConnectionItem, NodeItem
from chalicelib.store.nodes import NodeRepository

# deploy_model messages sent without an answer before the deployment fails: a node that took
# the message but never answers three times (an agent wedged, too old, or on a dead link)
# will not answer a fourth.
MAX_UNANSWERED_DEPLOYS = 3


class NodeService:
    def __init__(
        self,
        nodes: NodeRepository,
        deployments: DeploymentRepository,
        placement: Placement,
        connections: ConnectionRepository | None = None,
    ):
        self._nodes = nodes
        self._deployments = deployments
        self._placement = placement
        self._connections = connections or ConnectionRepository()

    def register(self, owner_id: str, name: str) -> tuple[NodeItem, str]:
        return self._nodes.register(owner_id, name)

    def list(self, owner_id: str) -> list[NodeItem]:
        """The owner's nodes, an online one last seen at its connection's last heartbeat
        (heartbeats write only the connection): one BatchGetItem for the page."""
        nodes = self._nodes.list_owned(owner_id)
        online = [n.connection_id for n in nodes if n.status == "online" and n.connection_id]
        seen = self._connections.last_seen(online) if online else {}
        for node in nodes:
            heartbeat = seen.get(node.connection_id)
            if heartbeat is not None and heartbeat > node.last_seen_at:
                node.last_seen_at = heartbeat  # shown only, never saved
        return nodes

    def require_owned(self, owner_id: str, node_id: str) -> NodeItem:
        node = self._nodes.get(node_id)
        if node is None or node.owner_id != owner_id:
            raise ValidationFailed(f"unknown node {node_id}", fields={"node_id": "not your node"})
        return node

    def connect(self, token: str | None, connection_id: str) -> NodeItem | None:
        """None refuses the connection: no token, a wrong one, or a node deleted (its owner
        deleted) or given a new token while this connection was being accepted."""
        node = self._nodes.authenticate(token) if token else None
        if node is None or not self._nodes.mark_connected(node, connection_id):
            return None
        logger.info("node connected", extra={"node_id": node.id})
        return node

    def disconnect(self, connection_id: str) -> None:
        """The connection is closed, not deleted: the sweep reads its silence to fail the
        node's deployments if the node does not come back (see Sweeper)."""
        conn = self._connections.close(connection_id)
        if conn is not None:
            self._nodes.mark_disconnected(conn.node_id, connection_id)
            logger.info("node disconnected", extra={"node_id": conn.node_id})


class Sweeper:
    """Runs every minute: nodes silent past the timeouts, deployments nobody can place, and
    deployments whose node never acknowledged them."""

    def __init__(
        self,
        nodes: NodeRepository,
        deployments: DeploymentRepository,
        placement: Placement,
        node_timeout_s: int,
        node_lost_s: int,
        no_node_timeout_s: int,
        ending: Ending,
        deploy_ack_s: int,
        connections: ConnectionRepository | None = None,
    ):
        self._nodes = nodes
        self._connections = connections or ConnectionRepository()
        self._deployments = deployments
        self._placement = placement
        self._ending = ending
        self._node_timeout = timedelta(seconds=node_timeout_s)
        self._node_lost = timedelta(seconds=node_lost_s)
        self._no_node_timeout = timedelta(seconds=no_node_timeout_s)
        self._deploy_ack = timedelta(seconds=deploy_ack_s)
        self._ack_text = f"{deploy_ack_s} s"

    def sweep(self) -> None:
        now = utcnow()
        for connection in self._connections.silent_since(now - self._node_timeout):
            self._silent_connection(connection, now)
        for node in self._nodes.silent_since(now - self._node_timeout):  # legacy (see there)
            if node.status == "online" and node.connection_id:
                self._nodes.mark_offline(node, node.connection_id)
            if self._silent_node(node, now - node.last_seen_at):
                self._nodes.forget_silent(node)
        for item in self._deployments.unplaced(created_before=now - self._no_node_timeout):
            self._deployments.transition_latest(
                item.id,
                towards(Status.FAILED),
                first=item,
                failure_reason=FailureReason.NO_NODE.value,
                failure_message=f"no suitable node within {self._no_node_timeout}: "
                + (item.status_message or "none was online"),
            )
        for item in self._deployments.awaiting_ack(assigned_before=now - self._deploy_ack):
            self._unanswered(item)
        self._placement.place_waiting()

    def _unanswered(self, sent: DeploymentItem) -> None:
        """A deployment its node never reported on: placed again (maybe on the same node,
        whose agent ignores a deploy_model it already has), or failed once that happened
        MAX_UNANSWERED_DEPLOYS times. Read from an index that may lag, so every write holds
        only for that very assignment."""
        node_id = sent.node_id
        if (sent.unacked_deploys or 0) + 1 < MAX_UNANSWERED_DEPLOYS:
            note = f"node {node_id} did not acknowledge it within {self._ack_text}; placing again"
            if self._deployments.unassign(sent, node_id, note, unanswered=True):
                self._placement.place(sent)
            return
        node = self._nodes.get(node_id)
        named = f"{node.name} ({node_id})" if node is not None else node_id

        def still_unanswered(latest: DeploymentItem) -> bool:
            same_assignment = latest.node_id == node_id and latest.assigned_at == sent.assigned_at
            return latest.status == Status.PROVISIONING and same_assignment

        self._ending.fail(
            sent,
            FailureReason.NO_NODE,
            f"node {named} never acknowledged the deployment: {MAX_UNANSWERED_DEPLOYS} "
            f"deploy_model messages went unanswered for {self._ack_text} each. Check that "
            "its agent is running and up to date (`prism node up`), or deploy to another node.",
            only_if=still_unanswered,
        )

    def _silent_connection(self, connection: ConnectionItem, now) -> None:
        """A connection not heard from since the cutoff (its socket closed, or quiet). Its
        node's silence counts from the later of its last heartbeat and the node's own
        last_seen_at (connect, hello, disconnect), so every dead connection of a node gives
        the same silence."""
        node = self._nodes.get(connection.node_id)
        if node is None or node.connection_id not in (None, connection.connection_id):
            # its node is gone, or online on a newer connection: this one is history
            self._connections.forget(connection)
            return
        seen_at = max(connection.last_seen_at, node.last_seen_at)
        if now - seen_at < self._node_timeout:
            return  # heard from since, through the node item
        on_it = node.status == "online" and node.connection_id == connection.connection_id
        if on_it and not self._nodes.mark_silent(node, connection, seen_at):
            return  # a heartbeat landed since the index was read: it is alive
        if self._silent_node(node, now - seen_at):
            self._connections.forget(connection)

    def _silent_node(self, node: NodeItem, silence: timedelta) -> bool:
        """Its deployments after `silence` (the node already marked offline). True once it is
        lost and all it ran has ended: later sweeps need not read it again."""
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
        return lost
