"""The local Lambda service's Invoke API, as AWS's services call it: the client the local
stand-ins use (the WebSocket API, EventBridge and the SQS event source in prism.dev.ws_gateway;
Step Functions in moto, through prism.dev.lambda_router). Only callers showing the platform's
token (INVOKE_TOKEN, in their environment only) are answered.
"""

import json
import os
import select
import threading
from http.client import HTTPConnection, HTTPException
from urllib.parse import urlsplit

INVOKE_TOKEN = "PRISM_LOCAL_INVOKE_TOKEN"  # the platform's stand-ins show it; nothing else can


class FunctionError(Exception):
    """The function raised (or timed out): Lambda's X-Amz-Function-Error."""

    def __init__(self, payload: dict):
        super().__init__(f"{payload.get('errorType')}: {payload.get('errorMessage')}")
        self.payload = payload


class LambdaClient:
    """Invoke a function of the local Lambda service, as AWS's services do: on one kept-alive
    connection per thread (the SDKs keep theirs), with the standard library's lean client."""

    def __init__(self, url: str, token: str | None = None):
        where = urlsplit(url)
        self.host, self.port = where.hostname, where.port or 80
        self.token = token or os.environ[INVOKE_TOKEN]
        self.local = threading.local()  # a connection per thread: connections aren't shared

    def invoke(self, function: str, event: dict, timeout: float = 960):
        """The function's result; FunctionError if it raised; TimeoutError if it had not
        answered within `timeout` (how long the caller waits; 960 s: the longest a function
        may run, and some); OSError or HTTPException if the service could not be reached."""
        if not hasattr(self.local, "connection"):
            self.local.connection = HTTPConnection(self.host, self.port)
        status, headers, body = _exchange(
            self.local.connection,
            "POST",
            f"/2015-03-31/functions/{function}/invocations",
            json.dumps(event, default=str).encode(),
            self.token,
            timeout,
        )
        if status != 200:
            raise FunctionError({"errorType": "ServiceError", "errorMessage": body.decode()})
        payload = json.loads(body) if body else None
        if "X-Amz-Function-Error" in headers:
            raise FunctionError(payload)
        return payload


def _exchange(connection: HTTPConnection, method: str, path: str, body, token: str, timeout: float):
    """One request on a kept-alive connection: (status, headers, body). On an error the
    connection is closed, and the next request opens a new one."""
    if connection.sock is not None and select.select([connection.sock], [], [], 0)[0]:
        connection.close()  # closed by the other end while idle (or out of step): reconnect
    connection.timeout = timeout  # for a (re)connect
    try:
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        headers = {"Content-Type": "application/json", "X-Prism-Token": token}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.headers, answer.read()
    except (OSError, HTTPException):
        connection.close()
        raise
