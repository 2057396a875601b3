"""Sharded partition keys for the sparse indexes every item of a kind is written to.

One partition key takes at most ~1,000 write units and 3,000 read units a second. An index
whose key is a constant ("every billable deployment", "every node by when it was last seen")
puts the whole fleet on one partition, so each such index spreads its items over a few keys
chosen by a hash of the item's id, and its readers Query every shard (a handful of Queries,
each returning only its share). The values are the index's hash key values only: the key
schema is unchanged, so a deployed stack moves to them without an index change.
"""

import zlib


def _keys(count: int) -> tuple[str, ...]:
    return tuple(str(n) for n in range(count))


BILLING_SHARDS = _keys(8)  # deployments table, index "billable"
CLOUD_SHARDS = _keys(8)  # deployments table, index "cloud"
UNPLACED_SHARDS = _keys(8)  # deployments table, index "unplaced"
AWAITING_ACK_SHARDS = _keys(8)  # deployments table, index "awaiting-ack" (items from before: "1")
# connections table, index "liveness" (a heartbeat moves its entry once a minute); also the
# keys of the nodes table's legacy "by-last-seen", still read for node items from before
LAST_SEEN_SHARDS = _keys(16)
# What items written before the shards were keyed under, still read until they move.
LEGACY_LAST_SEEN = "all"


def shard_of(item_id: str, keys: tuple[str, ...]) -> str:
    return keys[zlib.crc32(item_id.encode()) % len(keys)]
