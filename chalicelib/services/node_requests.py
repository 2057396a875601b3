"""Talking to a node from an API call: fire-and-forget (`tell`) or ask-and-wait (`ask`), where
the answer arrives through the WebSocket handler and is picked up from the replies table."""

import time
import uuid

from chalicelib.node_channel import NodeChannel
from chalicelib.protocol import Message
from chalicelib.store.nodes import NodeRepository, ReplyRepository


def new_request_id() -> str:
    return uuid.uuid4().hex


class NodeRequests:
    def __init__(
        self,
        nodes: NodeRepository,
        replies: ReplyRepository,
        channel: NodeChannel,
        timeout_s: float,
    ):
        self._nodes = nodes
        self._replies = replies
        self._channel = channel
        self._timeout_s = timeout_s

    def tell(self, node_id: str, message: Message) -> bool:
        """True when the message reached the node's connection."""
        node = self._nodes.get(node_id)
        if node is None or node.status != "online" or not node.connection_id:
            return False
        if self._channel.send(node.connection_id, message):
            return True
        self._nodes.mark_offline(node, node.connection_id)
        return False

    def ask(self, node_id: str, message: Message) -> dict | None:
        """The node's reply to `message` (which carries a request_id), or None if it is offline
        or does not answer within the timeout."""
        if not self.tell(node_id, message):
            return None
        deadline = time.monotonic() + self._timeout_s
        pause = 0.02
        while time.monotonic() < deadline:
            reply = self._replies.take(message.request_id)
            if reply is not None:
                return reply
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        return None
