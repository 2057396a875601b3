"""Metering writes: the running total and its ledger entry, together, exactly once, in one
conditional update of the deployment; pages of entries then move to the ledger table."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import size

from chalicelib.store.deployments import is_condition_failure, update_if
from chalicelib.store.models import (
    DeploymentItem,
    LedgerEntry,
    LedgerItem,
)
from chalicelib.store.shards import BILLING_SHARDS

LEDGER_PAGE = 25  # charges kept on the deployment before they move to the ledger table
_TIME = DeploymentItem.last_metered_at  # its serializer gives the stored string


def stamp(moment: datetime) -> str:
    """A time as DynamoDB stores it (what the charge's condition compares)."""
    return _TIME.serialize(moment)


@dataclass(frozen=True)
class BillableEntry:
    """What the tick hands the worker, so the worker charges without reading first."""

    deployment_id: str
    last_metered_at: str  # as stored: the charge is conditional on it not having moved
    price_per_hour_usd: str
    cost_accrued_usd: str
    budget_max_usd: str | None

    @classmethod
    def of(cls, item: DeploymentItem) -> "BillableEntry":
        return cls(
            deployment_id=item.id,
            last_metered_at=stamp(item.last_metered_at),
            price_per_hour_usd=str(item.price_per_hour_usd or 0),
            cost_accrued_usd=str(item.cost_accrued_usd or 0),
            budget_max_usd=None if item.budget_max_usd is None else str(item.budget_max_usd),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def since(self) -> datetime:
        return _TIME.deserialize(self.last_metered_at)


class MeteringRepository:
    def billable(self) -> Iterator[DeploymentItem]:
        """Every billable deployment: one Query per key of the sparse index (never a Scan)."""
        for shard in BILLING_SHARDS:
            yield from DeploymentItem.billable_index.query(shard)

    def charge(
        self, entry: BillableEntry, until: datetime, amount: Decimal, price: Decimal
    ) -> Decimal | None:
        """Add `amount` for [entry.since, until) and its ledger entry in ONE conditional update
        of the deployment (exactly once, one item write), which holds only if nobody charged
        since `entry.since`, it is still billable and its tail has room. A full tail moves to
        the ledger table first. Returns the new total, or None when it was charged already (a
        duplicate, late or raced message) or is no longer billable."""
        new_total = Decimal(entry.cost_accrued_usd) + amount
        charged = LedgerEntry(entry.since, until, amount, price, new_total)
        for _ in range(2):
            if self._add_charge(entry, until, charged):
                return new_total
            item = _read(entry.deployment_id)
            if item is None or not _only_the_tail_was_full(item, entry):
                return None
            self._move_tail_to_ledger(item)
        return None

    @staticmethod
    def _add_charge(entry: BillableEntry, until: datetime, charged: LedgerEntry) -> bool:
        # Three actions and no functions beyond list_append: every action and clause costs a
        # conditional write (moto's above all), and this is the only write per charge.
        try:
            # The table connection, not Model.update: that one always asks for ALL_NEW and
            # bumps the version; this hot path needs neither (no writer saves a whole read
            # item back, and status writers never touch these fields).
            DeploymentItem._get_connection().update_item(
                entry.deployment_id,
                actions=[
                    DeploymentItem.cost_accrued_usd.add(charged.amount_usd),
                    DeploymentItem.last_metered_at.set(until),
                    DeploymentItem.ledger_tail.set(DeploymentItem.ledger_tail.append([charged])),
                ],
                condition=(DeploymentItem.last_metered_at == entry.since)
                & DeploymentItem.billable.exists()
                & (size(DeploymentItem.ledger_tail) < LEDGER_PAGE),
                return_consumed_capacity="NONE",  # pynamodb asks for it unless told
            )
        except UpdateError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    def _move_tail_to_ledger(self, item: DeploymentItem) -> None:
        """A page of charges to the ledger table (idempotent puts), then off the deployment,
        only if nobody moved them first. Entries briefly in both places are read once."""
        page = list(item.ledger_tail)
        with LedgerItem.batch_write() as batch:
            for charged in page:
                batch.save(
                    LedgerItem(
                        deployment_id=item.id,
                        period_end=charged.period_end,
                        period_start=charged.period_start,
                        amount_usd=charged.amount_usd,
                        price_per_hour_usd=charged.price_per_hour_usd,
                        cost_after_usd=charged.cost_after_usd,
                    )
                )
        update_if(
            item,
            [DeploymentItem.ledger_tail[i].remove() for i in range(len(page))],
            DeploymentItem.ledger_tail[0] == page[0],
        )

    def ledger(self, item: DeploymentItem, limit: int, after: str | None = None):
        """Charges newest first: the tail on the deployment, then the ledger table; `after` is
        the stored period_end the previous page ended at."""
        older_than = None if after is None else _TIME.deserialize(after)
        tail = [
            c for c in item.ledger_tail or [] if older_than is None or c.period_end < older_than
        ]
        condition = None if older_than is None else LedgerItem.period_end < older_than
        query = LedgerItem.query(
            item.id, condition, scan_index_forward=False, limit=limit + len(tail) + 1
        )
        by_end = {_TIME.serialize(c.period_end): c for c in query}
        by_end |= {_TIME.serialize(c.period_end): c for c in tail}  # moved but not yet removed
        ordered = [by_end[end] for end in sorted(by_end, reverse=True)]
        page = ordered[:limit]
        more = len(ordered) > limit or query.last_evaluated_key is not None
        return page, (_TIME.serialize(page[-1].period_end) if more and page else None)


def _only_the_tail_was_full(item: DeploymentItem, entry: BillableEntry) -> bool:
    """Why a charge was refused: True when only for want of room in the tail (move it and
    charge again), False when it was charged already or is no longer billable."""
    return (
        item.billable is not None
        and stamp(item.last_metered_at) == entry.last_metered_at
        and len(item.ledger_tail or []) >= LEDGER_PAGE
    )


def _read(deployment_id: str) -> DeploymentItem | None:
    try:
        return DeploymentItem.get(deployment_id, consistent_read=True)
    except DeploymentItem.DoesNotExist:
        return None
