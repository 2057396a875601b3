"""A local stand-in for API Gateway's WebSocket API, EventBridge's schedules and Lambda's SQS
event source, invoking the packaged stack's functions through the local Lambda service.

- A real WebSocket server: each connect, frame and close becomes an API Gateway-shaped event
  (`requestContext.routeKey/eventType/connectionId/apiId/stage`) handed to the function the
  template routes $connect, $default or $disconnect to, off the event loop. A $connect answer
  other than 200 refuses the upgrade with that status.
- The management API the functions call back (`POST /@connections/{id}` = post_to_connection;
  410 GoneException for a connection that is gone; DELETE closes it), on a second port. Like
  API Gateway's, it answers only requests SigV4-signed with the functions' keys (403 otherwise).
- A ticker that fires the template's scheduled functions every `--tick` seconds, and a drain that
  delivers each SQS event source's queue to its function (batchItemFailures honoured).

    python -m prism.dev.ws_gateway --port 8001 --management-port 8002 --functions-url URL \
        --package DIR --stage dev --identities FILE [--tick 60]
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import boto3
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chalicelib.protocol import MAX_MESSAGE_BYTES
from prism.dev import identities
from prism.dev.events import scheduled_event, sqs_record, websocket_event
from prism.dev.lambda_client import FunctionError, LambdaClient
from prism.dev.sigv4 import signer_of
from prism.dev.stack import LOCAL_API_IDS, LocalAws, Stack

API_ID = LOCAL_API_IDS["WebsocketAPI"]
STAGE = "api"  # the template's API Gateway stage
CONNECTION_PATH = re.compile(r"/@connections/([^/?]+)$")


class LocalWebsocketGateway:
    def __init__(
        self, functions: LambdaClient, routes: dict, host: str, port: int, management_port: int
    ):
        self.functions = functions
        self.routes = routes  # $connect/$default/$disconnect -> the function's logical id
        self.host = host
        self.port = port
        self.management_port = management_port
        self.connections: dict[str, ServerConnection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- the Chalice side ---------------------------------------------------------------

    def _event(self, route_key: str, connection_id: str, **fields) -> dict:
        return websocket_event(
            route_key,
            connection_id,
            api_id=API_ID,
            stage=STAGE,
            domain=f"{self.host}:{self.port}",
            **fields,
        )

    def _invoke(self, route_key: str, event: dict) -> dict:
        try:
            return self.functions.invoke(self.routes[route_key], event) or {"statusCode": 200}
        except FunctionError as exc:  # API Gateway answers an integration failure with a 500
            print(f"{route_key} failed: {exc}", flush=True)
            return {"statusCode": 500, "body": "Internal server error"}

    # --- the WebSocket side -------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request):
        connection_id = secrets.token_urlsafe(12) + "="  # shaped like API Gateway's ids
        query = dict(re.findall(r"([^?&=]+)=([^&]*)", request.path.partition("?")[2]))
        event = self._event(
            "$connect",
            connection_id,
            headers=dict(request.headers.raw_items()),
            queryStringParameters=query or None,
        )
        result = await asyncio.to_thread(self._invoke, "$connect", event)
        status = int(result.get("statusCode", 200))
        if status != 200:
            return connection.respond(status, _body_text(result) + "\n")
        connection.prism_id = connection_id
        self.connections[connection_id] = connection
        return None

    async def _serve_connection(self, connection: ServerConnection) -> None:
        connection_id = connection.prism_id
        try:
            async for frame in connection:  # one at a time: a node's messages stay in order
                body = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
                event = self._event("$default", connection_id, body=body)
                await asyncio.to_thread(self._invoke, "$default", event)
        except ConnectionClosed:
            pass
        finally:
            self.connections.pop(connection_id, None)
            event = self._event("$disconnect", connection_id)
            await asyncio.to_thread(self._invoke, "$disconnect", event)

    def post_to_connection(self, connection_id: str, data: bytes) -> bool:
        connection = self.connections.get(connection_id)
        if connection is None or self.loop is None:
            return False
        future = asyncio.run_coroutine_threadsafe(connection.send(data.decode()), self.loop)
        try:
            future.result(timeout=10)
        except (ConnectionClosed, TimeoutError):
            return False
        return True

    def close_connection(self, connection_id: str) -> bool:
        connection = self.connections.get(connection_id)
        if connection is None or self.loop is None:
            return False
        # Like API Gateway's DeleteConnection: starts the close, does not wait for the peer.
        asyncio.run_coroutine_threadsafe(connection.close(), self.loop)
        return True

    async def serve_forever(self) -> None:
        self.loop = asyncio.get_running_loop()
        async with serve(
            self._serve_connection,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=MAX_MESSAGE_BYTES,
        ):
            await asyncio.Future()

    # --- the management API -------------------------------------------------------------

    def management_server(self, allowed) -> ThreadingHTTPServer:
        """`allowed(request, connection_id)`: whether a request may manage that connection."""
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _signed(self, body: bytes) -> bool:
                if allowed(self, body, self._connection_id() or ""):
                    return True
                self._reply(403, "Forbidden", "ForbiddenException")
                return False

            def _connection_id(self) -> str | None:
                match = CONNECTION_PATH.search(self.path.split("?", 1)[0])
                return unquote(match.group(1)) if match else None

            def _reply(self, status: int, error: str | None = None, kind="GoneException") -> None:
                body = json.dumps({"message": error}).encode() if error else b""
                self.send_response(status)
                if error:
                    self.send_header("x-amzn-ErrorType", kind)
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - post_to_connection
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self._signed(data):
                    return
                if len(data) > MAX_MESSAGE_BYTES:  # as API Gateway answers it
                    self._reply(413, "Message too long", "PayloadTooLargeException")
                    return
                connection_id = self._connection_id()
                if connection_id and gateway.post_to_connection(connection_id, data):
                    self._reply(200)
                else:
                    self._reply(410, "connection is gone")

            def do_GET(self):  # noqa: N802 - get_connection, and a readiness probe on /
                connection_id = self._connection_id()
                if connection_id is not None and not self._signed(b""):
                    return
                if connection_id is None or connection_id in gateway.connections:
                    self._reply(200)
                else:
                    self._reply(410, "connection is gone")

            def do_DELETE(self):  # noqa: N802 - delete_connection
                if not self._signed(b""):
                    return
                connection_id = self._connection_id()
                ok = connection_id and gateway.close_connection(connection_id)
                self._reply(204 if ok else 410, None if ok else "connection is gone")

            def log_message(self, *args):  # quiet: one line per message is noise
                pass

        server = ThreadingHTTPServer((self.host, self.management_port), Handler)
        server.daemon_threads = True
        return server


def _body_text(result: dict) -> str:
    body = result.get("body") or ""
    return body if isinstance(body, str) else json.dumps(body)


def connection_policy(roles: dict, local: LocalAws):
    """As on AWS: a request signed (SigV4, execute-api) by a role whose policy allows
    execute-api:ManageConnections on this API, this method and this connection."""
    by_key = {role.access_key: role for role in roles.values()}
    keys = {key: role.secret_key for key, role in by_key.items()}
    api = f"arn:aws:execute-api:{local.region}:{local.account}:{API_ID}/{STAGE}"

    def allowed(request, body: bytes, connection_id: str) -> bool:
        url = f"http://{request.headers.get('Host', '')}{request.path}"
        signer = signer_of(request.command, url, dict(request.headers), body, keys, "execute-api")
        resource = f"{api}/{request.command}/@connections/{connection_id}"
        return signer is not None and identities.allows(
            by_key[signer], "execute-api:ManageConnections", resource
        )

    return allowed


def run_ticker(functions: LambdaClient, names: list[str], interval: float, stop) -> None:
    """Fire every scheduled function each `interval` seconds (EventBridge locally)."""
    while not stop.wait(interval):
        for name in names:
            event = scheduled_event(name)
            try:
                functions.invoke(name, event)
            except Exception as exc:  # a failed tick must not stop the next one
                print(f"scheduled {name} failed: {exc!r}", flush=True)


def run_queue_drain(functions: LambdaClient, function: str, source: dict, sqs, stop) -> None:
    """Deliver a queue to its function, as Lambda's event source mapping does: batches of up
    to BatchSize, failed messages (batchItemFailures) left for redelivery. Nothing stops it but
    `stop`: an error is printed and the next poll goes on."""
    arn, url = source["Queue"], None
    while not stop.is_set():
        try:
            url = url or sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]
            _deliver_once(functions, function, arn, url, source.get("BatchSize", 10), sqs)
        except Exception as exc:  # the moto server going away at shutdown, a timeout, ...
            print(f"queue drain: {exc!r}", flush=True)
            stop.wait(1)


def _deliver_once(functions: LambdaClient, function: str, arn: str, url: str, batch, sqs):
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=batch, WaitTimeSeconds=1)
    messages = got.get("Messages", [])
    if not messages:
        return
    event = {"Records": [sqs_record(m, arn) for m in messages]}
    try:
        result = functions.invoke(function, event)
    except Exception as exc:  # the whole batch comes back after the visibility timeout
        print(f"queue handler failed: {exc!r}", flush=True)
        return
    failures = result.get("batchItemFailures", []) if isinstance(result, dict) else []
    failed = {f.get("itemIdentifier") for f in failures}
    for m in messages:
        if m["MessageId"] not in failed:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--management-port", type=int, required=True)
    parser.add_argument("--tick", type=float, default=60.0, help="seconds between schedules")
    parser.add_argument("--functions-url", required=True, help="the local Lambda service")
    parser.add_argument("--package", required=True, help="the packaged stack's directory")
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--identities", required=True, help="each function's role and keys")
    args = parser.parse_args()

    own = f"http://{args.host}"  # only region and account matter for what is resolved here
    stack = Stack(Path(args.package), LocalAws(args.stage, own, own, own))
    functions = LambdaClient(args.functions_url)
    gateway = LocalWebsocketGateway(
        functions, stack.websocket_routes(), args.host, args.port, args.management_port
    )
    roles = identities.load(Path(args.identities))
    management = gateway.management_server(connection_policy(roles, stack.local))
    threading.Thread(target=management.serve_forever, daemon=True).start()
    stop = threading.Event()
    schedules = [name for name, _ in stack.event_sources("Schedule")]
    threading.Thread(
        target=run_ticker, args=(functions, schedules, args.tick, stop), daemon=True
    ).start()
    for name, source in stack.event_sources("SQS"):
        # Lambda's event source mapping reads the queue with the function's role.
        sqs = boto3.client(
            "sqs",
            endpoint_url=os.environ["PRISM_AWS_ENDPOINT_URL"],
            aws_access_key_id=roles[name].access_key,
            aws_secret_access_key=roles[name].secret_key,
        )
        threading.Thread(
            target=run_queue_drain, args=(functions, name, source, sqs, stop), daemon=True
        ).start()
    print(
        f"websocket ws://{args.host}:{args.port} management "
        f"http://{args.host}:{args.management_port}",
        flush=True,
    )
    try:
        asyncio.run(gateway.serve_forever())
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        management.shutdown()


if __name__ == "__main__":
    main()
