"""The events AWS hands a function, as the local stand-ins build them: EventBridge's schedule
(prism.dev.ws_gateway's ticker), SQS's event source (its queue drain) and API Gateway's
WebSocket routes (its gateway). Benchmarks and tests that call handlers directly build theirs
here too, so every caller hands the app the same shapes."""

import json
import secrets
import time

WEBSOCKET_EVENT_TYPES = {"$connect": "CONNECT", "$default": "MESSAGE", "$disconnect": "DISCONNECT"}


def scheduled_event(rule: str) -> dict:
    """What EventBridge hands a schedule's function."""
    return {
        "version": "0",
        "account": "000000000000",
        "region": "us-east-1",
        "id": secrets.token_hex(8),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resources": [f"local:{rule}"],
        "detail": {},
    }


def sqs_record(message: dict, arn: str) -> dict:
    """One message of an SQS event source's batch (`message` as ReceiveMessage returned it)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": "us-east-1",
    }


def websocket_event(
    route_key: str,
    connection_id: str,
    *,
    api_id: str = "local",
    stage: str = "api",
    domain: str = "localhost",
    body=None,
    headers: dict | None = None,
    **extra,
) -> dict:
    """What API Gateway's WebSocket API hands the function of a route ($connect, $default,
    $disconnect); a body that is not text yet is sent as JSON. `extra`: more top-level fields
    (a $connect's queryStringParameters)."""
    event = {
        "requestContext": {
            "routeKey": route_key,
            "eventType": WEBSOCKET_EVENT_TYPES[route_key],
            "connectionId": connection_id,
            "apiId": api_id,
            "stage": stage,
            "domainName": domain,
            "requestId": secrets.token_hex(8),
            "connectedAt": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
        **extra,
    }
    if headers is not None or route_key == "$connect":  # a $connect always has its request's
        event["headers"] = headers or {}
    if body is not None:
        event["body"] = body if isinstance(body, str | bytes) else json.dumps(body)
    return event
