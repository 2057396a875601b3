"""pynamodb models of deployments and what an owner has (secrets, users, API keys, catalog
entries). Nodes and connections are in node_models.py, meters and the ledger in
meter_models.py. Table names and the endpoint come from `settings`; keys and indexes match
infra/resources.json (a test checks they agree)."""

from decimal import Decimal

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import (
    AllProjection,
    GlobalSecondaryIndex,
    IncludeProjection,
)
from pynamodb.models import Model

from chalicelib.config import settings
from chalicelib.store.model_base import DecimalAttribute, LedgerEntryAttribute, TableMeta, utcnow


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
    port = NumberAttribute(null=True)  # None: the node agent picks one
    health_path = UnicodeAttribute()
    weights_allow_patterns = ListAttribute(of=UnicodeAttribute, null=True)
    weights_ignore_patterns = ListAttribute(of=UnicodeAttribute, null=True)
    restart = UnicodeAttribute(null=True)  # null on items older than the restart policy
    max_restarts = NumberAttribute(null=True)
    unhealthy_timeout_s = NumberAttribute(null=True)
    auth = UnicodeAttribute(null=True)  # null on items older than the endpoint proxy: "key"


class ByNodeIndex(GlobalSecondaryIndex):
    """Deployments placed on a node (sparse: only those with node_id)."""

    class Meta:
        index_name = "by-node"
        projection = AllProjection()

    node_id = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class UnplacedIndex(GlobalSecondaryIndex):
    """prism_node deployments still waiting for a node (sparse: `unplaced` is set only then)."""

    class Meta:
        index_name = "unplaced"
        projection = AllProjection()

    unplaced = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class AwaitingAckIndex(GlobalSecondaryIndex):
    """Deployments sent to a node that has not reported on them yet (sparse: `awaiting_ack` is
    set at assignment and removed by any status change): the sweep finds the unanswered ones
    with one Query."""

    class Meta:
        index_name = "awaiting-ack"
        projection = AllProjection()

    awaiting_ack = UnicodeAttribute(hash_key=True)
    assigned_at = UTCDateTimeAttribute(range_key=True)


class CloudIndex(GlobalSecondaryIndex):
    """Cloud deployments that are not over (sparse: `cloud` is set only then): what the
    reaper and the cloud health checks read."""

    class Meta:
        index_name = "cloud"
        projection = AllProjection()

    cloud = UnicodeAttribute(hash_key=True)
    id = UnicodeAttribute(range_key=True)


class BillableIndex(GlobalSecondaryIndex):
    """Legacy: deployments billed on their own item, before billing moved to meters
    (MeterItem). Only the metering tick reads it, to move each one to a meter
    (store/legacy_billing.py); nothing files a deployment here any more, and it can be deleted
    in the release after every stack has run one tick of this version."""

    class Meta:
        index_name = "billable"
        projection = IncludeProjection(
            ["last_metered_at", "price_per_hour_usd", "cost_accrued_usd", "budget_max_usd"]
        )

    billable = UnicodeAttribute(hash_key=True)
    id = UnicodeAttribute(range_key=True)


class LastExitAttribute(MapAttribute):
    """Why the node agent last restarted a deployment. Kept small (the item is projected into
    indexes): the model's output is cut before it is stored."""

    cause = UnicodeAttribute()  # crash | unhealthy
    exit_code = NumberAttribute(null=True)
    at = UTCDateTimeAttribute()
    message = UnicodeAttribute(null=True)  # the first line and end of its last output


