"""pynamodb models of cloud billing: each deployment's meter and the ledger of its charges."""

from decimal import Decimal

from pynamodb.attributes import ListAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.indexes import GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from chalicelib.config import settings
from chalicelib.store.model_base import DecimalAttribute, LedgerEntryAttribute, TableMeta


class LedgerItem(Model):
    """One charge: what was billed for which period at which price. Written first on the
    deployment with its running total (one conditional update, so the two never disagree),
    then moved here a page at a time with idempotent puts."""

    class Meta(TableMeta):
        table_name = settings.ledger_table

    deployment_id = UnicodeAttribute(hash_key=True)
    period_end = UTCDateTimeAttribute(range_key=True)
    period_start = UTCDateTimeAttribute()
    amount_usd = DecimalAttribute()
    price_per_hour_usd = DecimalAttribute()
    cost_after_usd = DecimalAttribute()


class BillableMetersIndex(GlobalSecondaryIndex):
    """Meters a provider is charging for (sparse: `billable` is set only then, to one of 8
    keys, see store.deployments.billing_shard). Keys only: a charge changes no key, so it
    rewrites no entry here; the tick reads the meters themselves with BatchGetItem."""

    class Meta:
        index_name = "billable"
        projection = KeysOnlyProjection()

    billable = UnicodeAttribute(hash_key=True)
    deployment_id = UnicodeAttribute(range_key=True)


class MeterItem(Model):
    """A cloud deployment's billing state, apart from the deployment: every charge rewrites it,
    and an item under 1 KB with no index entry to rewrite costs one write unit (the deployment
    item is several KB and projected into five indexes). Created when billing starts, kept
    after it ends (the final total and the newest charges)."""

    class Meta(TableMeta):
        table_name = settings.meters_table

    deployment_id = UnicodeAttribute(hash_key=True)
    billable = UnicodeAttribute(null=True)  # its index shard while the provider charges
    price_per_hour_usd = DecimalAttribute()
    budget_max_usd = DecimalAttribute(null=True)
    cost_accrued_usd = DecimalAttribute(default=lambda: Decimal(0))
    last_metered_at = UTCDateTimeAttribute()
    # The newest charges, written with the total in one conditional update (exactly once, one
    # item write); a full page moves to the ledger table.
    ledger_tail = ListAttribute(of=LedgerEntryAttribute, default=list)

    billable_index = BillableMetersIndex()
