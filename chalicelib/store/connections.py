"""Node WebSocket connections and the liveness they carry.

A heartbeat is the most frequent write of the control plane (every 15 s from every node), so
it writes only the connection item: ~170 bytes, 1 write unit; and once a minute it moves the
item's entry in the sparse liveness index to the new minute (2 writes of ~110 bytes), so 1.5
write units a heartbeat on average. The node item (~1.3 KB with 8 GPUs, in two
ALL-projected indexes) is written only when liveness changes: connect, disconnect, the sweep
marking it offline, and the one heartbeat after that which brings it back.
"""

import contextlib
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from pynamodb.constants import ALL_OLD, BATCH_GET_PAGE_LIMIT
from pynamodb.exceptions import UpdateError

from chalicelib.batches import chunked
from chalicelib.store.model_base import utcnow
from chalicelib.store.node_models import ConnectionItem, NodeItem
from chalicelib.store.shards import LAST_SEEN_SHARDS, shard_of

CONNECTION_TTL_SECONDS = 3 * 3600  # API Gateway closes a connection after 2 hours
# A closed connection is kept until the sweep has handled the silence it began (at most
# PRISM_NODE_LOST_SECONDS plus a sweep); the TTL only cleans up after a sweep that never ran.
CLOSED_TTL_SECONDS = 24 * 3600


