"""The OpenAPI 3.1 document, generated: its paths from the app's own routes, each documented
beside its route (`documented`), and its schemas from the pydantic models those routes take
and return (the one source of truth). A route that is not documented (the console's files, the
document itself) is not in it."""

import re
from dataclasses import dataclass, field

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chalicelib.responses import ErrorBody

REF = "#/components/schemas/{model}"
ERROR_DESCRIPTIONS = {
    400: "invalid request",
    401: "missing or invalid API key",
    404: "not found (or not yours)",
    409: "conflict",
    422: "Idempotency-Key reused with another body",
    500: "internal error",
}


@dataclass(frozen=True)
class Operation:
    """How one route appears in the document. `ok`: status -> (description, response model);
    `errors`: the statuses it may answer in our error shape (500 is always listed)."""

    operation_id: str
    summary: str | None
    ok: dict[int, tuple[str, type[BaseModel]]]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: tuple[dict, ...] = field(default=())


def documented(operation_id: str, summary: str | None = None, **details):
    """Route decorator (below `bp.route`): how the route appears in the document."""
    operation = Operation(operation_id, summary, **details)

    def attach(view):
        view.openapi = operation
        return view

    return attach


_documents: dict[int, dict] = {}  # per routes table: the app is built once per container


def document(routes: dict) -> dict:
    """The document for a Chalice app's `routes` (path -> method -> RouteEntry)."""
    if id(routes) not in _documents:
        _documents[id(routes)] = _build(routes)
    return _documents[id(routes)]


def _build(routes: dict) -> dict:
    operations = [
        (path, method.lower(), entry.view_function.openapi)
        for path, methods in routes.items()
        for method, entry in methods.items()
        if hasattr(entry.view_function, "openapi")
    ]
    schemas = _schemas([operation for _, _, operation in operations])
    paths: dict[str, dict] = {}
    for path, method, operation in operations:
        paths.setdefault(path, {})[method] = _operation(path, operation, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "PRISM Deployments API", "version": "1.0.0"},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": paths,
    }


def _schemas(operations: list[Operation]) -> dict:
    answers = {m for op in operations for _, m in op.ok.values()} | {ErrorBody}
    inputs = {op.body for op in operations if op.body} | {op.query for op in operations if op.query}
    by_name = sorted(
        [(m, "serialization") for m in answers] + [(m, "validation") for m in inputs],
        key=lambda pair: pair[0].__name__,
    )
    _, defs = models_json_schema(by_name, ref_template=REF)
    return defs["$defs"]


def _operation(path: str, operation: Operation, schemas: dict) -> dict:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
    ]
    parameters += list(operation.headers)
    if operation.query is not None:
        parameters += _query_parameters(schemas[operation.query.__name__])
    documented_op: dict = {"operationId": operation.operation_id}
    if operation.summary:
        documented_op["summary"] = operation.summary
    if parameters:
        documented_op["parameters"] = parameters
    if operation.body is not None:
        documented_op["requestBody"] = {"required": True, **_json(operation.body)}
    responses = {
        str(code): {"description": text, **_json(model)}
        for code, (text, model) in operation.ok.items()
    }
    for code in (*operation.errors, 500):
        responses[str(code)] = {"description": ERROR_DESCRIPTIONS[code], **_json(ErrorBody)}
    documented_op["responses"] = responses
    return documented_op


def _query_parameters(schema: dict) -> list[dict]:
    """A query model's fields as query parameters (a list is `name=a&name=b`, OpenAPI's
    default form style)."""
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        description = prop.pop("description", None)
        options = [p for p in prop.pop("anyOf", ()) if p != {"type": "null"}]
        if len(options) == 1:  # optional: absent, not null
            prop = options[0] | prop
        if prop.get("default", "") is None:
            del prop["default"]
        elif options:
            prop["anyOf"] = options
        parameter = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _json(model) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}}
