"""What every pynamodb model shares: the table settings, how times and exact money are stored,
and a charge's compact form (on meters, and on deployments billed before meters)."""

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from pynamodb.attributes import Attribute, NumberAttribute, UTCDateTimeAttribute
from pynamodb.constants import STRING

from chalicelib.config import settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class DecimalAttribute(NumberAttribute):
    """A DynamoDB number kept exact as a Decimal (money), not a float."""

    def serialize(self, value: Decimal) -> str:
        return str(Decimal(value))

    def deserialize(self, value: str) -> Decimal:
        return Decimal(value)


class TableMeta:
    """What every table shares: its region, endpoint and billing mode (names come per model)."""

    region = settings.region
    host = settings.aws_endpoint_url
    billing_mode = "PAY_PER_REQUEST"


@dataclass(frozen=True)
class LedgerEntry:
    """One charge, kept on its meter until a page of them moves to the ledger table."""

    period_start: datetime
    period_end: datetime
    amount_usd: Decimal
    price_per_hour_usd: Decimal
    cost_after_usd: Decimal


_TIME_FORMAT = UTCDateTimeAttribute()  # how every time is stored


class LedgerEntryAttribute(Attribute[LedgerEntry]):
    """A charge as one compact string, "start|end|amount|price|total": every charge rewrites the
    meter, tail included, which must stay under 1 KB, so each entry is one small value (not a
    map of five named attributes: half the bytes)."""

    attr_type = STRING

    def serialize(self, value: LedgerEntry) -> str:
        return "|".join(
            [
                _TIME_FORMAT.serialize(value.period_start),
                _TIME_FORMAT.serialize(value.period_end),
                str(value.amount_usd),
                str(value.price_per_hour_usd),
                str(value.cost_after_usd),
            ]
        )

    def deserialize(self, value: str) -> LedgerEntry:
        start, end, amount, price, total = value.split("|")
        return LedgerEntry(
            _TIME_FORMAT.deserialize(start),
            _TIME_FORMAT.deserialize(end),
            Decimal(amount),
            Decimal(price),
            Decimal(total),
        )
