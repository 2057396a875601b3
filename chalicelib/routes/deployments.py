"""/api/v1/compute/deployments"""

from chalice import Blueprint

from chalicelib.errors import ValidationFailed
from chalicelib.logs import logger
from chalicelib.routes.common import authenticate, handles_errors, ok, parse_body, parse_query
from chalicelib.schemas import (
    CostsQuery,
    CreateDeploymentRequest,
    DeploymentCreated,
    DeploymentList,
    EndpointKeyOut,
    ListDeploymentsQuery,
    LogsQuery,
)
from chalicelib.services import registry

bp = Blueprint(__name__)
BASE = "/api/v1/compute/deployments"


def _idempotency_key(request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable characters",
            fields={"Idempotency-Key": "invalid header"},
        )
    return key


@bp.route(BASE, methods=["POST"])
@handles_errors
def create_deployment():
    request = bp.current_request
    owner_id = authenticate(request)
    body = parse_body(request, CreateDeploymentRequest)
    created = registry.deployment_service().create(
        owner_id, body, _idempotency_key(request), lambda_context=bp.lambda_context
    )
    item = created.item
    # On the request's access line (one log line a request: each costs the function ~0.1 ms).
    logger.append_keys(deployment_id=item.id, target=item.target)
    return ok(DeploymentCreated.of(item, created.endpoint_key), status=201)


@bp.route(BASE, methods=["GET"])
@handles_errors
def list_deployments():
    request = bp.current_request
    owner_id = authenticate(request)
    query = parse_query(request, ListDeploymentsQuery)
    service = registry.deployment_service()
    items, token = service.list(owner_id, query)
    return ok(DeploymentList(items=service.shown_all(items), next_token=token))


@bp.route(BASE + "/{deployment_id}", methods=["GET"])
@handles_errors
def get_deployment(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    service = registry.deployment_service()
    return ok(service.shown(service.get(owner_id, deployment_id)))


@bp.route(BASE + "/{deployment_id}", methods=["DELETE"])
@handles_errors
def stop_deployment(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    service = registry.deployment_service()
    item = service.stop(owner_id, deployment_id)
    logger.info("deployment stop requested", extra={"status": item.status})
    # 202 while the node or provider still has to confirm; 200 once it is over.
    return ok(service.shown(item), status=202 if item.status == "stopping" else 200)


@bp.route(BASE + "/{deployment_id}/health", methods=["GET"])
@handles_errors
def deployment_health(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    return ok(registry.deployment_service().health(owner_id, deployment_id))


@bp.route(BASE + "/{deployment_id}/logs", methods=["GET"])
@handles_errors
def deployment_logs(deployment_id):
    request = bp.current_request
    owner_id = authenticate(request)
    logger.append_keys(deployment_id=deployment_id)
    query = parse_query(request, LogsQuery)
    return ok(registry.deployment_service().logs(owner_id, deployment_id, query.tail))


@bp.route(BASE + "/{deployment_id}/costs", methods=["GET"])
@handles_errors
def deployment_costs(deployment_id):
    request = bp.current_request
    owner_id = authenticate(request)
    logger.append_keys(deployment_id=deployment_id)
    query = parse_query(request, CostsQuery)
    return ok(registry.deployment_service().costs(owner_id, deployment_id, query))


@bp.route(BASE + "/{deployment_id}/endpoint-keys", methods=["POST"])
@handles_errors
def rotate_endpoint_key(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    rotated = registry.deployment_service().rotate_endpoint_key(owner_id, deployment_id)
    logger.info("endpoint key rotated", extra={"delivered": rotated.delivered})
    return ok(
        EndpointKeyOut(
            deployment_id=rotated.item.id,
            endpoint_key=rotated.endpoint_key,
            delivered=rotated.delivered,
        ),
        status=201,
    )
