"""API Gateway's REST API, locally: chalice local's gateway (HTTP -> API Gateway proxy event ->
response), routed by the packaged template's swagger, invoking the APIHandler function's
containers, so the REST API runs from the Lambda package with its own environment. It runs in
the local Lambda service's process (prism.dev.lambda_service `--rest-port`): API Gateway's
Lambda integration has no HTTP hop of ours between them, so neither does the stand-in.

chalice local speaks HTTP/1.1 keep-alive and writes headers and body separately; with Nagle on,
every reused connection waits for the client's delayed ACK (~40 ms a request). API Gateway has no
such stall, so the local stand-in should not either.

Where API Gateway itself answers (no route for that path and method, whatever the method: HEAD,
TRACE and OPTIONS included; a failed or timed-out integration; a malformed request), so does
this server, through the gateway responses the template configures
(`x-amazon-apigateway-gateway-responses` in the REST API's definition, from
infra/resources.json), else with API Gateway's own defaults (403 `{"message": "Missing
Authentication Token"}`, ...). A HEAD answer never carries a body.
"""

import base64
import json
import re
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

from chalice.config import Config
from chalice.local import ChaliceRequestHandler, LocalDevServer, LocalGateway

from prism.dev.stack import Stack

INTEGRATION_TIMEOUT_S = 29  # API Gateway REST's integration timeout (not raisable)


# The function behind the API: (the event as JSON, how long to wait) -> (its answer, whether
# that is a function error); TimeoutError once the wait is over.
Invoke = Callable[[bytes, float], tuple[bytes, bool]]


class TemplateRoutes:
    """What chalice local's gateway reads of an app, taken from the template: its routes and
    binary types; calling it invokes the function behind the API."""

    def __init__(self, stack: Stack, invoke: Invoke, function: str = "APIHandler"):
        route = SimpleNamespace(authorizer=None, cors=None)  # auth and CORS are the app's own
        self.routes = {
            path: dict.fromkeys(methods, route) for path, methods in stack.rest_paths().items()
        }
        self.api = SimpleNamespace(binary_types=stack.binary_types())
        self.responses = GatewayResponses(gateway_responses(stack))
        self.invoke = invoke
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
            answer, failed = self.invoke(
                json.dumps(event, default=str).encode(), INTEGRATION_TIMEOUT_S
            )
        except TimeoutError:  # API Gateway gives up on the integration, the function runs on
            return self.responses.answer("INTEGRATION_TIMEOUT")
        if failed:  # API Gateway's answer to a failed Lambda integration
            print(f"{self.function} failed: {answer[:1000]!r}", flush=True)
            return self.responses.answer("INTEGRATION_FAILURE")
        return json.loads(answer)


def gateway_responses(stack: Stack) -> dict:
    body = stack.resources["RestAPI"]["Properties"]["DefinitionBody"]
    return body.get("x-amazon-apigateway-gateway-responses", {})


# API Gateway's own answers: response type -> (status, message, x-amzn-ErrorType).
AWS_GATEWAY_DEFAULTS = {
    "MISSING_AUTHENTICATION_TOKEN": (
        403,
        "Missing Authentication Token",
        "MissingAuthenticationTokenException",
    ),
    "INTEGRATION_FAILURE": (502, "Internal server error", "InternalServerErrorException"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out", "InternalServerErrorException"),
    "BAD_REQUEST": (400, "Bad request", "BadRequestException"),
}
_CONTEXT_VARIABLE = re.compile(r"\$context\.[A-Za-z.]*[A-Za-z]")


class GatewayResponses:
    """API Gateway's answers where it answers itself, customised as the REST API's gateway
    responses say: the type's own, else DEFAULT_4XX / DEFAULT_5XX, else AWS's default. Their
    templates are non-VTL: `$context` variables substituted, nothing else."""

    def __init__(self, configured: dict):
        self.configured = configured

    def answer(self, kind: str, method: str = "", path: str = "") -> dict:
        status, message, error_type = AWS_GATEWAY_DEFAULTS[kind]
        custom = self.configured.get(kind) or self.configured.get(
            "DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"
        )
        request_id = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "x-amzn-RequestId": request_id,
            "x-amzn-ErrorType": error_type,
        }
        body = json.dumps({"message": message})
        if custom is not None:
            status = int(custom.get("statusCode", status))
            template = (custom.get("responseTemplates") or {}).get("application/json")
            if template is not None:
                variables = {
                    "$context.error.messageString": json.dumps(message),
                    "$context.error.message": message,
                    "$context.error.responseType": kind,
                    "$context.requestId": request_id,
                    "$context.httpMethod": method,
                    "$context.path": path,
                }
                body = _CONTEXT_VARIABLE.sub(lambda m: variables.get(m[0], ""), template)
            for name, value in (custom.get("responseParameters") or {}).items():
                header = name.removeprefix("gatewayresponse.header.")
                if header != name and value.startswith("'") and value.endswith("'"):
                    headers[header] = value[1:-1]  # static values only
        return {"statusCode": status, "headers": headers, "multiValueHeaders": {}, "body": body}


