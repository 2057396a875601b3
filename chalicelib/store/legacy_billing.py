"""Deployments billed on their own item, from before meters (store/metering.py): a stack
upgraded while they run still has them in the deployments table's `billable` index. Each is
moved to a meter once, by the metering tick (or by its teardown, if that comes first), and is
then charged like any other.

Delete this module, with DeploymentItem.billable_index and its attributes, in the release after
every stack has run one metering tick of this one.
"""

from decimal import Decimal

from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib.logs import logger
from chalicelib.store.deployments import DeploymentRepository, billing_shard
from chalicelib.store.meter_models import MeterItem
from chalicelib.store.metering import write_to_ledger
from chalicelib.store.models import DeploymentItem
from chalicelib.store.shards import BILLING_SHARDS
from chalicelib.store.writes import transaction_connection, update_if


def move_all() -> int:
    """Every deployment still billed on its item, moved to a meter: one Query per key of the
    old index, page by page (empty, and never read again, once all have moved). Returns how
    many moved; one that cannot move now is logged and tried again at the next tick."""
    moved = 0
    for shard in BILLING_SHARDS:
        for listed in DeploymentItem.billable_index.query(shard):
            try:
                moved += move(listed.id)
            except Exception:  # the rest must still move, and the tick still charge
                logger.exception("moving billing to a meter failed", extra={"id": listed.id})
    return moved


def move(deployment_id: str) -> bool:
    """Its newest charges to the ledger table (idempotent puts), then, in one transaction, its
    meter made from its billing fields and `billable` removed from the item, only if it was not
    charged meanwhile (a worker of the version before, mid-upgrade): the meter starts exactly
    where the item's billing stopped, and the item leaves the old index. False: not moved
    (nothing to move, or charged meanwhile: moved at the next tick)."""
    item = DeploymentRepository().get(deployment_id)
    if item is None or not item.billable:
        return False
    write_to_ledger(item.id, list(item.ledger_tail or []))
    meter = MeterItem(
        deployment_id=item.id,
        billable=billing_shard(item.id),
        price_per_hour_usd=item.price_per_hour_usd or Decimal(0),  # as the old tick read it
        budget_max_usd=item.budget_max_usd,
        cost_accrued_usd=item.cost_accrued_usd or Decimal(0),
        last_metered_at=item.last_metered_at,
        ledger_tail=[],  # in the ledger table now
    )
    unchanged = DeploymentItem.billable.exists() & (
        DeploymentItem.last_metered_at == item.last_metered_at
    )
    off_the_item = [DeploymentItem.billable.remove(), DeploymentItem.ledger_tail.remove()]
    try:
        with TransactWrite(connection=transaction_connection()) as transaction:
            transaction.save(meter, condition=MeterItem.deployment_id.does_not_exist())
            transaction.update(item, off_the_item, unchanged, add_version_condition=False)
    except TransactWriteError as exc:
        reasons = exc.cancellation_reasons or []
        if exc.cause_response_code != "TransactionCanceledException" or not reasons:
            raise
        if reasons[0] is not None and reasons[0].code == "ConditionalCheckFailed":
            # It has a meter already (another tick moved it): the meter is what bills.
            update_if(item, [DeploymentItem.billable.remove()], DeploymentItem.billable.exists())
        return False
    return True
