"""What the control plane does with each message a node sends. A node may speak only about
deployments placed on it; anything else gets an `error` and changes nothing."""

from chalicelib.errors import PrismError
from chalicelib.lifecycle import COMING_UP, FailureReason, Status, can_transition
from chalicelib.logs import logger
from chalicelib.protocol import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    UNHEALTHY_AFTER,
    DeploymentHealthUpdate,
    DeploymentMetrics,
    DeploymentProgress,
    DeploymentReady,
    DeploymentRestarted,
    DeploymentStopped,
    EndpointKeys,
    Error,
    HealthResult,
    Heartbeat,
    LogsResult,
    Message,
    NodeHello,
    ProtocolError,
    StopDeployment,
    fit_report,
    parse_node_message,
)
from chalicelib.responses import endpoint_auth
from chalicelib.schemas import CLOUD_TARGETS, DeployConfig
from chalicelib.services.ending import Ending
from chalicelib.services.placement import Placement, deploy_message
from chalicelib.store.connections import ConnectionRepository, needs_node
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.endpoints import record_request_metrics
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeploymentItem, LastExitAttribute, RequestMetricsAttribute
from chalicelib.store.node_models import ConnectionItem
from chalicelib.store.nodes import NodeRepository, ReplyRepository

# What a restart report keeps of the model's last output: enough to see why, small enough for
# an item that is copied into every index it is projected into (400 KB per item in all).
LAST_EXIT_MESSAGE_MAX = 2048
FAILURES = {
    "crash": FailureReason.CRASH,
    "pull_error": FailureReason.PULL_ERROR,
    "start_error": FailureReason.START_ERROR,
    "lost": FailureReason.NODE_LOST,
}