class RestGateway(LocalGateway):
    """chalice local's gateway, answering as API Gateway where no route has the request's
    path and method: every method (OPTIONS too: our API defines no CORS preflight) goes
    through the template's routes, never straight to the function."""

    def handle_request(self, method: str, path: str, headers: dict, body) -> dict:
        responses = self._app_object.responses
        try:
            event = self._generate_lambda_event(method, path, headers, body)
        except ValueError:  # no resource has this path
            return responses.answer("MISSING_AUTHENTICATION_TOKEN", method, path)
        if method not in self._app_object.routes[event["requestContext"]["resourcePath"]]:
            return responses.answer("MISSING_AUTHENTICATION_TOKEN", method, path)
        return self._app_object(event, self._generate_lambda_context())


class GatewayRequestHandler(ChaliceRequestHandler):
    """chalice local's request handler for every method, malformed requests answered as the
    gateway answers them, and no body after a HEAD answer's headers."""

    def __init__(self, request, client_address, server, app_object, config) -> None:
        self.local_gateway = RestGateway(app_object, config)
        self.gateway_responses = app_object.responses
        BaseHTTPRequestHandler.__init__(self, request, client_address, server)

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # TRACE, CONNECT, anything: the gateway decides
            return self._generic_handle
        raise AttributeError(name)

    def _parse_payload(self):
        try:
            length = int(self.headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            raise _MalformedRequest("invalid Content-Length")
        body = self.rfile.read(length) if length > 0 else None
        return dict(self.headers), body

    def _generic_handle(self) -> None:
        try:
            super()._generic_handle()
        except _MalformedRequest:
            self.close_connection = True  # the rest of the stream cannot be framed
            self._send_answer(self.gateway_responses.answer("BAD_REQUEST", self.command, self.path))

    def log_message(self, *args) -> None:
        pass  # API Gateway keeps no access log unless a stage asks; the function logs each

    # chalice binds these to its own _generic_handle: rebind them to this class's.
    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _send_answer(self, response: dict) -> None:
        self._send_http_response(response["statusCode"], response["headers"], response["body"])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """The standard library's own errors (a malformed request line, oversized headers, an
        unknown HTTP version): as the gateway's error in JSON, never its HTML page."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer HTTP/1.x
            self.request_version = self.protocol_version
        self._send_answer(self.gateway_responses.answer("BAD_REQUEST"))

    def _send_http_response_with_body(self, code: int, headers: dict, body) -> None:
        if getattr(self, "command", None) != "HEAD":
            return super()._send_http_response_with_body(code, headers, body)
        # HEAD: the headers a GET would get, no body (the client would read it as the next
        # response on this connection).
        self.send_response(code)
        self.send_header(
            "Content-Length", str(len(body if isinstance(body, bytes) else body.encode()))
        )
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        self._send_headers(headers)


class _MalformedRequest(Exception):
    pass


def rest_api(stack: Stack, invoke: Invoke, host: str, port: int, stage: str) -> LocalDevServer:
    """The REST API's server (call serve_forever), invoking APIHandler through `invoke`."""
    ChaliceRequestHandler.disable_nagle_algorithm = True
    config = Config(chalice_stage=stage, config_from_disk={"app_name": "prism"})
    return LocalDevServer(
        TemplateRoutes(stack, invoke), config, host, port, handler_cls=GatewayRequestHandler
    )
