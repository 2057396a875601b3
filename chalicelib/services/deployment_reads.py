"""Deployment use cases that read: detail and list (with their costs from the meters), health
(a live probe through the node), the cost ledger, and the logs (fetched from the node)."""

from chalicelib.errors import Conflict, ValidationFailed
from chalicelib.lifecycle import Status
from chalicelib.protocol import HealthCheck, LogsRequest
from chalicelib.responses import (
    CostEntry,
    CostList,
    DeploymentOut,
    HealthOut,
    LastProbeOut,
    LogsOut,
)
from chalicelib.schemas import CLOUD_TARGETS, CostsQuery, ListDeploymentsQuery
from chalicelib.services.node_requests import NodeRequests, new_request_id
from chalicelib.services.pagination import decode_cursor, encode_cursor, seal, unseal
from chalicelib.store.deployment_pages import owned_page
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.meter_models import LedgerItem
from chalicelib.store.metering import MeteringRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.models import DeploymentItem


class DeploymentReads:
    def __init__(
        self,
        deployments: DeploymentRepository,
        meters: MeteringRepository,
        node_requests: NodeRequests,
    ):
        self._deployments = deployments
        self._meters = meters
        self._node_requests = node_requests

    def get(self, owner_id: str, deployment_id: str) -> DeploymentItem:
        return self._deployments.get_owned(owner_id, deployment_id)

    def shown(self, item: DeploymentItem) -> DeploymentOut:
        """A deployment as the API shows it, its cost from its meter: one GetItem for a cloud
        deployment; a prism_node one is free and has none."""
        meter = self._meters.meter(item.id) if item.target in CLOUD_TARGETS else None
        return DeploymentOut.from_item(item, meter)

    def shown_all(self, items: list[DeploymentItem]) -> list[DeploymentOut]:
        """A page of deployments as the API shows them: their meters in one BatchGetItem (a
        page holds at most 100), none when the page has no cloud deployment."""
        meters = self._meters.meters(i.id for i in items if i.target in CLOUD_TARGETS)
        return [DeploymentOut.from_item(item, meters.get(item.id)) for item in items]

    def list(
        self, owner_id: str, query: ListDeploymentsQuery
    ) -> tuple[list[DeploymentItem], str | None]:
        statuses = sorted(set(query.status or []))
        filter_key = ",".join(statuses)
        cursor = decode_cursor(query.next_token, owner_id, filter_key)
        page = owned_page(owner_id, statuses, query.limit, cursor)
        return page.items, encode_cursor(page.cursor, owner_id, filter_key)

    def health(self, owner_id: str, deployment_id: str) -> HealthOut:
        """Asks the node for a fresh probe; the last known state (stale) if it cannot answer."""
        item = self._deployments.get_owned(owner_id, deployment_id)
        if item.node_id and Status(item.status) in (Status.RUNNING, Status.UNHEALTHY):
            reply = self._node_requests.ask(
                item.node_id, HealthCheck(deployment_id=item.id, request_id=new_request_id())
            )
            if reply is not None:
                return HealthOut(
                    deployment_id=item.id,
                    status=item.status,
                    healthy=reply["healthy"],
                    consecutive_failures=reply.get("consecutive_failures", 0),
                    latency_ms=reply.get("latency_ms"),
                    checked_at=utcnow(),
                    stale=False,
                )
        last = LastProbeOut.of(item)
        return HealthOut(deployment_id=item.id, status=item.status, **last.model_dump(), stale=True)

    def costs(self, owner_id: str, deployment_id: str, query: CostsQuery) -> CostList:
        item = self._deployments.get_owned(owner_id, deployment_id)
        binding = f"{owner_id}/{item.id}/costs"  # another deployment's token is a 400
        after = _decode_period(unseal(query.next_token, binding)) if query.next_token else None
        meter = self._meters.meter(item.id) if item.target in CLOUD_TARGETS else None
        billing = item if meter is None else meter  # an item billed before meters: its own
        tail = list(billing.ledger_tail or [])
        entries, last = self._meters.ledger(item.id, tail, query.limit, after)
        return CostList(
            deployment_id=item.id,
            cost_accrued_usd=billing.cost_accrued_usd,
            items=[
                CostEntry(
                    period_start=e.period_start,
                    period_end=e.period_end,
                    amount_usd=e.amount_usd,
                    price_per_hour_usd=e.price_per_hour_usd,
                    cost_after_usd=e.cost_after_usd,
                )
                for e in entries
            ],
            next_token=None if last is None else seal(last, binding),
        )

    def logs(self, owner_id: str, deployment_id: str, tail: int) -> LogsOut:
        item = self._deployments.get_owned(owner_id, deployment_id)
        if not item.served_by_agent_proxy():
            raise Conflict(
                "an image on a cloud instance runs without our node agent, so PRISM cannot read "
                "its logs; the provider's console shows them"
            )
        if not item.node_id:
            raise Conflict("this deployment has not been placed on a node, so it has no logs yet")
        reply = self._node_requests.ask(
            item.node_id,
            LogsRequest(deployment_id=item.id, request_id=new_request_id(), tail=tail),
        )
        if reply is None:
            raise Conflict(
                "the node running this deployment did not answer; its logs stay on the node "
                "until it is back online"
            )
        return LogsOut(deployment_id=item.id, lines=reply["lines"])


def _decode_period(stored: str) -> str:
    """A sealed position, checked to be a stored period_end string; anything else is a 400."""
    try:
        LedgerItem.period_end.deserialize(stored)
    except ValueError:
        raise ValidationFailed(
            "next_token is not valid; pass back the previous page's value",
            fields={"next_token": "malformed"},
        ) from None
    return stored
