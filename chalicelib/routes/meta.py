"""The OpenAPI document (public: it describes the API, holds no data)."""

from chalice import Blueprint

from chalicelib.openapi import document
from chalicelib.routes.common import handles_errors

bp = Blueprint(__name__)


@bp.route("/api/v1/openapi.json", methods=["GET"])
@handles_errors
def openapi():
    return document(bp.current_app.routes)
