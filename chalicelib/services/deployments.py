"""Deployment use cases: create (three forms, idempotent), list, detail, stop, health."""

import base64
import binascii
import secrets

from aws_lambda_powertools.utilities.idempotency import (
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer

from chalicelib.errors import Conflict, IdempotencyMismatch, ValidationFailed
from chalicelib.lifecycle import FailureReason, Status
from chalicelib.logs import logger
from chalicelib.protocol import DEFAULT_MODEL_PORT, HealthCheck, LogsRequest, StopDeployment
from chalicelib.schemas import (
    CLOUD_TARGETS,
    CostEntry,
    CostList,
    CostsQuery,
    CreateDeploymentRequest,
    DeployConfig,
    HealthOut,
    ListDeploymentsQuery,
    LogsOut,
)
from chalicelib.services.node_requests import NodeRequests, new_request_id
from chalicelib.services.pagination import decode_cursor, encode_cursor
from chalicelib.services.placement import Placement
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.metering import MeteringRepository
from chalicelib.store.models import (
    DeployConfigAttribute,
    DeploymentItem,
    LedgerItem,
    ResourceItem,
    utcnow,
)
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.resources import ResourceRepository


def new_deployment_id() -> str:
    return "dep_" + secrets.token_hex(8)  # store.deployments.DEPLOYMENT_ID matches these


class DeploymentService:
    def __init__(
        self,
        deployments: DeploymentRepository,
        resources: ResourceRepository,
        idempotency_store: BasePersistenceLayer,
        nodes: NodeRepository,
        placement: Placement,
        node_requests: NodeRequests,
        workflows,
        idempotency_ttl_seconds: int = 86400,
    ):
        self._deployments = deployments
        self._resources = resources
        self._nodes = nodes
        self._placement = placement
        self._node_requests = node_requests
        self._workflows = workflows
        self._idempotency_config = IdempotencyConfig(
            event_key_jmespath="[owner_id, key]",
            payload_validation_jmespath="body",
            expires_after_seconds=idempotency_ttl_seconds,
        )
        self._create_once = idempotent_function(
            self._create_from_record,
            data_keyword_argument="record",
            persistence_store=idempotency_store,
            config=self._idempotency_config,
            key_prefix="create_deployment",
        )

    # --- create -------------------------------------------------------------------------

    def create(
        self,
        owner_id: str,
        request: CreateDeploymentRequest,
        idempotency_key: str | None,
        lambda_context=None,
    ) -> DeploymentItem:
        if idempotency_key is None:
            return self._create(owner_id, request)
        record = {
            "owner_id": owner_id,
            "key": idempotency_key,
            "body": request.model_dump(mode="json", exclude_unset=True),
        }
        if lambda_context is not None:
            # Lets an in-progress record expire with the invocation if the Lambda times out.
            self._idempotency_config.register_lambda_context(lambda_context)
        try:
            created = self._create_once(record=record)
        except IdempotencyValidationError:
            raise IdempotencyMismatch(
                "this Idempotency-Key was already used with a different request body; "
                "use a new key for a new deployment"
            ) from None
        except IdempotencyAlreadyInProgressError:
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry shortly"
            ) from None
        return self._deployments.get_owned(owner_id, created["id"])

    def _create_from_record(self, record: dict) -> dict:
        request = CreateDeploymentRequest.model_validate(record["body"])
        return {"id": self._create(record["owner_id"], request).id}

    def _create(self, owner_id: str, request: CreateDeploymentRequest) -> DeploymentItem:
        recipe = self._recipe(request)
        if recipe["target"] in CLOUD_TARGETS and recipe["gpu"] and not recipe["gpu_type"]:
            raise ValidationFailed(
                "gpu_type is required for cloud targets (for example A100 or RTX4090)",
                fields={"gpu_type": "required when target is runpod or lambda"},
            )
        if request.node_id:
            node = self._nodes.get(request.node_id)
            if node is None or node.owner_id != owner_id:
                raise ValidationFailed(
                    f"unknown node {request.node_id}; `prism node list` shows yours",
                    fields={"node_id": "not one of your nodes"},
                )
            if node.dedicated_to:
                raise ValidationFailed(
                    f"node {request.node_id} is the cloud instance of {node.dedicated_to} and "
                    "runs nothing else",
                    fields={"node_id": "a cloud instance's node"},
                )
        config = recipe.pop("deploy_config")
        if recipe["target"] in CLOUD_TARGETS and config.port is None:
            # The instance exposes one fixed port, so the model needs one known in advance.
            config = config.model_copy(update={"port": DEFAULT_MODEL_PORT})
        item = DeploymentItem(
            id=new_deployment_id(),
            owner_id=owner_id,
            status=Status.PROVISIONING.value,
            deploy_config=DeployConfigAttribute(**config.stored()),
            env_vars=dict(request.env_vars),
            budget_max_usd=request.budget_max_usd,
            pinned_node_id=request.node_id,
            **recipe,
        )
        item = self._deployments.create(item)
        if item.target in CLOUD_TARGETS:
            self._start_workflow(self._workflows.start_provision, item)
            return item
        return self._placement.place(item)

    def _start_workflow(self, start, item: DeploymentItem) -> None:
        """A workflow that cannot start now never fails the user's request: the reaper fails
        or restarts what stays stuck."""
        try:
            start(item.id)
        except Exception:
            logger.exception("cannot start a cloud workflow", extra={"deployment_id": item.id})

    def _recipe(self, request: CreateDeploymentRequest) -> dict:
        """What to run: the request itself, or a catalog resource with the request's overrides."""
        recipe = {
            "name": request.name,
            "target": request.target,
            "image": request.image,
            "resource_slug": None,
            "weights_source": request.weights_source,
            "framework": request.framework,
            "command": list(request.command or []),
            "gpu": request.gpu,
            "gpu_type": request.gpu_type,
            "deploy_config": request.deploy_config or DeployConfig(),
        }
        if not request.resource_slug:
            return recipe
        resource = self._resources.get(request.resource_slug)
        if resource is None:
            raise ValidationFailed(
                f"unknown resource_slug {request.resource_slug!r}; "
                "GET /api/v1/marketplace/resources lists them",
                fields={"resource_slug": "not in the marketplace catalog"},
            )
        return recipe | self._resource_defaults(resource, request)

    @staticmethod
    def _resource_defaults(resource: ResourceItem, request: CreateDeploymentRequest) -> dict:
        overridden = request.model_fields_set
        defaults = {
            "resource_slug": resource.slug,
            "image": resource.image,
            "weights_source": resource.weights_source,
            "framework": resource.framework,
            "command": list(resource.command or []),
            "gpu": resource.gpu,
            "gpu_type": resource.gpu_type,
            # Field by field: `--health-path /x` keeps the recipe's port.
            "deploy_config": DeployConfig.of(resource.deploy_config).model_copy(
                update=request.deploy_config.model_dump(exclude_unset=True)
                if request.deploy_config
                else {}
            ),
        }
        kept = {"resource_slug", "deploy_config"}
        return {k: v for k, v in defaults.items() if k not in overridden or k in kept}

    # --- read ---------------------------------------------------------------------------

    def get(self, owner_id: str, deployment_id: str) -> DeploymentItem:
        return self._deployments.get_owned(owner_id, deployment_id)

    def list(
        self, owner_id: str, query: ListDeploymentsQuery
    ) -> tuple[list[DeploymentItem], str | None]:
        statuses = sorted(set(query.status or []))
        filter_key = ",".join(statuses)
        cursor = decode_cursor(query.next_token, owner_id, filter_key)
        page = self._deployments.list_owned(owner_id, statuses, query.limit, cursor)
        return page.items, encode_cursor(page.cursor, owner_id, filter_key)

    def health(self, owner_id: str, deployment_id: str) -> HealthOut:
        """Asks the node for a fresh probe; the last known state (stale) if it cannot answer."""
        item = self._deployments.get_owned(owner_id, deployment_id)
        if item.node_id and Status(item.status) in (Status.RUNNING, Status.UNHEALTHY):
            reply = self._node_requests.ask(
                item.node_id, HealthCheck(deployment_id=item.id, request_id=new_request_id())
            )
            if reply is not None:
                return HealthOut(
                    deployment_id=item.id,
                    status=item.status,
                    healthy=reply["healthy"],
                    consecutive_failures=reply.get("consecutive_failures", 0),
                    latency_ms=reply.get("latency_ms"),
                    checked_at=utcnow(),
                    stale=False,
                )
        return HealthOut(
            deployment_id=item.id,
            status=item.status,
            healthy=item.healthy,
            consecutive_failures=int(item.health_consecutive_failures or 0),
            latency_ms=item.health_latency_ms,
            checked_at=item.health_checked_at,
            stale=True,
        )

    def costs(self, owner_id: str, deployment_id: str, query: CostsQuery) -> CostList:
        item = self._deployments.get_owned(owner_id, deployment_id)
        after = _decode_period(query.next_token) if query.next_token else None
        entries, last = MeteringRepository().ledger(item, query.limit, after)
        return CostList(
            deployment_id=item.id,
            cost_accrued_usd=item.cost_accrued_usd,
            items=[
                CostEntry(
                    period_start=e.period_start,
                    period_end=e.period_end,
                    amount_usd=e.amount_usd,
                    price_per_hour_usd=e.price_per_hour_usd,
                    cost_after_usd=e.cost_after_usd,
                )
                for e in entries
            ],
            next_token=None if last is None else _encode_period(last),
        )

    def logs(self, owner_id: str, deployment_id: str, tail: int) -> LogsOut:
        item = self._deployments.get_owned(owner_id, deployment_id)
        if not item.node_id:
            raise Conflict("this deployment has not been placed on a node, so it has no logs yet")
        reply = self._node_requests.ask(
            item.node_id,
            LogsRequest(deployment_id=item.id, request_id=new_request_id(), tail=tail),
        )
        if reply is None:
            raise Conflict(
                "the node running this deployment did not answer; its logs stay on the node "
                "until it is back online"
            )
        return LogsOut(deployment_id=item.id, lines=reply["lines"])

    # --- stop ---------------------------------------------------------------------------

    def stop_for_budget(self, deployment_id: str, message: str) -> DeploymentItem:
        """The normal stop path, ending `failed/budget_exceeded` once the stop is confirmed."""
        item, changed = self._deployments.transition_latest(
            deployment_id,
            _budget_stop_target,
            failure_reason=FailureReason.BUDGET_EXCEEDED.value,
            failure_message=message,
        )
        if changed and item.status == Status.STOPPING:
            self._hand_stop_over(item)
        return item

    def stop(self, owner_id: str, deployment_id: str) -> DeploymentItem:
        """Idempotent. A deployment nothing was handed to yet stops at once; anything else goes
        to `stopping` until its node or provider confirms."""
        item = self._deployments.get_owned(owner_id, deployment_id)
        item, _ = self._deployments.transition_latest(item.id, _stop_target, first=item)
        if item.status == Status.STOPPING:
            # Repeated on every DELETE while stopping: a lost message gets another chance
            # (a teardown already running is not started twice).
            self._hand_stop_over(item)
        return item

    def _hand_stop_over(self, item: DeploymentItem) -> None:
        if item.target in CLOUD_TARGETS:
            self._start_workflow(self._workflows.start_teardown, item)
        elif item.node_id:
            self._node_requests.tell(item.node_id, StopDeployment(deployment_id=item.id))


def _encode_period(stored: str) -> str:
    return base64.urlsafe_b64encode(stored.encode()).decode().rstrip("=")


def _decode_period(token: str) -> str:
    """Back to the stored period_end string; anything else is a 400."""
    try:
        stored = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        LedgerItem.period_end.deserialize(stored)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValidationFailed(
            "next_token is not valid; pass back the previous page's value",
            fields={"next_token": "malformed"},
        ) from None
    return stored


def _budget_stop_target(item: DeploymentItem) -> Status | None:
    target = _stop_target(item)
    return Status.FAILED if target is Status.STOPPED else target


def _stop_target(item: DeploymentItem) -> Status | None:
    status = Status(item.status)
    if status.is_terminal() or status is Status.STOPPING:
        return None
    # A cloud deployment's provision workflow may be launching right now: always tear down.
    handed_over = item.node_id or item.provider_instance_id or item.target in CLOUD_TARGETS
    if status is Status.PROVISIONING and not handed_over:
        return Status.STOPPED
    return Status.STOPPING
