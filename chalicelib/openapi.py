"""The OpenAPI 3.1 document, generated from the pydantic schemas (the one source of truth)."""

from functools import cache

from pydantic.json_schema import models_json_schema

from chalicelib.schemas import (
    CostList,
    CreateDeploymentRequest,
    CreateNodeRequest,
    DeploymentCreated,
    DeploymentList,
    DeploymentOut,
    EndpointKeyOut,
    ErrorBody,
    HealthOut,
    LogsOut,
    NodeCreated,
    NodeList,
    ResourceList,
    ResourceOut,
)

REF = "#/components/schemas/{model}"


def _ref(model) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model) -> dict:
    return {"content": {"application/json": {"schema": _ref(model)}}}


def _responses(ok: dict[str, tuple[str, type]], errors: tuple[int, ...]) -> dict:
    responses = {code: {"description": text, **_json(model)} for code, (text, model) in ok.items()}
    descriptions = {
        400: "invalid request",
        401: "missing or invalid API key",
        404: "not found (or not yours)",
        409: "conflict",
        422: "Idempotency-Key reused with another body",
        500: "internal error",
    }
    for code in (*errors, 500):
        responses[str(code)] = {"description": descriptions[code], **_json(ErrorBody)}
    return responses


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


@cache
def document() -> dict:
    _, defs = models_json_schema(
        [
            (m, "serialization")
            for m in (
                DeploymentOut,
                DeploymentCreated,
                EndpointKeyOut,
                DeploymentList,
                HealthOut,
                ResourceOut,
                ResourceList,
                ErrorBody,
                LogsOut,
                CostList,
                NodeCreated,
                NodeList,
            )
        ]
        + [(CreateDeploymentRequest, "validation"), (CreateNodeRequest, "validation")],
        ref_template=REF,
    )
    dep = "/api/v1/compute/deployments"
    dep_id = [_path_param("deployment_id")]
    paths = {
        dep: {
            "post": {
                "operationId": "createDeployment",
                "summary": "Create a deployment (image, marketplace or runtime form)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {"required": True, **_json(CreateDeploymentRequest)},
                "responses": _responses(
                    {"201": ("created; endpoint_key is shown this once", DeploymentCreated)},
                    (400, 401, 409, 422),
                ),
            },
            "get": {
                "operationId": "listDeployments",
                "summary": "List your deployments, newest first",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "comma-separated statuses",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
                    },
                    {
                        "name": "next_token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses({"200": ("a page", DeploymentList)}, (400, 401)),
            },
        },
        dep + "/{deployment_id}": {
            "get": {
                "operationId": "getDeployment",
                "summary": "One deployment: status, endpoint, cost, restarts and last exit",
                "parameters": dep_id,
                "responses": _responses({"200": ("the deployment", DeploymentOut)}, (401, 404)),
            },
            "delete": {
                "operationId": "stopDeployment",
                "summary": "Stop (idempotent): 202 while stopping, 200 once stopped",
                "parameters": dep_id,
                "responses": _responses(
                    {"200": ("stopped", DeploymentOut), "202": ("stopping", DeploymentOut)},
                    (401, 404, 409),
                ),
            },
        },
        dep + "/{deployment_id}/health": {
            "get": {
                "operationId": "getDeploymentHealth",
                "parameters": dep_id,
                "responses": _responses({"200": ("health", HealthOut)}, (401, 404)),
            },
        },
        dep + "/{deployment_id}/logs": {
            "get": {
                "operationId": "getDeploymentLogs",
                "summary": "The last lines the model printed, fetched from its node",
                "parameters": [
                    *dep_id,
                    {
                        "name": "tail",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 5000,
                            "default": 100,
                        },
                    },
                ],
                "responses": _responses({"200": ("log lines", LogsOut)}, (400, 401, 404, 409)),
            },
        },
        dep + "/{deployment_id}/endpoint-keys": {
            "post": {
                "operationId": "rotateEndpointKey",
                "summary": "A new endpoint key replaces the old one (shown once); 409 for a "
                "public endpoint, one PRISM's proxy does not serve, or a stopping or finished "
                "deployment",
                "parameters": dep_id,
                "responses": _responses({"201": ("the new key", EndpointKeyOut)}, (401, 404, 409)),
            },
        },
        dep + "/{deployment_id}/costs": {
            "get": {
                "operationId": "getDeploymentCosts",
                "summary": "The metering ledger, newest first",
                "parameters": [
                    *dep_id,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                    {
                        "name": "next_token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": _responses({"200": ("the ledger", CostList)}, (400, 401, 404)),
            },
        },
        "/api/v1/compute/nodes": {
            "post": {
                "operationId": "registerNode",
                "summary": "Register a node; its token is returned once",
                "requestBody": {"required": True, **_json(CreateNodeRequest)},
                "responses": _responses({"201": ("registered", NodeCreated)}, (400, 401)),
            },
            "get": {
                "operationId": "listNodes",
                "responses": _responses({"200": ("your nodes", NodeList)}, (401,)),
            },
        },
        "/api/v1/marketplace/resources": {
            "get": {
                "operationId": "listResources",
                "responses": _responses({"200": ("the catalog", ResourceList)}, (401,)),
            },
        },
        "/api/v1/marketplace/resources/{slug}": {
            "get": {
                "operationId": "getResource",
                "parameters": [_path_param("slug")],
                "responses": _responses({"200": ("a resource", ResourceOut)}, (401, 404)),
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "PRISM Deployments API", "version": "1.0.0"},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": paths,
    }