def _condition_failed(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def liveness_shard(connection_id: str) -> str:
    return shard_of(connection_id, LAST_SEEN_SHARDS)


def minute_of(moment: datetime) -> str:
    """The liveness index's sort key: a time to the minute (UTC), sortable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def needs_node(before: ConnectionItem) -> bool:
    """Whether a heartbeat must also bring the node item back online on its connection: it
    was marked offline while this socket lived, or the connection was not filed for liveness
    (opened before the liveness index, or forgotten by the sweep while its socket lived) and
    the node item may say offline or still be filed in the legacy index. Rare either way."""
    return before.marked_offline is not None or before.fleet is None


class ConnectionRepository:
    def open(self, node: NodeItem, connection_id: str) -> ConnectionItem:
        """The connection of a node just authenticated, seen now."""
        now = utcnow()
        connection = ConnectionItem(
            connection_id=connection_id,
            node_id=node.id,
            owner_id=node.owner_id,
            expires_at=int(time.time()) + CONNECTION_TTL_SECONDS,
            last_seen_at=now,
            seen_minute=minute_of(now),
            fleet=liveness_shard(connection_id),
        )
        connection.save()
        return connection

    def live(self, connection_id: str) -> ConnectionItem | None:
        """The connection a message arrived on, None if it was forgotten (its node revoked) or
        has closed. Consistent: a revocation must be seen at once."""
        try:
            connection = ConnectionItem.get(connection_id, consistent_read=True)
        except ConnectionItem.DoesNotExist:
            return None
        return None if connection.closed else connection

    def heartbeat(self, connection_id: str) -> ConnectionItem | None:
        """Seen now: one UpdateItem of the connection item and nothing else. Returns the item
        as it was (None: forgotten or closed, nothing written): `marked_offline` or no `fleet`
        there means the node item may need bringing back online (see `needs_node`)."""
        try:
            # The table connection, not Model.update, which always asks for ALL_NEW: the old
            # item says whether the node needs a write. ALL_OLD, not UPDATED_OLD: whether an
            # attribute SET to its old value counts as updated is no contract to rely on (moto
            # leaves it out), and the item is ~150 bytes; what is returned costs nothing.
            now = utcnow()
            response = ConnectionItem._get_connection().update_item(
                connection_id,
                actions=[
                    ConnectionItem.last_seen_at.set(now),
                    ConnectionItem.seen_minute.set(minute_of(now)),
                    ConnectionItem.fleet.set(liveness_shard(connection_id)),
                ],
                # never recreate a connection forgotten by a revocation, nor revive a closed one
                condition=ConnectionItem.connection_id.exists()
                & ConnectionItem.closed.does_not_exist(),
                return_values=ALL_OLD,
                return_consumed_capacity="NONE",
            )
        except UpdateError as exc:
            if _condition_failed(exc):
                return None
            raise
        return ConnectionItem.from_raw_data(response["Attributes"])

    def mark_offline(self, connection_id: str) -> None:
        """Its node was marked offline, or moved to a newer connection, while this socket may
        live on: its heartbeats try to bring the node back (until `clear_offline_mark`), so a
        live socket is never left behind a node that says offline."""
        with contextlib.suppress(UpdateError):  # forgotten or closed: no heartbeat will come
            ConnectionItem(connection_id=connection_id).update(
                actions=[ConnectionItem.marked_offline.set(utcnow())],
                condition=ConnectionItem.connection_id.exists()
                & ConnectionItem.closed.does_not_exist(),
            )

    def clear_offline_mark(self, marked: ConnectionItem) -> None:
        """The node is back online on it. Only the mark that was read: one set since (a post
        to it just failed) stays, for the next heartbeat."""
        with contextlib.suppress(UpdateError):
            ConnectionItem(connection_id=marked.connection_id).update(
                actions=[ConnectionItem.marked_offline.remove()],
                condition=ConnectionItem.marked_offline == marked.marked_offline,
            )

    def close(self, connection_id: str) -> ConnectionItem | None:
        """Its socket closed ($disconnect): its messages are refused from now on, and the item
        stays, filed in the liveness index with the time of its last heartbeat, so the sweep
        fails the node's deployments if it does not come back. None if it was forgotten."""
        connection = ConnectionItem(connection_id=connection_id)
        try:
            connection.update(
                actions=[
                    ConnectionItem.closed.set(True),
                    ConnectionItem.expires_at.set(int(time.time()) + CLOSED_TTL_SECONDS),
                ],
                condition=ConnectionItem.connection_id.exists(),
            )
        except UpdateError as exc:
            if _condition_failed(exc):
                return None
            raise
        return connection

    def silent_since(self, cutoff: datetime) -> Iterator[ConnectionItem]:
        """Filed connections last seen before the cutoff: from each shard of the liveness
        index, only the entries of the minutes up to the cutoff's (so the sweep reads the
        silent ones and at most a minute of others), then those connections themselves
        (consistent BatchGetItem) for their exact last heartbeat."""
        for shard in LAST_SEEN_SHARDS:
            entries = ConnectionItem.liveness.query(
                shard, ConnectionItem.seen_minute <= minute_of(cutoff)
            )
            for page in chunked(entries, BATCH_GET_PAGE_LIMIT):
                found = ConnectionItem.batch_get(
                    [e.connection_id for e in page], consistent_read=True
                )
                yield from (c for c in found if c.fleet and c.last_seen_at < cutoff)

    def forget(self, connection: ConnectionItem) -> None:
        """Out of the liveness index once its silence is handled (or it no longer matters). A
        closed one is deleted; one still open may be a live socket that went quiet, whose next
        message must still be accepted, so it only leaves the index (its next heartbeat files
        it back), and only if no heartbeat landed since it was read."""
        if connection.closed:
            self.delete(connection.connection_id)
            return
        with contextlib.suppress(UpdateError):  # heard from meanwhile: it stays
            ConnectionItem(connection_id=connection.connection_id).update(
                actions=[ConnectionItem.fleet.remove()],
                condition=ConnectionItem.last_seen_at == connection.last_seen_at,
            )

    def delete(self, connection_id: str) -> None:
        ConnectionItem(connection_id=connection_id).delete()

    def last_seen(self, connection_ids: Iterable[str]) -> dict[str, datetime]:
        """connection id -> when it was last heard from, for a page of nodes: one BatchGetItem
        per 100 connections."""
        found = ConnectionItem.batch_get(
            set(connection_ids), attributes_to_get=["connection_id", "last_seen_at"]
        )
        return {c.connection_id: c.last_seen_at for c in found if c.last_seen_at is not None}

    def owned(self, owner_id: str) -> list[ConnectionItem]:
        """Every connection of an owner's nodes, from a Scan (there is no owner index): operator
        commands only (revocation). The table holds live connections and, for a few minutes
        until the sweep forgets them, closed ones."""
        return list(ConnectionItem.scan(ConnectionItem.owner_id == owner_id, consistent_read=True))
