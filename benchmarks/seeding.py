"""Data the benchmarks load, one definition each (benchmarks import this, never the tests)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal


def billing_deployments(billable: int, stopped: int) -> list[str]:
    """`billable` running cloud deployments last metered a minute ago (as billing starts: see
    DeploymentRepository.record_instance) and `stopped` ones that only make the table bigger.
    Returns the billable ones' ids."""
    from chalicelib.store.deployments import billing_shard
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem

    start = datetime.now(UTC) - timedelta(minutes=1)
    billable_ids = []
    with DeploymentItem.batch_write() as batch:
        for i in range(billable + stopped):
            is_billable = i < billable
            item = DeploymentItem(
                id=f"dep_{i:016x}",
                owner_id="usr_bench",
                name=f"m{i}",
                target="runpod",
                status="running" if is_billable else "stopped",
                owner_status="usr_bench#x",
                image="acme/llm:1",
                budget_max_usd=1000,
                deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
                price_per_hour_usd=Decimal("3.6"),
                last_metered_at=start,
            )
            item.billable = billing_shard(item.id) if is_billable else None
            item.ledger_tail = [] if is_billable else None
            batch.save(item)
            if is_billable:
                billable_ids.append(item.id)
    return billable_ids
