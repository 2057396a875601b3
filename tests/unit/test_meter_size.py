"""A charge rewrites the meter: it costs one write unit only while the meter stays under
1,024 bytes, as DynamoDB counts an item's size, whatever the price, total and tail."""

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from chalicelib.store.deployments import billing_shard
from chalicelib.store.meter_models import MeterItem
from chalicelib.store.metering import LEDGER_PAGE
from chalicelib.store.model_base import LedgerEntry

WRITE_UNIT = 1024


def dynamodb_size(serialized: dict) -> int:
    """An item's size by DynamoDB's rules: each attribute's name plus its value; a string its
    UTF-8 bytes; a number 1 byte per two significant digits plus 1; a list or map 3 bytes
    plus 1 per element plus the elements (a map's with their names)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in serialized.items())


def _value_size(value: dict) -> int:
    [(kind, body)] = value.items()
    if kind == "S":
        return len(body.encode())
    if kind == "N":
        digits = body.lstrip("-").replace(".", "").strip("0") or "0"
        return math.ceil(len(digits) / 2) + 1
    if kind == "L":
        return 3 + sum(1 + _value_size(element) for element in body)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in body.items())
    if kind in ("BOOL", "NULL"):
        return 1
    raise AssertionError(f"no size rule for {kind}")


def test_the_size_rules():
    assert dynamodb_size({"ab": {"S": "xyz"}}) == 5
    assert dynamodb_size({"n": {"N": "123.450"}}) == 1 + 3 + 1  # 12345: 5 digits
    assert dynamodb_size({"l": {"L": [{"S": "ab"}, {"N": "7"}]}}) == 1 + 3 + (1 + 2) + (1 + 2)


def test_the_largest_meter_stays_within_one_write_unit():
    """A full tail of the longest realistic charges: a budget and a total near the 1,000,000
    limit (6 decimals, as stored), a price with 6 decimals above $100/h, a charge of weeks."""
    start = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    price, total = Decimal("123.456789"), Decimal("999999.999999")
    tail = [
        LedgerEntry(
            start + timedelta(days=i),
            start + timedelta(days=i + 1),
            Decimal("99999.999999"),
            price,
            total,
        )
        for i in range(LEDGER_PAGE)
    ]
    meter = MeterItem(
        deployment_id="dep_ffffffffffffffff",
        billable=billing_shard("dep_ffffffffffffffff"),
        price_per_hour_usd=price,
        budget_max_usd=Decimal("999999.999999"),
        cost_accrued_usd=total,
        last_metered_at=start,
        ledger_tail=tail,
    )
    serialized = meter.serialize()
    assert set(serialized) == set(MeterItem.get_attributes())  # every attribute counted
    size = dynamodb_size(serialized)
    print(f"largest meter: {size} bytes")
    assert size < WRITE_UNIT
