"""Metering writes: the running total and its ledger entry, together, exactly once."""

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.config import settings
from chalicelib.store.models import DeploymentItem, LedgerItem

BILLABLE = "1"
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


@cache
def connection() -> Connection:
    # One per container: making a botocore client costs more than the transaction itself.
    return Connection(region=settings.region, host=settings.aws_endpoint_url)


class MeteringRepository:
    def billable(self) -> Iterator[DeploymentItem]:
        """Every billable deployment, by Query on the sparse index (never a Scan)."""
        return DeploymentItem.billable_index.query(BILLABLE)

    def start_billing(self, item: DeploymentItem, price_per_hour: Decimal, since: datetime):
        """From instance launch (the provider's reported price) until termination."""
        item.update(
            actions=[
                DeploymentItem.billable.set(BILLABLE),
                DeploymentItem.price_per_hour_usd.set(price_per_hour),
                DeploymentItem.last_metered_at.set(since),
            ],
            add_version_condition=False,
        )

    def charge(
        self, entry: BillableEntry, until: datetime, amount: Decimal, price: Decimal
    ) -> Decimal | None:
        """Add `amount` for [entry.since, until) and its ledger entry, in one transaction that
        holds only if nobody charged since `entry.since` and it is still billable. Returns the
        new total, or None when the condition failed (a duplicate, late or raced message)."""
        target = DeploymentItem(id=entry.deployment_id)
        target.version = 0  # so pynamodb increments the version instead of resetting it
        new_total = Decimal(entry.cost_accrued_usd) + amount
        ledger = LedgerItem(
            deployment_id=entry.deployment_id,
            period_end=until,
            period_start=entry.since,
            amount_usd=amount,
            price_per_hour_usd=price,
            cost_after_usd=new_total,
        )
        try:
            with TransactWrite(connection=connection()) as transaction:
                transaction.update(
                    target,
                    actions=[
                        DeploymentItem.cost_accrued_usd.add(amount),
                        DeploymentItem.last_metered_at.set(until),
                    ],
                    condition=(DeploymentItem.last_metered_at == entry.since)
                    & DeploymentItem.billable.exists(),
                    add_version_condition=False,
                )
                transaction.save(ledger, condition=LedgerItem.period_end.does_not_exist())
        except TransactWriteError as exc:
            if "ConditionalCheckFailed" in str(exc.cancellation_reasons or exc):
                return None
            raise
        return new_total

    def ledger(self, deployment_id: str, limit: int, after: str | None = None):
        start = (
            None
            if after is None
            else {"deployment_id": {"S": deployment_id}, "period_end": {"S": after}}
        )
        query = LedgerItem.query(
            deployment_id, scan_index_forward=False, limit=limit, last_evaluated_key=start
        )
        items = list(query)
        last = query.last_evaluated_key
        return items, (last["period_end"]["S"] if last else None)
