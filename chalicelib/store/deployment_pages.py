"""An owner's deployments a page at a time, newest first: one Query per index partition (the
owner, or one per requested status), merged by creation time; never a Scan."""

import heapq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

from chalicelib.lifecycle import Status
from chalicelib.store.deployments import owner_status_key
from chalicelib.store.models import DeploymentItem


@dataclass(frozen=True)
class PageCursor:
    """Where each listed partition stopped: (created_at, id) of its last returned item, or None
    when it has not been read yet. Partitions absent from `positions` are exhausted."""

    positions: dict[str, tuple[str, str] | None]


@dataclass(frozen=True)
class Page:
    items: list[DeploymentItem]
    cursor: PageCursor | None


def owned_page(
    owner_id: str, statuses: list[Status] | None, limit: int, cursor: PageCursor | None = None
) -> Page:
    if statuses:
        partitions = {
            owner_status_key(owner_id, s.value): DeploymentItem.by_owner_status for s in statuses
        }
    else:
        partitions = {owner_id: DeploymentItem.by_owner}
    if cursor is None:
        positions = dict.fromkeys(partitions)
    else:
        positions = {p: pos for p, pos in cursor.positions.items() if p in partitions}

    def fetch(partition: str) -> list[DeploymentItem]:
        index = partitions[partition]
        start = positions[partition]
        start_key = None if start is None else _index_key(index, partition, *start)
        query = index.query(
            partition, scan_index_forward=False, limit=limit + 1, last_evaluated_key=start_key
        )
        return list(query)

    names = list(positions)
    if len(names) > 1:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            fetched = dict(zip(names, pool.map(fetch, names), strict=True))
    else:
        fetched = {name: fetch(name) for name in names}
    return _merged(fetched, positions, limit)


def _merged(
    fetched: dict[str, list[DeploymentItem]],
    positions: dict[str, tuple[str, str] | None],
    limit: int,
) -> Page:
    """The newest `limit` of what each partition returned, and where each must go on from."""
    tagged = [[(item.created_at, name, item) for item in items] for name, items in fetched.items()]
    merged = heapq.merge(*tagged, key=lambda t: t[0], reverse=True)
    page = list(islice(merged, limit))

    next_positions: dict[str, tuple[str, str] | None] = {}
    for name, items in fetched.items():
        taken = [item for _, n, item in page if n == name]
        exhausted = len(taken) == len(items) and len(items) <= limit
        if exhausted:
            continue
        last = taken[-1] if taken else None
        next_positions[name] = (
            (DeploymentItem.created_at.serialize(last.created_at), last.id)
            if last
            else positions[name]
        )
    items = [item for _, _, item in page]
    return Page(items=items, cursor=PageCursor(next_positions) if next_positions else None)


def _index_key(index, partition: str, created_at: str, deployment_id: str) -> dict:
    hash_name = "owner_status" if index is DeploymentItem.by_owner_status else "owner_id"
    return {
        "id": {"S": deployment_id},
        hash_name: {"S": partition},
        "created_at": {"S": created_at},
    }
