"""A node speaking the protocol through the real WebSocket handlers, with API Gateway-shaped
events, as the gateway would deliver them."""

from datetime import timedelta

from chalicelib.store.connections import minute_of
from chalicelib.store.model_base import utcnow
from chalicelib.store.node_models import ConnectionItem, NodeItem
from prism.dev.events import websocket_event


class NodeSim:
    """Speaks the protocol through the real WebSocket handlers, as the gateway would."""

    def __init__(self, app, token, node_id, connection_id="conn-1"):
        self.app, self.token, self.node_id, self.connection_id = app, token, node_id, connection_id

    def connect(self, token=None):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.app.handler_map["node_connect"](
            websocket_event("$connect", self.connection_id, headers=headers), None
        )

    def say(self, **message):
        message.setdefault("id", "m")
        self.app.handler_map["node_message"](
            websocket_event("$default", self.connection_id, body=message), None
        )

    def hello(self, running=()):
        self.say(type="node_hello", node_id=self.node_id, running=list(running))

    def disconnect(self):
        event = websocket_event("$disconnect", self.connection_id)
        self.app.handler_map["node_disconnect"](event, None)


def age_node(node_id: str, seconds: float) -> None:
    """As if the node had not been heard from for `seconds`: its item and every connection of
    it (a heartbeat writes only the connection) last seen then."""
    then = utcnow() - timedelta(seconds=seconds)
    NodeItem(id=node_id).update(actions=[NodeItem.last_seen_at.set(then)])
    for connection in ConnectionItem.scan(ConnectionItem.node_id == node_id):
        connection.update(
            actions=[
                ConnectionItem.last_seen_at.set(then),
                ConnectionItem.seen_minute.set(minute_of(then)),
            ]
        )
