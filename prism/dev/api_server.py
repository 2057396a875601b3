"""API Gateway's REST API, locally: chalice local's gateway (HTTP -> API Gateway proxy event ->
response), routed by the packaged template's swagger, invoking the APIHandler function in the
local Lambda service, so the REST API runs from the Lambda package with its own environment.

chalice local speaks HTTP/1.1 keep-alive and writes headers and body separately; with Nagle on,
every reused connection waits for the client's delayed ACK (~40 ms a request). API Gateway has no
such stall, so the local stand-in should not either.

    python -m prism.dev.api_server --port 8000 --functions-url URL --package DIR --stage dev
"""

import argparse
import base64
import json
from pathlib import Path
from types import SimpleNamespace

import requests
from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalDevServer

from prism.dev.lambda_service import FunctionError, LambdaClient
from prism.dev.stack import LocalAws, Stack

INTEGRATION_TIMEOUT_S = 29  # API Gateway REST's integration timeout (not raisable)


class TemplateRoutes:
    """What chalice local's gateway reads of an app, taken from the template: its routes and
    binary types; calling it invokes the function behind the API."""

    def __init__(self, stack: Stack, functions: LambdaClient, function: str = "APIHandler"):
        route = SimpleNamespace(authorizer=None, cors=None)  # auth and CORS are the app's own
        self.routes = {
            path: dict.fromkeys(methods, route) for path, methods in stack.rest_paths().items()
        }
        self.api = SimpleNamespace(binary_types=stack.binary_types())
        self.functions = functions
        self.function = function

    def __call__(self, event: dict, context) -> dict:
        body = event.get("body")
        if isinstance(body, bytes):  # API Gateway sends text, or base64 when it is not text
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                event["body"] = base64.b64encode(body).decode("ascii")
                event["isBase64Encoded"] = True
        try:
            return self.functions.invoke(self.function, event, timeout=INTEGRATION_TIMEOUT_S)
        except requests.Timeout:  # API Gateway gives up on the integration, the function runs on
            return _gateway_error(504, "Endpoint request timed out")
        except FunctionError as exc:  # API Gateway's answer to a failed Lambda integration
            print(f"{self.function} failed: {exc}", flush=True)
            return _gateway_error(502, "Internal server error")


def _gateway_error(status: int, message: str) -> dict:
    """API Gateway's own answer when the integration fails, in the proxy response shape."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {},
        "body": json.dumps({"message": message}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--functions-url", required=True, help="the local Lambda service")
    parser.add_argument("--package", required=True, help="the packaged stack's directory")
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args()
    own = f"http://{args.host}:{args.port}"
    stack = Stack(Path(args.package), LocalAws(args.stage, own, own, own))
    app = TemplateRoutes(stack, LambdaClient(args.functions_url))
    ChaliceRequestHandler.disable_nagle_algorithm = True
    config = Config(chalice_stage=args.stage, config_from_disk={"app_name": "prism"})
    LocalDevServer(app, config, args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
