"""Metering on moto's DynamoDB and SQS with a controlled clock: every case is checked against
the exact expected USD."""

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from unittest.mock import patch

import pytest

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.lifecycle import Status
from chalicelib.logs import metrics
from chalicelib.queue import WorkQueue
from chalicelib.services import metering as metering_service
from chalicelib.services import registry
from chalicelib.services.metering import METER_THREADS, MeteringService
from chalicelib.store.deployments import BILLING_SHARDS, DeploymentRepository
from chalicelib.store.meter_models import LedgerItem, MeterItem
from chalicelib.store.metering import LEDGER_PAGE, BillableEntry, MeteringRepository

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
DEPLOYMENTS = "/api/v1/compute/deployments"


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now

    def at(self, seconds: float) -> datetime:
        self.now = T0 + timedelta(seconds=seconds)
        return self.now


class RecordingQueue(WorkQueue):
    """The real SQS queue; also keeps what was sent later, since a test cannot wait out a
    delay."""

    def __init__(self, *args):
        super().__init__(*args)
        self.delayed = []

    def send_later(self, body, delay_seconds):
        super().send_later(body, delay_seconds)
        self.delayed.append((body, delay_seconds))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(aws_backend):
    return RecordingQueue(aws.client("sqs"), settings.metering_queue)


@pytest.fixture(autouse=True)
def fresh_metrics():
    metrics.clear_metrics()  # the Lambda flushes them per invocation; tests call in directly
    yield
    metrics.clear_metrics()


@pytest.fixture
def metering(api, clock, queue):
    return MeteringService(
        MeteringRepository(), queue, registry.deployment_service().stop_for_budget, clock
    )


def billable(api, price="3.60", budget="100", since=T0):
    created = api.post(
        DEPLOYMENTS,
        {
            "name": "gpu",
            "image": "acme/llm:1",
            "target": "runpod",
            "gpu_type": "A100",
            "budget_max_usd": float(budget),
        },
    ).data
    repo = DeploymentRepository()
    assert repo.record_instance(repo.get(created["id"]), "pod-1", Decimal(price), since)
    return created["id"]


