"""Locally, Step Functions on moto really runs infra/statemachines/*.asl.json; their Lambda
tasks reach moto's simple Lambda backend, which this routes on: on the local platform to the
local Lambda service (each function in its own container, `route_lambda_to_service`), in the
functional tests to the Chalice app's handlers in the same process (`route_lambda_to_app`).
Either way as Lambda runs them: the event in, the return value out, an exception as
{errorType, errorMessage} with a function error."""

import json
import logging

log = logging.getLogger("prism.dev.lambda")

SFN_CONFIG = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


def route_lambda_to_app(app, stage: str) -> None:
    from moto.awslambda_simple.models import LambdaSimpleBackend

    prefix = f"prism-{stage}-"

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        name = function_name.rsplit(":function:", 1)[-1].split(":", 1)[0].removeprefix(prefix)
        handler = app.handler_map[name]
        event = json.loads(body) if body else {}
        try:
            result = handler(event, None)
        except Exception as exc:  # Lambda reports it; the state machine Retries or Catches
            log.info("%s raised %s: %s", name, type(exc).__name__, exc)
            response_headers["x-amz-function-error"] = "Unhandled"
            result = {"errorType": type(exc).__name__, "errorMessage": str(exc)}
        payload = json.dumps(result, default=str).encode()
        response_headers["Content-Length"] = str(len(payload))
        return payload

    LambdaSimpleBackend.invoke = invoke


def route_lambda_to_service(url: str) -> None:
    from moto.awslambda_simple.models import LambdaSimpleBackend

    from prism.dev.lambda_client import FunctionError, LambdaClient

    functions = LambdaClient(url)

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        try:
            result = functions.invoke(function_name, json.loads(body) if body else {})
        except FunctionError as exc:
            log.info("%s failed: %s", function_name, exc)
            response_headers["x-amz-function-error"] = "Unhandled"
            result = exc.payload
        payload = json.dumps(result, default=str).encode()
        response_headers["Content-Length"] = str(len(payload))
        return payload

    LambdaSimpleBackend.invoke = invoke
