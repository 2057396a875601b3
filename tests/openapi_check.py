"""Validate a response against the OpenAPI document the API itself serves."""

import re
from functools import cache

from jsonschema import Draft202012Validator

from app import app
from chalicelib.openapi import document


@cache
def _routes() -> list[tuple[re.Pattern, str]]:
    routes = []
    for template in document(app.routes)["paths"]:
        pattern = re.sub(r"\{[^/]+\}", "[^/]+", template)
        routes.append((re.compile(f"^{pattern}$"), template))
    return routes


def response_schema(method: str, path: str, status: int) -> dict:
    path = path.split("?", 1)[0]
    doc = document(app.routes)
    for pattern, template in _routes():
        if pattern.match(path):
            operation = doc["paths"][template].get(method.lower())
            assert operation, f"{method} {template} is not in the OpenAPI document"
            response = operation["responses"].get(str(status))
            assert response, f"{method} {template} does not document status {status}"
            schema = response["content"]["application/json"]["schema"]
            return {**schema, "components": doc["components"]}
    raise AssertionError(f"{path} is not in the OpenAPI document")


def assert_matches_openapi(method: str, path: str, status: int, body) -> None:
    schema = response_schema(method, path, status)
    errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
    assert not errors, f"{method} {path} {status} does not match OpenAPI: {errors[0].message}"