class RequestMetricsAttribute(MapAttribute):
    """What the node agent's endpoint proxy last reported for a deployment (protocol
    DeploymentMetrics): counts since it started, which only grow, and the latency of the last
    window."""

    requests_total = NumberAttribute()
    counting_since = NumberAttribute(default=0)  # the proxy's start: later means counts reset
    status_2xx = NumberAttribute(default=0)
    status_3xx = NumberAttribute(default=0)
    status_4xx = NumberAttribute(default=0)
    status_5xx = NumberAttribute(default=0)
    unauthorized = NumberAttribute(default=0)  # refused by the proxy: no or a wrong key
    in_flight = NumberAttribute(default=0)
    window_s = NumberAttribute()
    latency_p50_ms = NumberAttribute(null=True)
    latency_p95_ms = NumberAttribute(null=True)
    latency_p99_ms = NumberAttribute(null=True)
    reported_at = UTCDateTimeAttribute()  # when the control plane received it


class DeploymentItem(Model):
    class Meta(TableMeta):
        table_name = settings.deployments_table

    id = UnicodeAttribute(hash_key=True)
    owner_id = UnicodeAttribute()
    name = UnicodeAttribute()
    target = UnicodeAttribute()
    status = UnicodeAttribute()
    owner_status = UnicodeAttribute()  # "<owner_id>#<status>": key of the status-filtered list
    image = UnicodeAttribute(null=True)
    resource_slug = UnicodeAttribute(null=True)
    # Without its query string: a signed URL's signature is sealed in the secrets table
    # (weights_query_sealed says there is one), as are the env var values (env_var_names keeps
    # the names). Only items older than that hold plaintext: env_vars and a full URL here,
    # removed when the deployment ends.
    weights_source = UnicodeAttribute(null=True)
    weights_query_sealed = BooleanAttribute(null=True)
    framework = UnicodeAttribute(default="auto")  # asked for, then what the node detected
    engine = UnicodeAttribute(null=True)  # what serves it (the node's choice, or image/command)
    engine_reason = UnicodeAttribute(null=True)
    command = ListAttribute(of=UnicodeAttribute, default=list)
    gpu = BooleanAttribute(default=True)
    gpu_type = UnicodeAttribute(null=True)
    deploy_config = DeployConfigAttribute()
    env_var_names = ListAttribute(of=UnicodeAttribute, null=True)
    env_vars = MapAttribute(null=True)  # legacy plaintext values: never logged, never returned
    budget_max_usd = DecimalAttribute(null=True)
    cost_accrued_usd = DecimalAttribute(default=lambda: Decimal(0))
    price_per_hour_usd = DecimalAttribute(null=True)
    last_metered_at = UTCDateTimeAttribute(null=True)
    # The newest charges, written with the total in one conditional update (exactly once, one
    # item write); moved to the ledger table a page at a time.
    ledger_tail = ListAttribute(of=LedgerEntryAttribute, null=True)
    endpoint_url = UnicodeAttribute(null=True)
    node_id = UnicodeAttribute(null=True)
    pinned_node_id = UnicodeAttribute(null=True)  # the node the user asked for, if any
    # The GPUs of node_id reserved for it (NodeItem.gpu_claims holds the other side).
    gpu_indices = ListAttribute(of=NumberAttribute, null=True)
    assigned_at = UTCDateTimeAttribute(null=True)  # when placement sent it to node_id
    awaiting_ack = UnicodeAttribute(null=True)  # its shard, from assignment until the node reports
    unacked_deploys = NumberAttribute(null=True)  # deploy_models no node ever answered
    provider_instance_id = UnicodeAttribute(null=True)
    failure_reason = UnicodeAttribute(null=True)
    failure_message = UnicodeAttribute(null=True)
    status_message = UnicodeAttribute(null=True)  # why it waits, or what just happened
    # Its statuses with when each began, oldest first ("running 1764504000123": unix ms, ~22
    # bytes each), written with each transition in the same update (store/deployments.py).
    status_history = ListAttribute(of=UnicodeAttribute, null=True)
    unplaced = UnicodeAttribute(null=True)  # "1" while a prism_node deployment waits for a node
    billable = UnicodeAttribute(null=True)  # "1" from instance launch until termination
    cloud = UnicodeAttribute(null=True)  # "1" while a cloud deployment is not over
    provider_region = UnicodeAttribute(null=True)
    launched_at = UTCDateTimeAttribute(null=True)  # the provider instance's launch
    # When launch first asked a provider: an instance that attempt created, found by a retried
    # launch (the control plane died before recording it), is billed from here.
    launch_requested_at = UTCDateTimeAttribute(null=True)
    bytes_done = NumberAttribute(null=True)
    bytes_total = NumberAttribute(null=True)
    weights_revision = UnicodeAttribute(null=True)  # what weights_source resolved to
    healthy = BooleanAttribute(null=True)
    health_consecutive_failures = NumberAttribute(default=0)
    health_latency_ms = NumberAttribute(null=True)
    health_checked_at = UTCDateTimeAttribute(null=True)
    restarts = NumberAttribute(null=True)  # times the node agent restarted it (null: never)
    last_exit = LastExitAttribute(null=True)
    # The endpoint keys the node agent's proxy accepts, as sha256 hex (protocol
    # hash_endpoint_key): the key itself is returned once and never stored. Null: none (a
    # public endpoint, one our proxy does not serve, or an item older than endpoint keys).
    endpoint_key_hashes = ListAttribute(of=UnicodeAttribute, null=True)
    request_metrics = RequestMetricsAttribute(null=True)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)
    updated_at = UTCDateTimeAttribute(default_for_new=utcnow)
    version = VersionAttribute()

    by_owner = ByOwnerIndex()
    by_owner_status = ByOwnerStatusIndex()
    by_node = ByNodeIndex()
    unplaced_index = UnplacedIndex()
    billable_index = BillableIndex()
    cloud_index = CloudIndex()
    awaiting_ack_index = AwaitingAckIndex()

    def has_sealed_secrets(self) -> bool:
        """Whether its env var values or weights query are in the secrets table."""
        return bool(self.env_var_names) or bool(self.weights_query_sealed)

    def legacy_env(self) -> dict[str, str]:
        """Env vars stored in plaintext on an item older than sealed secrets."""
        env = self.env_vars
        return env.as_dict() if isinstance(env, MapAttribute) else dict(env or {})

    def env_names(self) -> list[str]:
        return sorted({*(self.env_var_names or []), *self.legacy_env()})

    def served_by_agent_proxy(self) -> bool:
        """Its endpoint is our node agent's proxy (which checks endpoint keys): everything on a
        prism_node, and weights/command deployments on a cloud instance (services.cloud
        runs_agent); an image on a cloud instance is reached directly."""
        return self.target == "prism_node" or not self.image


