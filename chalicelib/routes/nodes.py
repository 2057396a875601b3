"""/api/v1/compute/nodes (user API keys) and the node WebSocket routes (node tokens)."""

from chalice import Blueprint, Response

from chalicelib.logs import logger
from chalicelib.openapi import documented
from chalicelib.responses import NodeCreated, NodeList, NodeOut
from chalicelib.routes.common import authenticate, handles_errors, ok, parse_body
from chalicelib.schemas import CreateNodeRequest
from chalicelib.services import registry

bp = Blueprint(__name__)
BASE = "/api/v1/compute/nodes"


@bp.route(BASE, methods=["POST"])
@documented(
    "registerNode",
    "Register a node; its token is returned once",
    ok={201: ("registered", NodeCreated)},
    errors=(400, 401),
    body=CreateNodeRequest,
)
@handles_errors
def register_node():
    request = bp.current_request
    owner_id = authenticate(request)
    body = parse_body(request, CreateNodeRequest)
    node, token = registry.node_service().register(owner_id, body.name)
    logger.info("node registered", extra={"node_id": node.id})
    return ok(NodeCreated(**NodeOut.from_item(node).model_dump(), token=token), status=201)


@bp.route(BASE, methods=["GET"])
@documented("listNodes", ok={200: ("your nodes", NodeList)}, errors=(401,))
@handles_errors
def list_nodes():
    owner_id = authenticate(bp.current_request)
    return ok(
        NodeList(items=[NodeOut.from_item(n) for n in registry.node_service().list(owner_id)])
    )


def _token(event: dict) -> str | None:
    """A node token from `Authorization: Bearer …`, else from ?token=… (browsers and some
    proxies cannot set headers on a WebSocket upgrade)."""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (event.get("queryStringParameters") or {}).get("token")


# The WebSocket handlers are registered in app.py: Chalice wraps blueprint WebSocket handlers
# without their event class (chalice 1.34), so they would receive raw dicts.


def on_connect(event):
    logger.clear_state()
    node = registry.node_service().connect(_token(event.to_dict()), event.connection_id)
    if node is None:
        return Response(
            status_code=401,
            body={"error": {"code": "unauthorized", "message": "invalid node token"}},
        )
    return Response(status_code=200, body="")


def on_disconnect(event):
    registry.node_service().disconnect(event.connection_id)


def on_message(event):
    logger.clear_state()
    channel = registry.node_channel()
    for reply in registry.node_message_handler().handle(event.connection_id, event.body):
        channel.send(event.connection_id, reply)
