"""The one place boto3 clients are made, so a local endpoint override applies everywhere.

pynamodb builds its own botocore clients; its models take host/region from `settings` too.
"""

import threading
from functools import cache

import boto3

from chalicelib.config import settings

_creating = threading.Lock()  # boto3 sessions are not thread-safe while they make clients


@cache
def session() -> boto3.session.Session:
    return boto3.session.Session(region_name=settings.region)


@cache
def client(service: str):
    with _creating:  # the metering worker's threads may be first to need one
        return session().client(service, endpoint_url=settings.aws_endpoint_url)


@cache
def management_api():
    """API Gateway's management API (post_to_connection) for the node WebSocket API."""
    with _creating:
        return session().client(
            "apigatewaymanagementapi", endpoint_url=settings.websocket_management_url
        )
