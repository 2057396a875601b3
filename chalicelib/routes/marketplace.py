"""/api/v1/marketplace/resources"""

from chalice import Blueprint

from chalicelib.openapi import documented
from chalicelib.responses import ResourceList, ResourceOut
from chalicelib.routes.common import authenticate, handles_errors, ok
from chalicelib.services import registry

bp = Blueprint(__name__)
BASE = "/api/v1/marketplace/resources"


@bp.route(BASE, methods=["GET"])
@documented("listResources", ok={200: ("the catalog", ResourceList)}, errors=(401,))
@handles_errors
def list_resources():
    authenticate(bp.current_request)
    return ok(ResourceList(items=registry.catalog_service().list()))


@bp.route(BASE + "/{slug}", methods=["GET"])
@documented("getResource", ok={200: ("a resource", ResourceOut)}, errors=(401, 404))
@handles_errors
def get_resource(slug):
    authenticate(bp.current_request)
    return ok(registry.catalog_service().get(slug))
