"""A local stand-in for API Gateway's WebSocket API, running the app's own handlers.

- A real WebSocket server: each connect, frame and close becomes an API Gateway-shaped event
  (`requestContext.routeKey/eventType/connectionId/apiId/stage`) handed to the Chalice handler
  for $connect, $default or $disconnect, off the event loop. A $connect answer other than 200
  refuses the upgrade with that status.
- The management API the handlers call back (`POST /@connections/{id}` = post_to_connection;
  410 GoneException for a connection that is gone; DELETE closes it), on a second port.
- A ticker that fires the app's scheduled handlers every `--tick` seconds, and a drain that
  delivers the metering queue to the app's SQS handler (Lambda's event source mapping).

    python -m prism.dev.ws_gateway --port 8001 --management-port 8002 [--tick 60]
"""

import argparse
import asyncio
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

API_ID = "local"
STAGE = "dev"
MAX_FRAME = 128 * 1024  # API Gateway's WebSocket message limit
CONNECTION_PATH = re.compile(r"/@connections/([^/?]+)$")


class LocalWebsocketGateway:
    def __init__(self, app, host: str, port: int, management_port: int):
        self.app = app
        self.host = host
        self.port = port
        self.management_port = management_port
        self.connections: dict[str, ServerConnection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- the Chalice side ---------------------------------------------------------------

    def _event(self, route_key: str, event_type: str, connection_id: str, **extra) -> dict:
        return {
            "requestContext": {
                "routeKey": route_key,
                "eventType": event_type,
                "connectionId": connection_id,
                "apiId": API_ID,
                "stage": STAGE,
                "domainName": f"{self.host}:{self.port}",
                "requestId": secrets.token_hex(8),
                "connectedAt": int(time.time() * 1000),
            },
            "isBase64Encoded": False,
            **extra,
        }

    def _invoke(self, route_key: str, event: dict) -> dict:
        name = self.app.websocket_handlers[route_key].name
        return self.app.handler_map[name](event, None) or {"statusCode": 200}

    # --- the WebSocket side -------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request):
        connection_id = secrets.token_urlsafe(12) + "="  # shaped like API Gateway's ids
        query = dict(re.findall(r"([^?&=]+)=([^&]*)", request.path.partition("?")[2]))
        event = self._event(
            "$connect",
            "CONNECT",
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
                event = self._event("$default", "MESSAGE", connection_id, body=body)
                await asyncio.to_thread(self._invoke, "$default", event)
        except ConnectionClosed:
            pass
        finally:
            self.connections.pop(connection_id, None)
            event = self._event("$disconnect", "DISCONNECT", connection_id)
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
            max_size=MAX_FRAME,
        ):
            await asyncio.Future()

    # --- the management API -------------------------------------------------------------

    def management_server(self) -> ThreadingHTTPServer:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _connection_id(self) -> str | None:
                match = CONNECTION_PATH.search(self.path.split("?", 1)[0])
                return unquote(match.group(1)) if match else None

            def _reply(self, status: int, error: str | None = None) -> None:
                body = json.dumps({"message": error}).encode() if error else b""
                self.send_response(status)
                if error:
                    self.send_header("x-amzn-ErrorType", "GoneException")
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):  # noqa: N802 - post_to_connection
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                connection_id = self._connection_id()
                if connection_id and gateway.post_to_connection(connection_id, data):
                    self._reply(200)
                else:
                    self._reply(410, "connection is gone")

            def do_GET(self):  # noqa: N802 - get_connection, and a readiness probe on /
                connection_id = self._connection_id()
                if connection_id is None or connection_id in gateway.connections:
                    self._reply(200)
                else:
                    self._reply(410, "connection is gone")

            def do_DELETE(self):  # noqa: N802 - delete_connection
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


def run_ticker(app, interval: float, stop: threading.Event) -> None:
    """Fire every scheduled handler of the app each `interval` seconds (EventBridge locally)."""
    names = [s.name for s in app.event_sources if type(s).__name__ == "ScheduledEventConfig"]
    while not stop.wait(interval):
        for name in names:
            event = {
                "version": "0",
                "account": "000000000000",
                "region": "us-east-1",
                "id": secrets.token_hex(8),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "resources": [f"local:{name}"],
                "detail": {},
            }
            try:
                app.handler_map[name](event, None)
            except Exception as exc:  # a failed tick must not stop the next one
                print(f"scheduled {name} failed: {exc!r}", flush=True)


def run_queue_drain(app, sqs, queue_name: str, stop: threading.Event) -> None:
    """Deliver the metering queue to the app's SQS handler, as Lambda's event source mapping
    does: batches of up to 10, failed messages (batchItemFailures) left for redelivery."""
    handler = next(s.name for s in app.event_sources if type(s).__name__ == "SQSEventConfig")
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    while not stop.is_set():
        try:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        except Exception as exc:  # the moto server going away at shutdown
            print(f"queue drain: {exc!r}", flush=True)
            stop.wait(1)
            continue
        messages = got.get("Messages", [])
        if not messages:
            continue
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {},
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }
        try:
            result = app.handler_map[handler](event, None) or {}
        except Exception as exc:
            print(f"queue handler failed: {exc!r}", flush=True)
            continue
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        for m in messages:
            if m["MessageId"] not in failed:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--management-port", type=int, required=True)
    parser.add_argument("--tick", type=float, default=60.0, help="seconds between schedules")
    args = parser.parse_args()

    from app import app  # settings come from the environment the platform prepared

    gateway = LocalWebsocketGateway(app, args.host, args.port, args.management_port)
    management = gateway.management_server()
    threading.Thread(target=management.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=run_ticker, args=(app, args.tick, stop), daemon=True).start()
    from chalicelib import aws
    from chalicelib.config import settings

    threading.Thread(
        target=run_queue_drain,
        args=(app, aws.client("sqs"), settings.metering_queue, stop),
        daemon=True,
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
