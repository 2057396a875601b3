"""Cost metering: the tick fans billable deployments out over SQS; the worker charges each one
exactly once per period and stops it when its budget is spent."""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from chalicelib.logs import Unit, logger, metrics
from chalicelib.metering import charge, seconds_until_exhausted
from chalicelib.queue import WorkQueue
from chalicelib.store.metering import BillableEntry, MeteringRepository, stamp

ENTRIES_PER_MESSAGE = 100  # many deployments per message: fewer SQS requests and invocations


@dataclass(frozen=True)
class TickReport:
    deployments: int
    messages: int


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
        entries = [BillableEntry.of(item).to_dict() for item in self._repo.billable()]
        bodies = [
            {"entries": entries[i : i + ENTRIES_PER_MESSAGE]}
            for i in range(0, len(entries), ENTRIES_PER_MESSAGE)
        ]
        self._queue.send_all(bodies)
        logger.info("metering tick", extra={"billable": len(entries), "messages": len(bodies)})
        return TickReport(len(entries), len(bodies))

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
        failed = 0
        for raw in body["entries"]:
            try:
                self.meter(BillableEntry(**raw), now)
            except Exception:  # one bad entry must not leave the rest of the message unbilled
                logger.exception("metering a deployment failed", extra={"entry": raw})
                failed += 1
        if failed:  # retried as a whole; the entries charged already are refused by condition
            raise RuntimeError(f"{failed} of {len(body['entries'])} deployments not metered")

    def meter(self, entry: BillableEntry, now: datetime) -> Decimal | None:
        price = Decimal(entry.price_per_hour_usd)
        amount = charge(price, entry.since, now)
        total = self._repo.charge(entry, now, amount, price)
        if total is not None:
            metrics.add_metric(name="DeploymentsMetered", unit=Unit.Count, value=1)
            metrics.add_metric(name="UsdCharged", unit=Unit.NoUnit, value=float(amount))
        if total is None or entry.budget_max_usd is None:
            return total  # charged already (duplicate, late or raced message), or no budget
        budget = Decimal(entry.budget_max_usd)
        if total >= budget:
            metrics.add_metric(name="BudgetStops", unit=Unit.Count, value=1)
            self._stop_for_budget(
                entry.deployment_id, f"budget ${budget} reached: ${total} spent at ${price}/h"
            )
            return total
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
                entry.ledger_tail_length + 1,
            )
            self._queue.send_later({"entries": [follow_up.to_dict()]}, math.ceil(left))
        return total
