"""Sends protocol messages to a node's WebSocket connection (API Gateway management API)."""

from botocore.exceptions import ClientError

from chalicelib import aws
from chalicelib.logs import logger
from chalicelib.protocol import Message


class NodeChannel:
    def __init__(self, client_factory=aws.management_api):
        self._client_factory = client_factory

    def send(self, connection_id: str, message: Message) -> bool:
        """False when the connection is gone (the node is offline); other errors raise."""
        try:
            self._client_factory().post_to_connection(
                ConnectionId=connection_id, Data=message.to_json().encode()
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("GoneException", "410"):
                logger.info("node connection gone", extra={"connection_id": connection_id})
                return False
            raise
        return True
