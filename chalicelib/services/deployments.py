"""Deployment use cases that change a deployment: create (three forms, idempotent), stop,
rotate its endpoint key. What reads one (detail, list, health, costs, logs) is in
deployment_reads.py."""

import secrets
from dataclasses import dataclass

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
from chalicelib.protocol import (
    DEFAULT_MODEL_PORT,
    ENDPOINT_KEY_PREFIX,
    EndpointKeys,
    StopDeployment,
    hash_endpoint_key,
)
from chalicelib.responses import (
    endpoint_auth,
)
from chalicelib.schemas import (
    CLOUD_TARGETS,
    CreateDeploymentRequest,
    DeployConfig,
)
from chalicelib.services.node_requests import NodeRequests
from chalicelib.services.placement import Placement, choose_node, waiting_reason
from chalicelib.store import endpoints
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeployConfigAttribute, DeploymentItem, ResourceItem
from chalicelib.store.nodes import NodeRepository
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.secrets import DeploymentSecrets, SecretStore, split_weights_source


def new_deployment_id() -> str:
    return "dep_" + secrets.token_hex(8)  # store.deployments.DEPLOYMENT_ID matches these


def new_endpoint_key() -> str:
    return ENDPOINT_KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Created:
    item: DeploymentItem
    # Shown once: None when the endpoint takes no key, or on an idempotent replay.
    endpoint_key: str | None


@dataclass(frozen=True)
class RotatedKey:
    item: DeploymentItem
    endpoint_key: str
    delivered: bool  # the node serving the endpoint has it now (else: when it connects)


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
        secrets: SecretStore | None = None,
    ):
        self._deployments = deployments
        self._secrets = secrets or SecretStore()
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
    ) -> Created:
        # Made here, outside the idempotent part: its hash goes into the record, so the key
        # itself is never stored (Powertools keeps the result of a create, not its input).
        endpoint_key = new_endpoint_key()
        key_hash = hash_endpoint_key(endpoint_key)
        if idempotency_key is None:
            return _shown_once(self._create(owner_id, request, key_hash), endpoint_key)
        record = {
            "owner_id": owner_id,
            "key": idempotency_key,
            "body": request.model_dump(mode="json", exclude_unset=True),
            "endpoint_key_hash": key_hash,
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
        item = self._deployments.get_owned(owner_id, created["id"])
        return _shown_once(item, endpoint_key)

    def _create_from_record(self, record: dict) -> dict:
        request = CreateDeploymentRequest.model_validate(record["body"])
        key_hash = record["endpoint_key_hash"]
        return {"id": self._create(record["owner_id"], request, key_hash).id}

    def _create(
        self, owner_id: str, request: CreateDeploymentRequest, endpoint_key_hash: str
    ) -> DeploymentItem:
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
        # Secret values are sealed apart from the item (store/secrets.py): it keeps the names.
        recipe["weights_source"], weights_query = split_weights_source(recipe["weights_source"])
        secrets = DeploymentSecrets(dict(request.env_vars), weights_query)
        item = DeploymentItem(
            id=new_deployment_id(),
            owner_id=owner_id,
            status=Status.PROVISIONING.value,
            deploy_config=DeployConfigAttribute(**config.stored()),
            env_var_names=sorted(secrets.env) or None,
            weights_query_sealed=True if weights_query else None,
            budget_max_usd=request.budget_max_usd,
            pinned_node_id=request.node_id,
            **recipe,
        )
        if endpoint_auth(item) == "key":
            item.endpoint_key_hashes = [endpoint_key_hash]
        sealed = self._secrets.seal(item.id, secrets) if secrets else None
        if item.target in CLOUD_TARGETS:
            item = self._deployments.create(item, sealed)
            self._start_workflow(self._workflows.start_provision, item)
            return item
        # The owner's nodes are read first, so a deployment no node can take now is written
        # once, with why it waits: a create is a key lookup, a Query and a PutItem.
        candidates = self._placement.online_for(item)
        if choose_node(item, candidates) is None:
            item.status_message = waiting_reason(item)
        item = self._deployments.create(item, sealed)
        return self._placement.place(item, secrets, candidates)  # secrets: never opened here

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

    # --- endpoint keys ------------------------------------------------------------------

    def rotate_endpoint_key(self, owner_id: str, deployment_id: str) -> RotatedKey:
        """A new key replaces the old one (conditionally: a concurrent rotation is a 409), and
        goes to the node serving the endpoint at once; a node not connected now gets it at its
        next hello (or with its deploy_model)."""
        item = self._deployments.get_owned(owner_id, deployment_id)
        _check_rotatable(item)
        endpoint_key = new_endpoint_key()
        key_hashes = [hash_endpoint_key(endpoint_key)]
        if not endpoints.replace_key_hashes(item, key_hashes):
            _check_rotatable(self._deployments.get_owned(owner_id, deployment_id))
            raise Conflict("the endpoint key was rotated at the same time; try again")
        message = EndpointKeys(deployment_id=item.id, key_hashes=key_hashes)
        delivered = bool(item.node_id) and self._node_requests.tell(item.node_id, message)
        return RotatedKey(item, endpoint_key, delivered)

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


def _shown_once(item: DeploymentItem, endpoint_key: str) -> Created:
    """The key goes back only to the request whose create stored its hash: an idempotent replay
    (another request's create) gets None, as does an endpoint that takes no key."""
    stored_by_this_request = hash_endpoint_key(endpoint_key) in (item.endpoint_key_hashes or [])
    return Created(item, endpoint_key if stored_by_this_request else None)


def _check_rotatable(item: DeploymentItem) -> None:
    status = Status(item.status)
    if status is Status.STOPPING or status.is_terminal():
        raise Conflict(
            f"deployment {item.id} is {status.value}: its endpoint is going away, so there is "
            "no key to rotate"
        )
    auth = endpoint_auth(item)
    if auth == "none":
        raise Conflict(
            f"the endpoint of this image deployment on {item.target} is served by the image "
            "itself, not by PRISM's proxy, so no key protects it; deploy weights + command to "
            "have the agent's proxy check a key"
        )
    if auth == "public":
        raise Conflict(
            f'deployment {item.id} has a public endpoint (deploy_config.auth "public"): it '
            'takes no key; create a deployment with auth "key" to protect it'
        )


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
