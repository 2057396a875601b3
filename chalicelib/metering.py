"""Money arithmetic for metering. Pure: no I/O, no clock.

USD is a Decimal with micro-dollar precision. A charge covers exactly the time since the last
one, so ticks that run late, early or not at all still add up to price x elapsed time.
"""

import math
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

MICRO = Decimal("0.000001")


def charge(price_per_hour: Decimal, since: datetime, until: datetime) -> Decimal:
    seconds = Decimal(str((until - since).total_seconds()))
    if seconds <= 0:
        return Decimal(0).quantize(MICRO)
    return (price_per_hour * seconds / Decimal(3600)).quantize(MICRO, rounding=ROUND_HALF_EVEN)


def seconds_until_exhausted(cost: Decimal, budget: Decimal, price_per_hour: Decimal) -> float:
    """When the budget runs out at this price (0 if it already has; inf if free)."""
    if cost >= budget:
        return 0.0
    if price_per_hour <= 0:
        return math.inf
    return float((budget - cost) * Decimal(3600) / price_per_hour)
