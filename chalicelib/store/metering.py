"""Metering writes: the running total and its ledger entry, together, exactly once, in one
conditional update of the deployment's meter; pages of entries then move to the ledger table.

The meter (MeterItem) is apart from the deployment so that a charge costs one write unit: an
item under 1 KB whose index entry holds only keys, which a charge never changes. Each full page
of LEDGER_PAGE charges costs LEDGER_PAGE more (one small ledger row each): at most 2 write
units a charge in all, where a charge of the deployment item cost 4-10.
"""

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from pynamodb.constants import BATCH_GET_PAGE_LIMIT
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import size

from chalicelib.batches import chunked
from chalicelib.store.meter_models import LedgerItem, MeterItem
from chalicelib.store.model_base import LedgerEntry
from chalicelib.store.shards import BILLING_SHARDS
from chalicelib.store.writes import is_condition_failure

# Charges kept on the meter before they move to the ledger table: 8 keep the meter under
# 1,024 bytes, one write unit, at any realistic price and total (tests/unit/test_meter_size.py).
LEDGER_PAGE = 8
_TIME = MeterItem.last_metered_at  # its serializer gives the stored string


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
    # The meter's tail was full when read: the charge moves it first, instead of a write the
    # condition would refuse (a refused conditional write still costs a write unit).
    tail_full: bool = False

    @classmethod
    def of(cls, meter: MeterItem) -> "BillableEntry":
        return cls(
            deployment_id=meter.deployment_id,
            last_metered_at=stamp(meter.last_metered_at),
            price_per_hour_usd=str(meter.price_per_hour_usd or 0),
            cost_accrued_usd=str(meter.cost_accrued_usd or 0),
            budget_max_usd=None if meter.budget_max_usd is None else str(meter.budget_max_usd),
            tail_full=len(meter.ledger_tail or []) >= LEDGER_PAGE,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def since(self) -> datetime:
        return _TIME.deserialize(self.last_metered_at)


class MeteringRepository:
    def billable(self) -> Iterator[MeterItem]:
        """Every billable meter: the keys from one Query per key of the sparse index (never a
        Scan), page by page, then the meters themselves by consistent BatchGetItem, 100 keys
        a call (pynamodb asks again for UnprocessedKeys). Nothing is held beyond an index page
        and 100 meters."""
        keys = (
            listed.deployment_id
            for shard in BILLING_SHARDS
            for listed in MeterItem.billable_index.query(shard)
        )
        for chunk in chunked(keys, BATCH_GET_PAGE_LIMIT):
            for meter in MeterItem.batch_get(chunk, consistent_read=True):
                if meter.billable:  # not if billing ended since the index was read
                    yield meter

    def meter(self, deployment_id: str) -> MeterItem | None:
        try:
            return MeterItem.get(deployment_id, consistent_read=True)
        except MeterItem.DoesNotExist:
            return None

    def meters(self, deployment_ids: Iterable[str]) -> dict[str, MeterItem]:
        """The meters of up to 100 deployments in one consistent BatchGetItem (none: no call);
        a deployment without one is left out."""
        wanted = set(deployment_ids)
        if not wanted:
            return {}
        return {m.deployment_id: m for m in MeterItem.batch_get(wanted, consistent_read=True)}

    def charge(
        self, entry: BillableEntry, until: datetime, amount: Decimal, price: Decimal
    ) -> Decimal | None:
        """Add `amount` for [entry.since, until) and its ledger entry in ONE conditional update
        of the meter (exactly once, one item write), which holds only if nobody charged since
        `entry.since` and it is still billable. A full tail (known from the tick's read, else
        found by a refused append) goes to the ledger table first and the same charge then
        starts the next page. Returns the new total, or None when it was charged already (a
        duplicate, late or raced message) or is no longer billable."""
        new_total = Decimal(entry.cost_accrued_usd) + amount
        charged = LedgerEntry(entry.since, until, amount, price, new_total)
        if not entry.tail_full and _add_charge(entry, until, charged):
            return new_total
        meter = self.meter(entry.deployment_id)
        if meter is None or not _only_the_tail_was_full(meter, entry):
            return None
        page = list(meter.ledger_tail)
        write_to_ledger(entry.deployment_id, page)
        return new_total if _add_charge(entry, until, charged, moved=page[0]) else None

    def charge_once(
        self, deployment_id: str, since: datetime, until: datetime, price: Decimal, amount: Decimal
    ) -> None:
        """A charge outside the metering tick, for an instance that ran but was never recorded
        (its deployment stopped while it launched): its ledger row, then the meter's total (made
        if missing, never filed as billable), once: a repeat for the same `until` adds nothing."""
        meter = self.meter(deployment_id)
        total = (meter.cost_accrued_usd if meter else Decimal(0)) + amount
        write_to_ledger(deployment_id, [LedgerEntry(since, until, amount, price, total)])
        try:
            MeterItem(deployment_id=deployment_id).update(
                actions=[
                    MeterItem.cost_accrued_usd.add(amount),
                    MeterItem.last_metered_at.set(until),
                    MeterItem.price_per_hour_usd.set(MeterItem.price_per_hour_usd | price),
                    MeterItem.ledger_tail.set(MeterItem.ledger_tail | []),
                ],
                condition=MeterItem.last_metered_at.does_not_exist()
                | (MeterItem.last_metered_at < until),
            )
        except UpdateError as exc:
            if not is_condition_failure(exc):
                raise

    def ledger(
        self, deployment_id: str, tail: list[LedgerEntry], limit: int, after: str | None = None
    ):
        """Charges newest first: `tail` (the meter's newest charges), then the ledger table;
        `after` is the stored period_end the previous page ended at."""
        older_than = None if after is None else _TIME.deserialize(after)
        tail = [c for c in tail if older_than is None or c.period_end < older_than]
        condition = None if older_than is None else LedgerItem.period_end < older_than
        query = LedgerItem.query(
            deployment_id, condition, scan_index_forward=False, limit=limit + len(tail) + 1
        )
        by_end = {_TIME.serialize(c.period_end): c for c in query}
        by_end |= {_TIME.serialize(c.period_end): c for c in tail}  # moved, still on the meter
        ordered = [by_end[end] for end in sorted(by_end, reverse=True)]
        page = ordered[:limit]
        more = len(ordered) > limit or query.last_evaluated_key is not None
        return page, (_TIME.serialize(page[-1].period_end) if more and page else None)


def write_to_ledger(deployment_id: str, charges: list[LedgerEntry]) -> None:
    """Charges to the ledger table with idempotent puts (keyed by their end: a page written
    twice is the same rows)."""
    with LedgerItem.batch_write() as batch:
        for charged in charges:
            batch.save(
                LedgerItem(
                    deployment_id=deployment_id,
                    period_end=charged.period_end,
                    period_start=charged.period_start,
                    amount_usd=charged.amount_usd,
                    price_per_hour_usd=charged.price_per_hour_usd,
                    cost_after_usd=charged.cost_after_usd,
                )
            )


def _add_charge(
    entry: BillableEntry, until: datetime, charged: LedgerEntry, moved: LedgerEntry | None = None
) -> bool:
    """The charge's one write. `moved`: the first entry of the full tail just written to the
    ledger table; the charge then replaces the tail, only if it is still that page."""
    tail = MeterItem.ledger_tail
    condition = (MeterItem.last_metered_at == entry.since) & MeterItem.billable.exists()
    if moved is None:
        new_tail = tail.set(tail.append([charged]))
        condition &= size(tail) < LEDGER_PAGE
    else:
        new_tail = tail.set([charged])
        condition &= tail[0] == moved
    try:
        # The table connection, not Model.update: that one always asks for ALL_NEW, which
        # this hot path does not need.
        MeterItem._get_connection().update_item(
            entry.deployment_id,
            actions=[
                MeterItem.cost_accrued_usd.add(charged.amount_usd),
                MeterItem.last_metered_at.set(until),
                new_tail,
            ],
            condition=condition,
            return_consumed_capacity="NONE",  # pynamodb asks for it unless told
        )
    except UpdateError as exc:
        if is_condition_failure(exc):
            return False
        raise
    return True


def _only_the_tail_was_full(meter: MeterItem, entry: BillableEntry) -> bool:
    """Why a charge was refused: True when only for want of room in the tail (move it and
    charge again), False when it was charged already or is no longer billable."""
    return (
        meter.billable is not None
        and stamp(meter.last_metered_at) == entry.last_metered_at
        and len(meter.ledger_tail or []) >= LEDGER_PAGE
    )
