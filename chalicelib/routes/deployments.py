"""/api/v1/compute/deployments"""

from chalice import Blueprint

from chalicelib.errors import ValidationFailed
from chalicelib.logs import logger
from chalicelib.openapi import documented
from chalicelib.responses import (
    CostList,
    DeploymentCreated,
    DeploymentList,
    DeploymentOut,
    EndpointKeyOut,
    HealthOut,
    LogsOut,
)
from chalicelib.routes.common import authenticate, handles_errors, ok, parse_body, parse_query
from chalicelib.schemas import CostsQuery, CreateDeploymentRequest, ListDeploymentsQuery, LogsQuery
from chalicelib.services import registry

bp = Blueprint(__name__)
BASE = "/api/v1/compute/deployments"
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
}


def _idempotency_key(request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH or not key.isprintable():
        raise ValidationFailed(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_LENGTH} printable characters",
            fields={"Idempotency-Key": "invalid header"},
        )
    return key


@bp.route(BASE, methods=["POST"])
@documented(
    "createDeployment",
    "Create a deployment (image, marketplace or runtime form)",
    ok={201: ("created; endpoint_key is shown this once", DeploymentCreated)},
    errors=(400, 401, 409, 422),
    body=CreateDeploymentRequest,
    headers=(IDEMPOTENCY_KEY,),
)
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
@documented(
    "listDeployments",
    "List your deployments, newest first",
    ok={200: ("a page", DeploymentList)},
    errors=(400, 401),
    query=ListDeploymentsQuery,
)
@handles_errors
def list_deployments():
    request = bp.current_request
    owner_id = authenticate(request)
    query = parse_query(request, ListDeploymentsQuery)
    reads = registry.deployment_reads()
    items, token = reads.list(owner_id, query)
    return ok(DeploymentList(items=reads.shown_all(items), next_token=token))


@bp.route(BASE + "/{deployment_id}", methods=["GET"])
@documented(
    "getDeployment",
    "One deployment: status, endpoint, cost, restarts and last exit",
    ok={200: ("the deployment", DeploymentOut)},
    errors=(401, 404),
)
@handles_errors
def get_deployment(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    reads = registry.deployment_reads()
    return ok(reads.shown(reads.get(owner_id, deployment_id)))


@bp.route(BASE + "/{deployment_id}", methods=["DELETE"])
@documented(
    "stopDeployment",
    "Stop (idempotent): 202 while stopping, 200 once stopped",
    ok={200: ("stopped", DeploymentOut), 202: ("stopping", DeploymentOut)},
    errors=(401, 404, 409),
)
@handles_errors
def stop_deployment(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    item = registry.deployment_service().stop(owner_id, deployment_id)
    logger.info("deployment stop requested", extra={"status": item.status})
    # 202 while the node or provider still has to confirm; 200 once it is over.
    return ok(
        registry.deployment_reads().shown(item), status=202 if item.status == "stopping" else 200
    )


@bp.route(BASE + "/{deployment_id}/health", methods=["GET"])
@documented("getDeploymentHealth", ok={200: ("health", HealthOut)}, errors=(401, 404))
@handles_errors
def deployment_health(deployment_id):
    owner_id = authenticate(bp.current_request)
    logger.append_keys(deployment_id=deployment_id)
    return ok(registry.deployment_reads().health(owner_id, deployment_id))


@bp.route(BASE + "/{deployment_id}/logs", methods=["GET"])
@documented(
    "getDeploymentLogs",
    "The last lines the model printed, fetched from its node",
    ok={200: ("log lines", LogsOut)},
    errors=(400, 401, 404, 409),
    query=LogsQuery,
)
@handles_errors
def deployment_logs(deployment_id):
    request = bp.current_request
    owner_id = authenticate(request)
    logger.append_keys(deployment_id=deployment_id)
    query = parse_query(request, LogsQuery)
    return ok(registry.deployment_reads().logs(owner_id, deployment_id, query.tail))


@bp.route(BASE + "/{deployment_id}/costs", methods=["GET"])
@documented(
    "getDeploymentCosts",
    "The metering ledger, newest first",
    ok={200: ("the ledger", CostList)},
    errors=(400, 401, 404),
    query=CostsQuery,
)
@handles_errors
def deployment_costs(deployment_id):
    request = bp.current_request
    owner_id = authenticate(request)
    logger.append_keys(deployment_id=deployment_id)
    query = parse_query(request, CostsQuery)
    return ok(registry.deployment_reads().costs(owner_id, deployment_id, query))


@bp.route(BASE + "/{deployment_id}/endpoint-keys", methods=["POST"])
@documented(
    "rotateEndpointKey",
    "A new endpoint key replaces the old one (shown once); 409 for a public endpoint, one "
    "PRISM's proxy does not serve, or a stopping or finished deployment",
    ok={201: ("the new key", EndpointKeyOut)},
    errors=(401, 404, 409),
)
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
