"""Nodes, their liveness as the node item records it (online on which connection), and the
replies they send to API requests. Connections themselves: store/connections.py."""

import contextlib
import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.config import settings
from chalicelib.protocol import NODE_TOKEN_PREFIX, node_id_of_token
from chalicelib.store.connections import ConnectionRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.node_models import ConnectionItem, GpuAttribute, NodeItem, NodeReplyItem
from chalicelib.store.shards import LAST_SEEN_SHARDS, LEGACY_LAST_SEEN

NODE_ID = re.compile(r"node_[0-9a-f]{16}")
MAX_TOKEN_LENGTH = 256  # ours are about 80 characters
REPLY_TTL_SECONDS = 600


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(node_id: str) -> str:
    return f"{NODE_TOKEN_PREFIX}{node_id}.{secrets.token_urlsafe(32)}"


def gpu_claim(node_id: str, deployment_id: str, indices: list[int]):
    """The node side of a placement: (item, actions, condition) claiming `indices` for the
    deployment, each only if free or already its own (a repeated claim is harmless). The
    caller writes it in one transaction with the deployment's assignment, so a claim exists
    exactly when its deployment was assigned that GPU."""
    slots = [NodeItem.gpu_claims[str(index)] for index in indices]
    condition = None
    for slot in slots:
        condition &= slot.does_not_exist() | (slot == deployment_id)
    return NodeItem(id=node_id), [slot.set(deployment_id) for slot in slots], condition


def release_gpus(node_id: str, deployment_id: str, indices: list[int]) -> int:
    """Free the deployment's GPUs on a node, each only while the claim is still its own (a
    stale claim may have been reclaimed and given to another). Returns how many it freed."""
    freed = 0
    for index in indices:
        slot = NodeItem.gpu_claims[str(index)]
        try:
            NodeItem(id=node_id).update(actions=[slot.remove()], condition=slot == deployment_id)
            freed += 1
        except UpdateError as exc:
            if getattr(exc, "cause_response_code", None) != "ConditionalCheckFailedException":
                raise
    return freed


