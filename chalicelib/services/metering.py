"""Cost metering: the tick fans billable deployments out over SQS; the worker charges each one
exactly once per period and stops it when its budget is spent."""

import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from chalicelib.batches import chunked
from chalicelib.logs import Unit, logger, metrics
from chalicelib.metering import charge, seconds_until_exhausted
from chalicelib.queue import MAX_BATCH, WorkQueue
from chalicelib.store import legacy_billing
from chalicelib.store.metering import BillableEntry, MeteringRepository, stamp

ENTRIES_PER_MESSAGE = 100  # many deployments per message: fewer SQS requests and invocations
METER_THREADS = 8  # each charge waits on one DynamoDB write: a message's charges go side by side


@dataclass(frozen=True)
class TickReport:
    deployments: int
    messages: int


@dataclass(frozen=True)
class Bill:
    """One deployment charged: what it cost, its new total, whether that spent its budget."""

    amount: Decimal
    total: Decimal
    budget_spent: bool = False


class MeteringService:
    def __init__(
        self,
        repo: MeteringRepository,
        queue: WorkQueue,
        stop_for_budget: Callable[[str, str], None],
        clock: Callable[[], datetime],
        interval_seconds: int = 60,
    ):
        self._repo = repo
        self._queue = queue
        self._stop_for_budget = stop_for_budget
        self._clock = clock
        self._interval = interval_seconds

    def tick(self) -> TickReport:
        """Messages go out as the meters page in, so workers start before the reads end.
        Deployments still billed on their own item (an upgraded stack) move to meters first."""
        moved = legacy_billing.move_all()
        if moved:
            logger.info("billing moved to meters", extra={"deployments": moved})
        deployments = messages = 0
        batch_of_entries = ENTRIES_PER_MESSAGE * MAX_BATCH
        for chunk in chunked(self._repo.billable(), batch_of_entries):
            entries = [BillableEntry.of(meter).to_dict() for meter in chunk]
            bodies = [{"entries": part} for part in chunked(entries, ENTRIES_PER_MESSAGE)]
            self._queue.send_all(bodies)
            deployments, messages = deployments + len(entries), messages + len(bodies)
        logger.info("metering tick", extra={"billable": deployments, "messages": messages})
        return TickReport(deployments, messages)

    def work_batch(self, messages) -> dict:
        """(message id, body) pairs from one SQS batch -> the partial batch response: only
        the messages that failed are retried (then dead-lettered after 5 tries)."""
        failures = []
        for message_id, body in messages:
            try:
                self.work(json.loads(body))
            except Exception:
                logger.exception("metering message failed", extra={"message_id": message_id})
                failures.append({"itemIdentifier": message_id})
        metrics.flush_metrics()  # one EMF line per invocation
        return {"batchItemFailures": failures}

    def work(self, body: dict) -> None:
        """One queue message: charge every deployment in it up to now."""
        now = self._clock()
        with ThreadPoolExecutor(METER_THREADS) as pool:
            outcomes = list(pool.map(lambda raw: self._bill_or_error(raw, now), body["entries"]))
        _record(b for b in outcomes if isinstance(b, Bill))
        failed = sum(1 for b in outcomes if isinstance(b, Exception))
        if failed:  # retried as a whole; the entries charged already are refused by condition
            raise RuntimeError(f"{failed} of {len(outcomes)} deployments not metered")

    def meter(self, entry: BillableEntry, now: datetime) -> Decimal | None:
        """Charge one deployment up to `now`; its new total, or None when it was charged
        already (a duplicate, late or raced message) or is no longer billable."""
        bill = self._bill(entry, now)
        _record([bill] if bill else [])
        return bill.total if bill else None

    def _bill_or_error(self, raw: dict, now: datetime) -> Bill | Exception | None:
        try:
            return self._bill(BillableEntry(**raw), now)
        except Exception as exc:  # one bad entry must not leave the rest of the message unbilled
            logger.exception("metering a deployment failed", extra={"entry": raw})
            return exc

    def _bill(self, entry: BillableEntry, now: datetime) -> Bill | None:
        price = Decimal(entry.price_per_hour_usd)
        amount = charge(price, entry.since, now)
        total = self._repo.charge(entry, now, amount, price)
        if total is None:
            return None
        if entry.budget_max_usd is None:
            return Bill(amount, total)
        budget = Decimal(entry.budget_max_usd)
        if total >= budget:
            self._stop_for_budget(
                entry.deployment_id, f"budget ${budget} reached: ${total} spent at ${price}/h"
            )
            return Bill(amount, total, budget_spent=True)
        left = seconds_until_exhausted(total, budget, price)
        if left < self._interval:
            # It runs out before the next tick: come back at that moment, so the overshoot is
            # seconds of cost, not a minute.
            follow_up = BillableEntry(
                entry.deployment_id,
                stamp(now),
                entry.price_per_hour_usd,
                str(total),
                entry.budget_max_usd,
            )
            self._queue.send_later({"entries": [follow_up.to_dict()]}, math.ceil(left))
        return Bill(amount, total)


def _record(bills: Iterable[Bill]) -> None:
    """EMF metrics, added from one thread (the metrics object is not thread-safe)."""
    bills = list(bills)
    if not bills:
        return
    metrics.add_metric(name="DeploymentsMetered", unit=Unit.Count, value=len(bills))
    metrics.add_metric(
        name="UsdCharged", unit=Unit.NoUnit, value=float(sum(b.amount for b in bills))
    )
    stops = sum(1 for b in bills if b.budget_spent)
    if stops:
        metrics.add_metric(name="BudgetStops", unit=Unit.Count, value=stops)