def drain(metering, queue) -> int:
    """Deliver every visible message to the worker, as the SQS trigger would."""
    sqs, handled = aws.client("sqs"), 0
    while True:
        got = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)
        messages = got.get("Messages", [])
        if not messages:
            return handled
        for message in messages:
            metering.work(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
            handled += 1


def meter(deployment_id) -> MeterItem:
    return MeteringRepository().meter(deployment_id)


def cost(deployment_id) -> Decimal:
    return meter(deployment_id).cost_accrued_usd


def ledger(deployment_id) -> list[Decimal]:
    """Every charge, oldest first (on the meter and in the ledger table)."""
    tail = list(meter(deployment_id).ledger_tail)
    entries, _ = MeteringRepository().ledger(deployment_id, tail, limit=10_000)
    return [e.amount_usd for e in reversed(entries)]


def test_a_tick_charges_price_times_elapsed_time_exactly(api, metering, queue, clock):
    d = billable(api, price="3.60")
    clock.at(60)
    assert metering.tick().deployments == 1
    drain(metering, queue)
    assert cost(d) == Decimal("0.060000")
    assert ledger(d) == [Decimal("0.060000")]
    assert api.get(f"{DEPLOYMENTS}/{d}").data["cost_accrued_usd"] == 0.06


def test_a_duplicated_message_charges_once(api, metering, queue, clock):
    d = billable(api)
    clock.at(60)
    metering.tick()
    body = json.loads(aws.client("sqs").receive_message(QueueUrl=queue.url)["Messages"][0]["Body"])
    metering.work(body)
    metering.work(body)  # SQS delivers at least once
    assert cost(d) == Decimal("0.060000") and len(ledger(d)) == 1


def test_reordered_and_overlapping_ticks_still_add_up_to_the_elapsed_time(
    api, metering, queue, clock
):
    d = billable(api)
    clock.at(60)
    metering.tick()
    clock.at(120)
    metering.tick()  # the first message is still queued: both carry last_metered_at = T0
    clock.at(125)
    drain(metering, queue)  # one charges T0..125 s, the other is refused
    clock.at(180)
    metering.tick()
    drain(metering, queue)
    assert cost(d) == Decimal("0.180000")  # 3.60/h for exactly 180 s
    assert sum(ledger(d)) == cost(d)


def test_two_workers_racing_on_one_deployment_charge_once(api, metering, queue, clock):
    d = billable(api)
    clock.at(60)
    metering.tick()
    body = json.loads(aws.client("sqs").receive_message(QueueUrl=queue.url)["Messages"][0]["Body"])
    workers = [threading.Thread(target=metering.work, args=(body,)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert cost(d) == Decimal("0.060000") and len(ledger(d)) == 1


def test_a_tick_skipped_for_five_minutes_is_caught_up_exactly(api, metering, queue, clock):
    d = billable(api, price="1.00")
    clock.at(60)
    metering.tick()
    drain(metering, queue)
    clock.at(60 + 300)  # ticks at 120..300 s never ran
    metering.tick()
    drain(metering, queue)
    assert cost(d) == Decimal("0.100000")  # 1.00/h for 360 s
    assert ledger(d) == [Decimal("0.016667"), Decimal("0.083333")]


def test_a_budget_crossed_mid_tick_stops_the_deployment(api, metering, queue, clock):
    d = billable(api, price="36", budget="0.5")  # 1 cent a second: 50 s of budget
    clock.at(60)
    metering.tick()
    drain(metering, queue)
    detail = api.get(f"{DEPLOYMENTS}/{d}").data
    assert detail["cost_accrued_usd"] == 0.6
    assert (detail["status"], detail["failure_reason"]) == ("stopping", "budget_exceeded")
    assert "budget $0.5 reached" in detail["failure_message"]


def test_a_budget_about_to_run_out_is_stopped_at_that_moment_not_a_tick_later(
    api, metering, queue, clock
):
    d = billable(api, price="36", budget="0.5")
    clock.at(30)
    metering.tick()
    drain(metering, queue)
    assert cost(d) == Decimal("0.300000")
    [(body, delay)] = queue.delayed
    assert delay == 20  # exactly when the remaining 0.20 USD is spent
    clock.at(30 + delay)
    metering.work(body)  # what SQS delivers after the delay
    assert cost(d) == Decimal("0.500000")  # no overshoot
    assert api.get(f"{DEPLOYMENTS}/{d}").data["failure_reason"] == "budget_exceeded"


def test_a_deployment_stopped_between_tick_and_worker_is_not_charged(api, metering, queue, clock):
    d = billable(api)
    clock.at(60)
    metering.tick()
    repo = DeploymentRepository()
    repo.transition_latest(d, lambda _: Status.STOPPING)
    repo.transition_latest(d, lambda _: Status.STOPPED)
    drain(metering, queue)
    assert cost(d) == 0 and ledger(d) == []
    clock.at(120)
    assert metering.tick().deployments == 0  # never read again


def test_a_free_deployment_costs_nothing(api, metering, queue, clock):
    d = billable(api, price="0")
    clock.at(3600)
    metering.tick()
    drain(metering, queue)
    assert cost(d) == 0
    assert api.get(f"{DEPLOYMENTS}/{d}").data["status"] == "provisioning"


def test_many_deployments_share_few_messages(api, metering, queue, clock):
    ids = [billable(api) for _ in range(12)]
    clock.at(60)
    report = metering.tick()
    assert (report.deployments, report.messages) == (12, 1)
    drain(metering, queue)
    assert all(cost(d) == Decimal("0.060000") for d in ids)


def test_a_broken_entry_fails_its_message_but_the_rest_are_charged_once(
    api, metering, queue, clock
):
    """A message's deployments are charged side by side; one that cannot be charged sends the
    message back for a retry, which charges nobody twice."""
    ids = [billable(api) for _ in range(METER_THREADS * 2)]
    clock.at(60)
    metering.tick()
    body = json.loads(aws.client("sqs").receive_message(QueueUrl=queue.url)["Messages"][0]["Body"])
    body["entries"].insert(3, {"deployment_id": "dep_broken"})  # no price, no time
    with pytest.raises(RuntimeError, match="1 of 17 deployments not metered"):
        metering.work(body)
    assert all(cost(d) == Decimal("0.060000") for d in ids)
    clock.at(61)
    with pytest.raises(RuntimeError):
        metering.work(body)  # the redelivery
    assert all(cost(d) == Decimal("0.060000") and len(ledger(d)) == 1 for d in ids)


def test_billable_deployments_spread_over_the_index_keys_and_the_tick_reads_them_all(
    api, metering, queue, clock
):
    """A meter's index entry is written when billing starts and ends: under one key those
    writes would all hit one index partition."""
    ids = [billable(api) for _ in range(40)]
    keys = {meter(d).billable for d in ids}
    assert len(keys) >= 6 and keys <= set(BILLING_SHARDS)
    clock.at(60)
    assert metering.tick().deployments == 40
    drain(metering, queue)
    assert all(cost(d) == Decimal("0.060000") for d in ids)


def test_the_tick_sends_while_it_pages_so_workers_start_before_it_ends(api, queue, clock):
    class Pages(MeteringRepository):
        pulled = 0

        def billable(self):
            for item in super().billable():
                Pages.pulled += 1
                yield item

    class Sends(WorkQueue):
        def send_all(self, bodies):
            sent.append((Pages.pulled, sum(len(b["entries"]) for b in bodies)))
            super().send_all(bodies)

    sent = []
    for _ in range(3):
        billable(api)
    tick = MeteringService(Pages(), Sends(aws.client("sqs"), settings.metering_queue), None, clock)
    one_a_message = patch.object(metering_service, "ENTRIES_PER_MESSAGE", 1)
    with one_a_message, patch.object(metering_service, "MAX_BATCH", 2):  # two a batch
        assert tick.tick().deployments == 3
    assert sent == [(2, 2), (3, 1)]  # the first batch left before the third was read


def test_the_schedule_and_sqs_handlers_run_through_chalice_events(api, client, queue, capsys):
    d = billable(api, since=datetime.now(UTC) - timedelta(minutes=1))  # the handlers' real clock
    client.lambda_.invoke(
        "meter_tick",
        client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        ),
    )
    sqs = aws.client("sqs")
    body = sqs.receive_message(QueueUrl=queue.url)["Messages"][0]["Body"]
    event = client.events.generate_sqs_event(
        message_bodies=[body, "not json"], queue_name=settings.metering_queue
    )
    result = client.lambda_.invoke("meter_worker", event).payload
    assert len(result["batchItemFailures"]) == 1  # only the bad message is retried
    assert Decimal("0.06") <= cost(d) < Decimal("0.07")  # 3.60/h for a minute and a bit
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert len(emf) == 1 and emf[0]["DeploymentsMetered"] == [1.0], emf
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "PRISM"


def test_detail_and_ledger_show_cost_budget_and_time_left(api, metering, queue, clock):
    d = billable(api, price="3.60", budget="1")
    for seconds in (60, 120, 180):
        clock.at(seconds)
        metering.tick()
        drain(metering, queue)
    detail = api.get(f"{DEPLOYMENTS}/{d}").data
    assert detail["cost_accrued_usd"] == 0.18 and detail["budget_remaining_usd"] == 0.82
    assert detail["budget_seconds_left"] == 820.0  # 0.82 USD at 3.60/h
    first = api.get(f"{DEPLOYMENTS}/{d}/costs?limit=2").data
    assert [e["amount_usd"] for e in first["items"]] == [0.06, 0.06]
    assert first["items"][0]["cost_after_usd"] == 0.18
    rest = api.get(f"{DEPLOYMENTS}/{d}/costs?limit=2&next_token={first['next_token']}").data
    assert [e["cost_after_usd"] for e in rest["items"]] == [0.06] and rest["next_token"] is None
    assert api.get(f"{DEPLOYMENTS}/{d}/costs?next_token=zzz").status_code == 400
    other = billable(api)  # a token pages only the ledger it came from
    foreign = api.get(f"{DEPLOYMENTS}/{other}/costs?next_token={first['next_token']}")
    assert foreign.status_code == 400 and "next_token" in foreign.data["error"]["fields"]


def test_a_charge_for_a_period_already_charged_changes_neither_total_nor_ledger(api, clock):
    d = billable(api)
    until = clock.at(60)
    entry = BillableEntry.of(meter(d))
    repo = MeteringRepository()
    assert repo.charge(entry, until, Decimal("0.06"), Decimal("3.6")) == Decimal("0.06")
    assert repo.charge(entry, until, Decimal("0.06"), Decimal("3.6")) is None
    after = meter(d)
    assert after.cost_accrued_usd == Decimal("0.06") and after.last_metered_at == until
    assert ledger(d) == [Decimal("0.06")]


def test_a_charge_for_a_deployment_that_does_not_exist_charges_nothing(api, clock):
    entry = BillableEntry(
        "dep_0000000000000000", "2026-11-27T12:00:00.000000+0000", "3.6", "0", None
    )
    assert MeteringRepository().charge(entry, clock.at(60), Decimal("0.06"), Decimal("3.6")) is None


def test_pages_of_charges_move_to_the_ledger_table_and_read_back_once_each(api, clock):
    """The newest charges live on the meter (one write per charge); every LEDGER_PAGE they
    move to the ledger table. The costs API reads both, without gaps or repeats."""
    d = billable(api, price="3.60")
    repo = MeteringRepository()
    for minute in range(1, LEDGER_PAGE + 6):
        entry = BillableEntry.of(meter(d))
        repo.charge(entry, clock.at(60 * minute), Decimal("0.06"), Decimal("3.6"))
    after = meter(d)
    assert len(after.ledger_tail) == 5
    assert len(list(LedgerItem.query(d))) == LEDGER_PAGE
    pages, token = [], None
    while True:
        path = f"{DEPLOYMENTS}/{d}/costs?limit=7" + (f"&next_token={token}" if token else "")
        page = api.get(path).data
        pages += page["items"]
        token = page["next_token"]
        if token is None:
            break
    assert len(pages) == LEDGER_PAGE + 5
    ends = [p["period_end"] for p in pages]
    assert ends == sorted(set(ends), reverse=True)  # newest first, each once
    assert pages[0]["cost_after_usd"] == pytest.approx(0.06 * (LEDGER_PAGE + 5))
