"""Sends protocol messages to a node's WebSocket connection (API Gateway management API)."""

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import aws
from chalicelib.logs import logger
from chalicelib.protocol import Message


class NodeChannel:
    def __init__(self, client_factory=aws.management_api):
        self._client_factory = client_factory

    def send(self, connection_id: str, message: Message) -> bool:
        """True when delivered. A gone connection (410) is the normal way to learn a node went
        offline; any other failure is logged and also reported as not delivered, so the caller
        falls back (wait, retry on reconnect) instead of failing the user's request."""
        try:
            self._client_factory().post_to_connection(
                ConnectionId=connection_id, Data=message.to_json().encode()
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("GoneException", "410"):
                logger.exception("could not reach a node connection")
            return False
        except BotoCoreError:
            logger.exception("could not reach the WebSocket management API")
            return False
        return True
