"""pynamodb models. Table names and the endpoint come from `settings`; keys and indexes match
infra/resources.json (a test checks they agree)."""

from datetime import UTC, datetime
from decimal import Decimal

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from chalicelib.config import settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class DecimalAttribute(NumberAttribute):
    """A DynamoDB number kept exact as a Decimal (money), not a float."""

    def serialize(self, value: Decimal) -> str:
        return str(Decimal(value))

    def deserialize(self, value: str) -> Decimal:
        return Decimal(value)


class _Meta:
    region = settings.region
    host = settings.aws_endpoint_url
    billing_mode = "PAY_PER_REQUEST"


class ByOwnerIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "by-owner"
        projection = AllProjection()

    owner_id = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class ByOwnerStatusIndex(GlobalSecondaryIndex):
    class Meta:
        index_name = "by-owner-status"
        projection = AllProjection()

    owner_status = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class DeployConfigAttribute(MapAttribute):
    port = NumberAttribute()
    health_path = UnicodeAttribute()


class DeploymentItem(Model):
    class Meta(_Meta):
        table_name = settings.deployments_table

    id = UnicodeAttribute(hash_key=True)
    owner_id = UnicodeAttribute()
    name = UnicodeAttribute()
    target = UnicodeAttribute()
    status = UnicodeAttribute()
    owner_status = UnicodeAttribute()  # "<owner_id>#<status>": key of the status-filtered list
    image = UnicodeAttribute(null=True)
    resource_slug = UnicodeAttribute(null=True)
    weights_source = UnicodeAttribute(null=True)
    framework = UnicodeAttribute(default="auto")
    command = ListAttribute(of=UnicodeAttribute, default=list)
    gpu = BooleanAttribute(default=True)
    gpu_type = UnicodeAttribute(null=True)
    deploy_config = DeployConfigAttribute()
    env_vars = MapAttribute(default=dict)  # values are secrets: never logged, never returned
    budget_max_usd = DecimalAttribute(null=True)
    cost_accrued_usd = DecimalAttribute(default=lambda: Decimal(0))
    price_per_hour_usd = DecimalAttribute(null=True)
    last_metered_at = UTCDateTimeAttribute(null=True)
    endpoint_url = UnicodeAttribute(null=True)
    node_id = UnicodeAttribute(null=True)
    provider_instance_id = UnicodeAttribute(null=True)
    failure_reason = UnicodeAttribute(null=True)
    failure_message = UnicodeAttribute(null=True)
    healthy = BooleanAttribute(null=True)
    health_consecutive_failures = NumberAttribute(default=0)
    health_latency_ms = NumberAttribute(null=True)
    health_checked_at = UTCDateTimeAttribute(null=True)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default_for_new=utcnow)
    version = VersionAttribute()

    by_owner = ByOwnerIndex()
    by_owner_status = ByOwnerStatusIndex()

    def env_dict(self) -> dict[str, str]:
        env = self.env_vars
        return env.as_dict() if isinstance(env, MapAttribute) else dict(env or {})


class UserItem(Model):
    class Meta(_Meta):
        table_name = settings.users_table

    id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)


class ApiKeyItem(Model):
    """An API key, stored only as its SHA-256: the key itself is shown once, at creation."""

    class Meta(_Meta):
        table_name = settings.api_keys_table

    key_hash = UnicodeAttribute(hash_key=True)
    owner_id = UnicodeAttribute()
    key_prefix = UnicodeAttribute()  # enough to recognise a key in a list, useless to an attacker
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)


class ResourceItem(Model):
    """A marketplace catalog entry: a ready-made deployment recipe."""

    class Meta(_Meta):
        table_name = settings.resources_table

    slug = UnicodeAttribute(hash_key=True)
    title = UnicodeAttribute()
    description = UnicodeAttribute()
    image = UnicodeAttribute(null=True)
    weights_source = UnicodeAttribute(null=True)
    framework = UnicodeAttribute(default="auto")
    command = ListAttribute(of=UnicodeAttribute, default=list)
    gpu = BooleanAttribute(default=True)
    gpu_type = UnicodeAttribute(null=True)
    deploy_config = DeployConfigAttribute()
