"""pynamodb models of nodes, their WebSocket connections and their replies to requests."""

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from chalicelib.config import settings
from chalicelib.store.model_base import TableMeta, utcnow


class NodesByOwnerIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "by-owner"
        projection = AllProjection()

    owner_id = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class NodesByLastSeenIndex(GlobalSecondaryIndex):
    """Legacy: nodes by when they were last heard from, as heartbeats filed them before
    liveness moved to the connection item (ConnectionsLivenessIndex). Nothing writes a `fleet`
    any more; the sweep still reads it for node items from before, which leave it once
    handled. It can be deleted once no node item holds a `fleet`."""

    class Meta:
        index_name = "by-last-seen"
        projection = AllProjection()

    fleet = UnicodeAttribute(hash_key=True)
    last_seen_at = UTCDateTimeAttribute(range_key=True)


class GpuAttribute(MapAttribute):
    index = NumberAttribute()
    name = UnicodeAttribute()
    uuid = UnicodeAttribute(null=True)
    memory_total_mb = NumberAttribute(null=True)


class NodeItem(Model):
    """A machine running the node agent. Its token is stored only as a hash."""

    class Meta(TableMeta):
        table_name = settings.nodes_table

    id = UnicodeAttribute(hash_key=True)
    owner_id = UnicodeAttribute()
    name = UnicodeAttribute()
    token_hash = UnicodeAttribute()
    status = UnicodeAttribute(default="offline")  # online | offline
    connection_id = UnicodeAttribute(null=True)
    agent_version = UnicodeAttribute(null=True)
    gpus = ListAttribute(of=GpuAttribute, default=list)
    fleet = UnicodeAttribute(null=True)  # legacy by-last-seen shard (see NodesByLastSeenIndex)
    dedicated_to = UnicodeAttribute(null=True)  # the cloud deployment whose instance this is
    # GPU index (as a string) -> the deployment holding it, claimed in the same transaction
    # that assigns the deployment (null on nodes that never said hello since this existed).
    gpu_claims = MapAttribute(null=True)
    last_seen_at = UTCDateTimeAttribute(default_for_new=utcnow)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)

    by_owner = NodesByOwnerIndex()
    by_last_seen = NodesByLastSeenIndex()

    def gpu_claim_holders(self) -> dict[int, str]:
        """GPU index -> the deployment that claimed it."""
        claims = self.gpu_claims
        raw = claims.as_dict() if isinstance(claims, MapAttribute) else dict(claims or {})
        return {int(index): holder for index, holder in raw.items()}


class ConnectionsLivenessIndex(GlobalSecondaryIndex):
    """Connections the sweep must watch, under 16 shard keys (store/shards.py) and sparse:
    `fleet` is set at connect (and by each heartbeat) and removed once the sweep has handled
    the connection's silence. Sorted by the minute of the last heartbeat, not its time: an
    index key that changes costs two index writes (delete and put), so with heartbeats every
    15 s only one in four moves the entry, and the others write no index at all (the exact
    time is not projected). The sweep reads only the minutes before its cutoff."""

    class Meta:
        index_name = "liveness"
        projection = IncludeProjection(["node_id", "closed"])

    fleet = UnicodeAttribute(hash_key=True)
    seen_minute = UnicodeAttribute(range_key=True)


class ConnectionItem(Model):
    """A WebSocket connection -> the node on it (messages carry only the connection id), and
    the node's liveness: a heartbeat writes only this small item (and its index entry). Kept
    after $disconnect, `closed`, until the sweep has handled the silence it began."""

    class Meta(TableMeta):
        table_name = settings.connections_table

    connection_id = UnicodeAttribute(hash_key=True)
    node_id = UnicodeAttribute()
    owner_id = UnicodeAttribute()
    expires_at = NumberAttribute()  # TTL: 3 h from connect (API Gateway: 2 h), 1 day once closed
    last_seen_at = UTCDateTimeAttribute(null=True)  # connect, then each heartbeat
    seen_minute = UnicodeAttribute(null=True)  # last_seen_at to the minute: the index's sort key
    fleet = UnicodeAttribute(null=True)  # its liveness shard; none once its silence is handled
    closed = BooleanAttribute(null=True)  # its socket closed: its messages are refused
    # When its node was marked offline (or moved to a newer connection) while this socket
    # might live on: its next heartbeat tries to bring the node back online on it.
    marked_offline = UTCDateTimeAttribute(null=True)

    liveness = ConnectionsLivenessIndex()


class NodeReplyItem(Model):
    """A node's answer to a request (health_check, logs_request), picked up by the API call
    that is waiting for it."""

    class Meta(TableMeta):
        table_name = settings.node_replies_table

    request_id = UnicodeAttribute(hash_key=True)
    payload = UnicodeAttribute()  # the message JSON
    expires_at = NumberAttribute()  # TTL