class SecretItem(Model):
    """A deployment's secrets (env var values, a signed weights URL's query) sealed as one blob
    (chalicelib/store/secrets.py): AES-256-GCM under a data key that only KMS can decrypt,
    bound to the deployment id. No index; written with the deployment, deleted by the
    transition that ends it."""

    class Meta(TableMeta):
        table_name = settings.secrets_table

    deployment_id = UnicodeAttribute(hash_key=True)
    key_id = UnicodeAttribute()  # the ARN of the KMS key the data key is encrypted under
    data_key = BinaryAttribute(legacy_encoding=False)  # encrypted: KMS Decrypt opens it
    nonce = BinaryAttribute(legacy_encoding=False)
    ciphertext = BinaryAttribute(legacy_encoding=False)
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)


class UserItem(Model):
    class Meta(TableMeta):
        table_name = settings.users_table

    id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)


class ApiKeyItem(Model):
    """An API key, stored only as its SHA-256: the key itself is shown once, at creation."""

    class Meta(TableMeta):
        table_name = settings.api_keys_table

    key_hash = UnicodeAttribute(hash_key=True)
    owner_id = UnicodeAttribute()
    key_prefix = UnicodeAttribute()  # enough to recognise a key in a list, useless to an attacker
    created_at = UTCDateTimeAttribute(default_for_new=utcnow)


class ResourceItem(Model):
    """A marketplace catalog entry: a ready-made deployment recipe."""

    class Meta(TableMeta):
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