def _condition_failed(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


class NodeRepository:
    def __init__(self, connections: ConnectionRepository | None = None):
        self._connections = connections or ConnectionRepository()

    def register(
        self, owner_id: str, name: str, dedicated_to: str | None = None
    ) -> tuple[NodeItem, str]:
        """A new node and its token (shown once; only the hash is stored). `dedicated_to`: the
        cloud deployment whose instance this node is; it runs nothing else."""
        node_id = "node_" + uuid.uuid4().hex[:16]
        token = _new_token(node_id)
        node = NodeItem(
            id=node_id,
            owner_id=owner_id,
            name=name,
            token_hash=hash_token(token),
            dedicated_to=dedicated_to,
        )
        node.save(condition=NodeItem.id.does_not_exist())
        return node, token

    def new_token(self, node: NodeItem) -> str:
        """Replace a node's token: the old one stops working at once."""
        token = _new_token(node.id)
        node.update(actions=[NodeItem.token_hash.set(hash_token(token))])
        return token

    def retire(self, node_id: str) -> None:
        """A dedicated node whose instance is gone: forget it (and so its token)."""
        NodeItem(id=node_id).delete()

    def get(self, node_id: str) -> NodeItem | None:
        try:
            return NodeItem.get(node_id, consistent_read=True)
        except NodeItem.DoesNotExist:
            return None

    def get_many(self, node_ids: list[str]) -> list[NodeItem]:
        """Consistent reads (GPU claims must be current), in the order asked; gone ones left
        out."""
        found = {n.id: n for n in NodeItem.batch_get(set(node_ids), consistent_read=True)}
        return [found[node_id] for node_id in node_ids if node_id in found]

    def authenticate(self, token: str) -> NodeItem | None:
        node_id = node_id_of_token(token) if len(token) <= MAX_TOKEN_LENGTH else None
        # Only a well-formed id reaches DynamoDB (an oversized key would be its error, a 500).
        node = self.get(node_id) if node_id and NODE_ID.fullmatch(node_id) else None
        if node is None or not secrets.compare_digest(node.token_hash, hash_token(token)):
            return None
        return node

    def list_owned(self, owner_id: str) -> list[NodeItem]:
        return list(NodeItem.by_owner.query(owner_id, scan_index_forward=False))

    def online_owned(self, owner_id: str) -> list[NodeItem]:
        return [n for n in self.list_owned(owner_id) if n.status == "online" and n.connection_id]

    def silent_since(self, cutoff: datetime) -> Iterator[NodeItem]:
        """Legacy: nodes filed in the nodes table's by-last-seen index (`fleet` on the node
        item, written by heartbeats before liveness moved to the connection item), silent since
        the cutoff and not yet forgotten (see `forget_silent`). Nothing files a node there any
        more: a connect or a heartbeat takes it out (see `mark_connected`, `touch`)."""
        for shard in (*LAST_SEEN_SHARDS, LEGACY_LAST_SEEN):
            yield from NodeItem.by_last_seen.query(shard, NodeItem.last_seen_at < cutoff)

    def forget_silent(self, node: NodeItem) -> None:
        """Legacy: out of the by-last-seen index once its silence is handled (its deployments
        ended), for good."""
        with contextlib.suppress(UpdateError):  # it was heard from meanwhile: it stays
            node.update(
                actions=[NodeItem.fleet.remove()],
                condition=NodeItem.last_seen_at == node.last_seen_at,
            )

    def mark_connected(self, node: NodeItem, connection_id: str) -> bool:
        """Online on this connection, unless the node was deleted or its token replaced since
        it was authenticated (False: refuse the connection). The connection is recorded
        first, so whoever revokes the node after this finds it and closes it. Its liveness is
        the connection's from now on: the node leaves the legacy by-last-seen index."""
        connection = self._connections.open(node, connection_id)
        previous = node.connection_id
        try:
            node.update(
                actions=[
                    NodeItem.status.set("online"),
                    NodeItem.connection_id.set(connection_id),
                    NodeItem.last_seen_at.set(utcnow()),
                    NodeItem.fleet.remove(),
                ],
                condition=NodeItem.token_hash == node.token_hash,
            )
        except UpdateError as exc:
            if not _condition_failed(exc):
                raise
            connection.delete()
            return False
        if previous and previous != connection_id:
            # Usually a dead socket; if it lives on (another agent with this token), its
            # heartbeats bring the node back once this newer connection closes.
            self._connections.mark_offline(previous)
        return True

    def record_hello(self, node: NodeItem, gpus: list[dict], agent_version: str) -> None:
        with contextlib.suppress(UpdateError):  # deleted meanwhile: never recreate a part of it
            node.update(
                actions=[
                    NodeItem.gpus.set([GpuAttribute(**gpu) for gpu in gpus]),
                    # claims are single map entries, so the map must exist before the first
                    NodeItem.gpu_claims.set(NodeItem.gpu_claims | {}),
                    NodeItem.agent_version.set(agent_version),
                    NodeItem.last_seen_at.set(utcnow()),
                ],
                condition=NodeItem.id.exists(),
            )

    def ensure_gpu_claims(self, node: NodeItem) -> None:
        """The claims map on a node that has not said hello since it existed."""
        if node.gpu_claims is None:
            with contextlib.suppress(UpdateError):  # someone else made it first
                node.update(
                    actions=[NodeItem.gpu_claims.set({})],
                    condition=NodeItem.gpu_claims.does_not_exist(),
                )

    def release_stale_claim(self, node_id: str, index: int, holder: str) -> bool:
        """A claim whose holder no longer holds the GPU (ended, gone, moved): freed."""
        return release_gpus(node_id, holder, [index]) == 1

    def touch(self, node_id: str, connection_id: str) -> bool:
        """A heartbeat after the node was marked offline while its socket lived (or on a
        connection not filed for liveness): seen now, online on this connection unless the
        node has moved to a newer one (a late heartbeat from a dropped socket must not point
        back at it), and out of the legacy by-last-seen index. Rare: other heartbeats write
        only their connection (store/connections.py). False: deleted, or moved on."""
        try:
            NodeItem(id=node_id).update(
                actions=[
                    NodeItem.last_seen_at.set(utcnow()),
                    NodeItem.fleet.remove(),
                    NodeItem.status.set("online"),
                    NodeItem.connection_id.set(connection_id),
                ],
                condition=NodeItem.id.exists()
                & (
                    NodeItem.connection_id.does_not_exist()
                    | (NodeItem.connection_id == connection_id)
                ),
            )
        except UpdateError as exc:
            if not _condition_failed(exc):
                raise
            return False
        return True

    def mark_offline(self, node: NodeItem, connection_id: str) -> None:
        """Offline after a message could not be posted to its connection, unless the node
        already reconnected on another one. The socket may still be alive (the management API
        failed, not the socket), so the connection is marked in the same transaction: its next
        heartbeat brings the node back."""
        codes = self._offline_and_marked(
            node.id, connection_id, ConnectionItem.connection_id.exists()
        )
        if codes is not None and codes[1] == "ConditionalCheckFailed":  # connection forgotten
            self.mark_disconnected(node.id, connection_id)

    def mark_silent(self, node: NodeItem, connection: ConnectionItem, seen_at: datetime) -> bool:
        """The sweep: offline for the silence of its connection, last seen when it last was,
        with the connection marked (see `mark_offline`), only while the connection's
        `last_seen_at` is what the sweep read: False when a heartbeat landed meanwhile (it is
        alive) or the node moved to another connection."""
        unchanged = ConnectionItem.last_seen_at == connection.last_seen_at
        refused = self._offline_and_marked(node.id, connection.connection_id, unchanged, seen_at)
        return refused is None

    def _offline_and_marked(
        self, node_id: str, connection_id: str, connection_condition, seen_at=None
    ) -> list[str | None] | None:
        """The node offline (only while online on this connection) and the connection marked
        `marked_offline`, both or neither. None when done, else the reason each was refused
        (node, connection; None where its condition held)."""
        actions = [NodeItem.status.set("offline"), NodeItem.connection_id.remove()]
        if seen_at is not None:
            actions.append(NodeItem.last_seen_at.set(seen_at))
        try:
            with TransactWrite(connection=_transactions()) as transaction:
                transaction.update(
                    NodeItem(id=node_id), actions, NodeItem.connection_id == connection_id
                )
                transaction.update(
                    ConnectionItem(connection_id=connection_id),
                    [ConnectionItem.marked_offline.set(utcnow())],
                    connection_condition,
                )
        except TransactWriteError as exc:
            reasons = exc.cancellation_reasons
            if exc.cause_response_code != "TransactionCanceledException" or not reasons:
                raise
            return [reason.code if reason is not None else None for reason in reasons]
        return None

    def mark_disconnected(self, node_id: str, connection_id: str) -> None:
        """Offline and last seen now, its socket closed, unless it already reconnected on
        another connection (the newer one wins)."""
        with contextlib.suppress(UpdateError):
            NodeItem(id=node_id).update(
                actions=[
                    NodeItem.status.set("offline"),
                    NodeItem.connection_id.remove(),
                    NodeItem.last_seen_at.set(utcnow()),
                ],
                condition=NodeItem.connection_id == connection_id,
            )

    # --- revocation (prism admin delete-user) ---------------------------------------------

    def revoke_owned(self, owner_id: str) -> tuple[list[NodeItem], set[str]]:
        """Every node of an owner deleted with its token, and every connection recorded for
        them forgotten, so each further message on one is answered `unknown_connection` and
        changes nothing, and a reconnect is refused. Returns the nodes and the connection ids
        to close (those not closed already)."""
        nodes = self.list_owned(owner_id)
        for node in nodes:
            NodeItem(id=node.id).delete()
        connection_ids = {node.connection_id for node in nodes if node.connection_id}
        for connection in self._connections.owned(owner_id):
            self._connections.delete(connection.connection_id)
            if not connection.closed:
                connection_ids.add(connection.connection_id)
        return nodes, connection_ids


def _transactions() -> Connection:
    """For transactions, which span tables (the models each keep their own connection)."""
    return Connection(region=settings.region, host=settings.aws_endpoint_url)


class ReplyRepository:
    def put(self, request_id: str, message_json: str) -> None:
        NodeReplyItem(
            request_id=request_id,
            payload=message_json,
            expires_at=int(time.time()) + REPLY_TTL_SECONDS,
        ).save()

    def take(self, request_id: str) -> dict | None:
        try:
            item = NodeReplyItem.get(request_id, consistent_read=True)
        except NodeReplyItem.DoesNotExist:
            return None
        item.delete()
        return json.loads(item.payload)
