"""The meter: what a charge and a tick write and read, how the API reads costs, and how a
deployment billed on its own item (a stack upgraded while it runs) moves to a meter."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import botocore.client
import pytest

from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.store import legacy_billing
from chalicelib.store.deployments import DeploymentRepository, billing_shard
from chalicelib.store.meter_models import LedgerItem
from chalicelib.store.metering import LEDGER_PAGE, BillableEntry, MeteringRepository
from chalicelib.store.model_base import LedgerEntry
from chalicelib.store.models import DeploymentItem
from tests.functional import test_metering
from tests.functional.test_metering import DEPLOYMENTS, T0, billable, cost, drain, ledger, meter

# The metering tests' fixtures, used here too.
clock, queue, metering = test_metering.clock, test_metering.queue, test_metering.metering
fresh_metrics = test_metering.fresh_metrics


@pytest.fixture
def calls(monkeypatch):
    """Every DynamoDB call from here on: (operation, table, index)."""
    made: list[tuple[str, str, str | None]] = []
    real = botocore.client.BaseClient._make_api_call

    def recording(self, operation, params):
        tables = (
            [params["TableName"]]
            if "TableName" in params
            else sorted(params.get("RequestItems", {}))
        )
        for entry in params.get("TransactItems", []):
            tables += [action["TableName"] for action in entry.values()]
        made.extend((operation, table, params.get("IndexName")) for table in tables)
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return made


def on(table: str, made) -> list[tuple[str, str | None]]:
    return [(operation, index) for operation, name, index in made if name == table]


def charge_minute(deployment_id, minute, clock, calls=None, **entry_changes):
    """Charge 3.60/h up to `minute` as the worker does, from the meter as the tick read it
    (`calls`: cleared after that read)."""
    entry = replace(BillableEntry.of(meter(deployment_id)), **entry_changes)
    if calls is not None:
        calls.clear()
    return MeteringRepository().charge(
        entry, clock.at(60 * minute), Decimal("0.06"), Decimal("3.6")
    )


def test_a_charge_is_one_update_of_the_meter_and_a_full_tail_moves_within_the_charge(
    api, clock, calls
):
    d = billable(api)
    before = DeploymentRepository().get(d)
    for minute in range(1, LEDGER_PAGE + 1):
        assert charge_minute(d, minute, clock, calls) == Decimal("0.06") * minute
        assert calls == [("UpdateItem", settings.meters_table, None)]
    total = charge_minute(d, LEDGER_PAGE + 1, clock, calls)
    assert total == Decimal("0.06") * (LEDGER_PAGE + 1)
    # The tick saw the tail full: read, the page to the ledger, then the same charge starts
    # the next page. No write refused for want of room, no separate write to clear the tail:
    # 8 charges cost 7 + (8 ledger rows + 1) = 16 write units.
    assert [(operation, table) for operation, table, _ in calls] == [
        ("GetItem", settings.meters_table),
        ("BatchWriteItem", settings.ledger_table),
        ("UpdateItem", settings.meters_table),
    ]
    assert len(meter(d).ledger_tail) == 1 and len(list(LedgerItem.query(d))) == LEDGER_PAGE
    assert ledger(d) == [Decimal("0.06")] * (LEDGER_PAGE + 1)
    after = DeploymentRepository().get(d)  # the deployment item was never written
    assert (after.version, after.updated_at) == (before.version, before.updated_at)


def test_a_charge_that_finds_the_tail_full_moves_it_too(api, clock, calls):
    """An entry made without the tick's read (a budget follow-up) learns of a full tail from
    its refused append."""
    d = billable(api)
    for minute in range(1, LEDGER_PAGE + 1):
        charge_minute(d, minute, clock)
    assert charge_minute(d, LEDGER_PAGE + 1, clock, calls, tail_full=False) is not None
    assert [operation for operation, _, _ in calls] == [
        "UpdateItem",  # refused: no room
        "GetItem",
        "BatchWriteItem",
        "UpdateItem",
    ]
    assert ledger(d) == [Decimal("0.06")] * (LEDGER_PAGE + 1)


def test_a_full_tail_moved_by_a_racing_charge_is_charged_once(api, clock):
    """Two workers with the same entry find the tail full: both write the page (the same
    rows), one charge starts the next page, the other is refused."""
    d = billable(api)
    for minute in range(1, LEDGER_PAGE + 1):
        charge_minute(d, minute, clock)
    entry = BillableEntry.of(meter(d))
    repo, until = MeteringRepository(), clock.at(60 * (LEDGER_PAGE + 1))
    assert repo.charge(entry, until, Decimal("0.06"), Decimal("3.6")) is not None
    assert repo.charge(entry, until, Decimal("0.06"), Decimal("3.6")) is None
    assert cost(d) == Decimal("0.06") * (LEDGER_PAGE + 1)
    assert len(ledger(d)) == LEDGER_PAGE + 1


def test_the_tick_reads_meter_keys_from_the_index_then_the_meters_in_one_batch(
    api, metering, clock, calls
):
    ids = [billable(api) for _ in range(5)]
    clock.at(60)
    calls.clear()
    assert metering.tick().deployments == 5
    meters = on(settings.meters_table, calls)
    assert meters.count(("Query", "billable")) == 8  # one per shard, keys only
    assert meters.count(("BatchGetItem", None)) == 1  # up to 100 meters a call
    assert len(meters) == 9
    legacy = on(settings.deployments_table, calls)
    assert legacy == [("Query", "billable")] * 8  # nothing left to move: nothing more
    assert set(ids) == {m.deployment_id for m in MeteringRepository().billable()}


def test_detail_reads_a_cloud_deployments_meter_and_a_list_reads_them_in_one_batch(
    api, metering, queue, clock, calls
):
    ids = [billable(api) for _ in range(3)]
    node = api.post(DEPLOYMENTS, {"name": "free", "image": "acme/x:1", "target": "prism_node"})
    clock.at(60)
    metering.tick()
    drain(metering, queue)
    calls.clear()
    assert api.get(f"{DEPLOYMENTS}/{node.data['id']}").data["cost_accrued_usd"] == 0
    assert on(settings.meters_table, calls) == []  # free: no meter to read
    detail = api.get(f"{DEPLOYMENTS}/{ids[0]}").data
    assert (detail["cost_accrued_usd"], detail["price_per_hour_usd"]) == (0.06, 3.6)
    assert on(settings.meters_table, calls) == [("GetItem", None)]
    calls.clear()
    listed = api.get(DEPLOYMENTS).data["items"]
    assert on(settings.meters_table, calls) == [("BatchGetItem", None)]
    costs = {d["id"]: d["cost_accrued_usd"] for d in listed}
    assert costs == {**dict.fromkeys(ids, 0.06), node.data["id"]: 0}
    assert all(d["budget_remaining_usd"] == 99.94 for d in listed if d["id"] in ids)


def test_a_restarted_billing_keeps_the_meters_total(api, clock):
    """Billing started again on a deployment that has a meter (a new instance) keeps what it
    was charged: the meter is created with 0 only when it does not exist."""
    d = billable(api)
    charge_minute(d, 1, clock)
    repo = DeploymentRepository()
    item = repo.get(d)
    repo.stop_billing(item)
    assert meter(d).billable is None and cost(d) == Decimal("0.06")
    DeploymentItem(id=d).update(
        actions=[DeploymentItem.provider_instance_id.remove()], add_version_condition=False
    )
    assert repo.record_instance(repo.get(d), "pod-2", Decimal("7.2"), clock.at(300))
    again = meter(d)
    assert (again.billable, again.price_per_hour_usd) == (billing_shard(d), Decimal("7.2"))
    assert (again.cost_accrued_usd, again.last_metered_at) == (Decimal("0.06"), clock.now)


# --- deployments billed on their item, from before meters ----------------------------------

OLD_TAIL = [
    LedgerEntry(
        T0 - timedelta(minutes=2), T0 - timedelta(minutes=1), *map(Decimal, ["0.5", "30", "1"])
    ),
    LedgerEntry(T0 - timedelta(minutes=1), T0, *map(Decimal, ["0.5", "30", "1.5"])),
]


def billed_the_old_way(api) -> str:
    """A cloud deployment as the version before meters billed it: everything on its item."""
    created = api.post(
        DEPLOYMENTS,
        {
            "name": "old",
            "image": "acme/llm:1",
            "target": "runpod",
            "gpu_type": "A100",
            "budget_max_usd": 100,
        },
    ).data
    item = DeploymentRepository().get(created["id"])
    item.update(
        actions=[
            DeploymentItem.provider_instance_id.set("pod-old"),
            DeploymentItem.billable.set(billing_shard(item.id)),
            DeploymentItem.price_per_hour_usd.set(Decimal("3.6")),
            DeploymentItem.cost_accrued_usd.set(Decimal("1.5")),
            DeploymentItem.last_metered_at.set(T0),
            DeploymentItem.ledger_tail.set(OLD_TAIL),
        ]
    )
    return item.id


def test_a_deployment_billed_on_its_item_moves_to_a_meter_at_the_tick(api, metering, queue, clock):
    d = billed_the_old_way(api)
    assert MeteringRepository().meter(d) is None
    detail = api.get(f"{DEPLOYMENTS}/{d}").data  # not moved yet: the item's own figures
    assert (detail["cost_accrued_usd"], detail["budget_remaining_usd"]) == (1.5, 98.5)
    assert detail["budget_seconds_left"] == 98_500.0
    assert [e["amount_usd"] for e in api.get(f"{DEPLOYMENTS}/{d}/costs").data["items"]] == [
        0.5,
        0.5,
    ]
    clock.at(60)
    assert metering.tick().deployments == 1
    item = DeploymentRepository().get(d)
    assert item.billable is None and item.ledger_tail is None  # out of the old index
    assert len(list(LedgerItem.query(d))) == len(OLD_TAIL)
    drain(metering, queue)
    assert cost(d) == Decimal("1.56")  # from the item's total and time: no gap, no overlap
    assert ledger(d) == [Decimal("0.5"), Decimal("0.5"), Decimal("0.060000")]
    detail = api.get(f"{DEPLOYMENTS}/{d}").data
    assert (detail["cost_accrued_usd"], detail["price_per_hour_usd"]) == (1.56, 3.6)
    costs = api.get(f"{DEPLOYMENTS}/{d}/costs").data
    assert [e["cost_after_usd"] for e in costs["items"]] == [1.56, 1.5, 1.0]
    assert costs["cost_accrued_usd"] == 1.56
    clock.at(120)
    assert metering.tick().deployments == 1  # charged like any other from now on
    drain(metering, queue)
    assert cost(d) == Decimal("1.62")


def test_a_move_waits_when_the_item_was_charged_meanwhile(api, monkeypatch):
    """A worker of the version before can charge the item during the upgrade: the meter is
    made only from billing fields nobody changed since they were read."""
    d = billed_the_old_way(api)
    write_to_ledger = legacy_billing.write_to_ledger

    def an_old_worker_charges_meanwhile(deployment_id, charges):
        write_to_ledger(deployment_id, charges)
        DeploymentItem(id=d).update(
            actions=[
                DeploymentItem.cost_accrued_usd.add(Decimal("0.06")),
                DeploymentItem.last_metered_at.set(T0 + timedelta(minutes=1)),
            ],
            add_version_condition=False,
        )

    monkeypatch.setattr(legacy_billing, "write_to_ledger", an_old_worker_charges_meanwhile)
    assert legacy_billing.move(d) is False
    assert MeteringRepository().meter(d) is None
    assert DeploymentRepository().get(d).billable is not None  # still billed on the item
    monkeypatch.setattr(legacy_billing, "write_to_ledger", write_to_ledger)
    assert legacy_billing.move(d) is True
    moved = meter(d)
    assert (moved.cost_accrued_usd, moved.last_metered_at) == (
        Decimal("1.56"),
        T0 + timedelta(minutes=1),
    )
    assert legacy_billing.move(d) is False  # once


def test_a_teardown_of_a_deployment_billed_on_its_item_charges_it_to_the_end(api):
    d = billed_the_old_way(api)
    teardown = registry.cloud_teardown()
    teardown.end_billing(DeploymentRepository().get(d), T0 + timedelta(seconds=30))
    ended = meter(d)
    assert ended.billable is None and DeploymentRepository().get(d).billable is None
    assert ended.cost_accrued_usd == Decimal("1.53")  # + 30 s at 3.60/h
    assert ledger(d) == [Decimal("0.5"), Decimal("0.5"), Decimal("0.030000")]