class NodeMessageHandler:
    def __init__(
        self,
        deployments: DeploymentRepository,
        nodes: NodeRepository,
        replies: ReplyRepository,
        placement: Placement,
        ending: Ending,
        connections: ConnectionRepository | None = None,
    ):
        self._deployments = deployments
        self._nodes = nodes
        self._replies = replies
        self._placement = placement
        self._ending = ending
        self._connections = connections or ConnectionRepository()

    def handle(self, connection_id: str, raw: str) -> list[Message]:
        """Returns the messages to send back on the same connection."""
        conn = self._connections.live(connection_id)
        if conn is None:  # forgotten (its node revoked) or closed
            return [
                Error(code="unknown_connection", message="connection not registered; reconnect")
            ]
        try:
            message = parse_node_message(raw)
        except ProtocolError as exc:
            return [exc.to_error()]
        handler = getattr(self, f"_on_{message.type}")
        try:
            return handler(conn, message) or []
        except PrismError as exc:  # e.g. a deployment changing too fast: say so, keep the link
            return [Error(code=exc.code, message=exc.message, reply_to=message.id)]

    # --- one method per message type ------------------------------------------------------

    def _on_heartbeat(self, conn: ConnectionItem, message: Heartbeat):
        # The connection item only; the node item just when it was marked offline meanwhile.
        before = self._connections.heartbeat(conn.connection_id)
        if before is not None and needs_node(before):
            back = self._nodes.touch(conn.node_id, conn.connection_id)
            if back and before.marked_offline is not None:
                self._connections.clear_offline_mark(before)

    def _on_error(self, conn: ConnectionItem, message: Error):
        logger.warning(
            "node reported an error", extra={"node_id": conn.node_id, "code": message.code}
        )

    def _on_node_hello(self, conn: ConnectionItem, message: NodeHello):
        if message.node_id != conn.node_id:
            return [
                Error(
                    code="wrong_node",
                    message="node_id does not match this token",
                    reply_to=message.id,
                )
            ]
        if message.protocol_version < MIN_PROTOCOL_VERSION:  # it would misread what we send
            return [
                Error(
                    code="protocol_too_old",
                    message=f"this control plane speaks protocol {PROTOCOL_VERSION} and needs "
                    f"at least {MIN_PROTOCOL_VERSION}; the agent speaks "
                    f"{message.protocol_version}: upgrade it (pip install -U, or a newer "
                    "agent image)",
                    reply_to=message.id,
                )
            ]
        node = self._nodes.get(conn.node_id)
        if node is None:  # retired (its cloud instance is over) while still connected
            return [Error(code="unknown_node", message="this node no longer exists")]
        self._nodes.record_hello(
            node, [g.model_dump() for g in message.gpus], message.agent_version
        )
        replies = self._reconcile(conn, message)
        if node.dedicated_to:  # the agent on a cloud instance: its one deployment
            dedicated = self._deployments.get(node.dedicated_to)
            if dedicated is not None:
                self._placement.place(dedicated)
        else:
            self._placement.place_waiting(conn.owner_id)
        return replies

    def _on_deployment_progress(self, conn, message: DeploymentProgress):
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if late := self._late(item):
            return late
        target = Status(message.status)

        def decide(current):
            status = Status(current.status)
            return target if status in COMING_UP and can_transition(status, target) else None

        changes = {}
        if message.status == "pulling":
            changes |= {"bytes_done": message.bytes_done, "bytes_total": message.bytes_total}
        if message.weights_revision:
            changes["weights_revision"] = message.weights_revision
        latest, changed = self._deployments.transition_latest(
            item.id, decide, first=item, status_message=None, **changes
        )
        if not changed and Status(latest.status) == target:
            self._deployments.record(latest, **changes)  # more bytes, same status

    def _on_deployment_ready(self, conn, message: DeploymentReady):
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if late := self._late(item):
            return late
        changes = {
            "healthy": True,
            "health_consecutive_failures": 0,
            "health_checked_at": utcnow(),
            "status_message": None,
        }
        if message.framework:
            changes["framework"] = message.framework
        if message.engine:
            changes["engine"], changes["engine_reason"] = message.engine, message.engine_reason
        cloud = item.target in CLOUD_TARGETS
        if not cloud:
            changes["endpoint_url"] = message.endpoint_url
        # A cloud instance's public endpoint is the provider's, recorded by the provision
        # workflow (never the agent's own address); until it is known the deployment stays
        # starting, and the workflow makes it running.

        def decide(current):
            status = Status(current.status)
            target = Status.STARTING if cloud and not current.endpoint_url else Status.RUNNING
            moves = status in (*COMING_UP, Status.UNHEALTHY) and can_transition(status, target)
            return target if moves else None

        latest, changed = self._deployments.transition_latest(
            item.id, decide, first=item, **changes
        )
        if not changed and Status(latest.status) in COMING_UP:
            self._deployments.record(latest, **changes)  # ready, still waiting for its endpoint

    def _on_deployment_health_update(self, conn, message: DeploymentHealthUpdate):
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if late := self._late(item):
            return late
        health = {
            "healthy": message.healthy,
            "health_consecutive_failures": message.consecutive_failures,
            "health_latency_ms": message.latency_ms,
            "health_checked_at": utcnow(),
        }

        def decide(current):
            status = Status(current.status)
            if (
                status is Status.RUNNING
                and not message.healthy
                and (message.consecutive_failures >= UNHEALTHY_AFTER)
            ):
                return Status.UNHEALTHY
            if status is Status.UNHEALTHY and message.healthy:
                return Status.RUNNING
            return None

        item, changed = self._deployments.transition_latest(item.id, decide, first=item, **health)
        if not changed:
            self._deployments.record(item, **health)

    def _on_deployment_stopped(self, conn, message: DeploymentStopped):
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if Status(item.status).is_terminal():
            return None  # a duplicate or late report: ignored
        exit_note = "" if message.exit_code is None else f" (exit code {message.exit_code})"
        if item.status == Status.STOPPING or message.reason == "stopped":
            # Stopped on purpose: by our request, or by the node's owner (`node down
            # --stop-all`), which passes through stopping like any stop.
            self._ending.stopped(item, f"stopped{exit_note}")
            return None
        reason = FAILURES.get(message.reason, FailureReason.CRASH)
        self._ending.fail(item, reason, (message.message or message.reason) + exit_note)
        return None

    def _on_deployment_restarted(self, conn, message: DeploymentRestarted):
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if late := self._late(item):
            return late
        changes = {
            "restarts": message.restarts,
            "last_exit": _last_exit(message),
            "status_message": _restart_note(item, message),
            "healthy": False,  # not answering until its next deployment_ready
        }

        def is_news(current) -> bool:  # not a duplicate, nor overtaken by a later restart
            return message.restarts > int(current.restarts or 0)

        def decide(current):
            restartable = can_transition(Status(current.status), Status.STARTING)
            return Status.STARTING if is_news(current) and restartable else None

        latest, changed = self._deployments.transition_latest(
            item.id, decide, first=item, **changes
        )
        if not changed and latest.status == Status.STARTING and is_news(latest):
            self._deployments.record(latest, **changes)  # restarted before it was ever ready

    def _on_deployment_metrics(self, conn, message: DeploymentMetrics):
        """Kept when newer than what is stored (counts only grow); a late report, or one about
        a deployment that is over, changes nothing and needs no answer."""
        item = self._owned(conn, message.deployment_id)
        if item is None:
            return [self._not_yours(message)]
        if Status(item.status).is_terminal():
            return None
        record_request_metrics(item, _request_metrics(message))
        return None

    def _on_health_result(self, conn, message: HealthResult):
        if self._owned(conn, message.deployment_id) is None:
            return [self._not_yours(message)]
        self._replies.put(message.request_id, message.to_json())

    def _on_logs_result(self, conn, message: LogsResult):
        if self._owned(conn, message.deployment_id) is None:
            return [self._not_yours(message)]
        self._replies.put(message.request_id, message.to_json())

    # --- helpers ------------------------------------------------------------------------

    def _late(self, item: DeploymentItem) -> list[Message] | None:
        """A report about a deployment the server is stopping or has finished: whatever the
        node runs for it must stop (a stop can overtake its deploy_model)."""
        if item.status == Status.STOPPING or Status(item.status).is_terminal():
            return [StopDeployment(deployment_id=item.id)]
        return None

    def _owned(self, conn: ConnectionItem, deployment_id: str) -> DeploymentItem | None:
        item = self._deployments.get(deployment_id)
        return item if item is not None and item.node_id == conn.node_id else None

    @staticmethod
    def _not_yours(message) -> Error:
        return Error(
            code="not_your_deployment",
            message=f"deployment {message.deployment_id} is not placed on this node",
            reply_to=message.id,
        )

    def _reconcile(self, conn: ConnectionItem, hello: NodeHello) -> list[Message]:
        """Both ways: the node stops what the server considers over; the server ends what the
        node no longer has; what was sent but never arrived is sent again, and each
        deployment it runs gets its current endpoint keys (a rotation while it was away)."""
        replies: list[Message] = []
        reported = {r.deployment_id: r for r in hello.running}
        for deployment_id, running in reported.items():
            item = self._owned(conn, deployment_id)
            if item is None or Status(item.status).is_terminal() or item.status == "stopping":
                replies.append(StopDeployment(deployment_id=deployment_id))
                continue
            replies += _current_endpoint_keys(item)  # a rotation it missed while away
            if running.status in ("running", "unhealthy") and running.endpoint_url:
                self._on_deployment_ready(conn, _ready(running))
            elif item.status == Status.PROVISIONING:  # on its way up there: that is its answer
                self._on_deployment_progress(conn, _progress(running))
        for item in self._deployments.on_node(conn.node_id):
            if item.id in reported:
                continue
            status = Status(item.status)
            if status is Status.PROVISIONING:
                replies.append(deploy_message(item))
            elif status is Status.STOPPING:
                self._ending.stopped(item, "stopped")
            else:
                self._ending.fail(
                    item,
                    FailureReason.NODE_LOST,
                    "the node reconnected without this deployment running",
                )
        return replies


def _current_endpoint_keys(item: DeploymentItem) -> list[Message]:
    """The whole set of keys the node's proxy must accept for `item` (none to send when its
    endpoint is public or not our proxy's)."""
    if endpoint_auth(item) != "key":
        return []
    hashes = list(item.endpoint_key_hashes or [])
    return [EndpointKeys(deployment_id=item.id, key_hashes=hashes)]


def _request_metrics(message: DeploymentMetrics) -> RequestMetricsAttribute:
    return RequestMetricsAttribute(
        requests_total=message.requests_total,
        counting_since=message.counting_since,
        status_2xx=message.status_2xx,
        status_3xx=message.status_3xx,
        status_4xx=message.status_4xx,
        status_5xx=message.status_5xx,
        unauthorized=message.unauthorized,
        in_flight=message.in_flight,
        window_s=message.window_s,
        latency_p50_ms=message.latency_p50_ms,
        latency_p95_ms=message.latency_p95_ms,
        latency_p99_ms=message.latency_p99_ms,
        reported_at=utcnow(),
    )


def _last_exit(message: DeploymentRestarted) -> LastExitAttribute:
    output = None if message.message is None else fit_report(message.message, LAST_EXIT_MESSAGE_MAX)
    return LastExitAttribute(
        cause=message.cause, exit_code=message.exit_code, at=utcnow(), message=output
    )


def _restart_note(item: DeploymentItem, message: DeploymentRestarted) -> str:
    """e.g. "restarted (2 of 3) after a crash, exit code 1"."""
    config = DeployConfig.of(item.deploy_config)
    limited = config.restart == "on-failure"  # `always` has no limit
    count = f"{message.restarts} of {config.max_restarts}" if limited else str(message.restarts)
    if message.cause == "unhealthy":
        why = f"being unhealthy for {config.unhealthy_timeout_s} s"
    else:
        why = "a crash" + ("" if message.exit_code is None else f", exit code {message.exit_code}")
    return f"restarted ({count}) after {why}"


def _progress(running) -> DeploymentProgress:
    status = "pulling" if running.status == "pulling" else "starting"
    return DeploymentProgress(deployment_id=running.deployment_id, status=status)


def _ready(running) -> DeploymentReady:
    return DeploymentReady(deployment_id=running.deployment_id, endpoint_url=running.endpoint_url)
