"""The health of running cloud deployments whose image serves the endpoint itself (an agent on
the instance reports its own): probed once a minute, fanned out over SQS as metering is.

The tick (check_cloud_health, every minute) pages through the sparse `cloud` index and sends
the ids to probe, HEALTH_CHECKS_PER_MESSAGE per message; workers (health_worker, one message
per invocation, as many invocations as messages) probe theirs concurrently. Each probe takes
at most PROBE_TIMEOUT_S, plus a provider lookup when it fails, so a round's length is one
message's, however many deployments run: 1,000 running is 100 messages in parallel.
3 failures in a row make a deployment unhealthy, a success running again; an instance the
provider ended fails it.
"""

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from chalicelib.batches import chunked
from chalicelib.health_probe import probe
from chalicelib.lifecycle import Status, towards
from chalicelib.logs import logger
from chalicelib.protocol import UNHEALTHY_AFTER
from chalicelib.providers.base import InstanceState, Provider
from chalicelib.queue import MAX_BATCH, WorkQueue
from chalicelib.services.cloud_instances import PROBE_TIMEOUT_S, runs_agent
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.models import DeploymentItem

HEALTH_CHECKS_PER_MESSAGE = 10  # deployments one worker probes at once


class CloudHealth:
    def __init__(
        self,
        deployments: DeploymentRepository,
        providers: Callable[[str], Provider],
        workflows,
        clock: Callable[[], datetime],
        queue: WorkQueue | None,
    ):
        self._deployments = deployments
        self._providers = providers
        self._workflows = workflows
        self._clock = clock
        self._queue = queue

    def enqueue(self) -> int:
        """The tick: the ids to probe go out as the index pages in. Returns how many."""
        watched = (item.id for item in self._deployments.cloud_active() if _watched(item))
        count = 0
        for ids in chunked(watched, HEALTH_CHECKS_PER_MESSAGE * MAX_BATCH):
            parts = chunked(ids, HEALTH_CHECKS_PER_MESSAGE)
            self._queue.send_all([{"deployment_ids": part} for part in parts])
            count += len(ids)
        logger.info("cloud health tick", extra={"deployments": count})
        return count

    def work_batch(self, messages: Iterable[tuple[str, str]]) -> dict:
        """(message id, body) pairs -> the partial batch response: a message whose probes
        failed (not: found unhealthy) comes back, the others are done."""
        failures = []
        for message_id, body in messages:
            try:
                self.check(json.loads(body)["deployment_ids"])
            except Exception:
                logger.exception("health message failed", extra={"message_id": message_id})
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}

    def check(self, deployment_ids: list[str]) -> int:
        """Probe these (read again: a deployment may have moved on since the tick), all at
        once. Returns how many were probed."""
        items = [i for i in self._deployments.get_many(deployment_ids).values() if _watched(i)]
        if not items:
            return 0
        with ThreadPoolExecutor(len(items)) as pool:
            errors = [e for e in pool.map(self._check_one_isolated, items) if e is not None]
        if errors:
            raise errors[0]  # the message is retried; the others' probes were recorded
        return len(items)

    def check_all(self) -> int:
        """Every watched deployment, here and now (no queue): tests and one-off use."""
        ids = [item.id for item in self._deployments.cloud_active() if _watched(item)]
        return sum(self.check(part) for part in chunked(ids, HEALTH_CHECKS_PER_MESSAGE))

    def _check_one_isolated(self, item: DeploymentItem) -> Exception | None:
        try:
            self._check_one(item)
        except Exception as exc:  # one deployment's failure never stops the others' probes
            logger.exception("health check failed", extra={"deployment_id": item.id})
            return exc
        return None

    def _check_one(self, item: DeploymentItem) -> None:
        result = probe(item.endpoint_url + item.deploy_config.health_path, PROBE_TIMEOUT_S)
        healthy = result.healthy
        if not healthy and self._instance_gone(item):
            self._instance_died(item)
            return
        failures = 0 if healthy else int(item.health_consecutive_failures or 0) + 1
        changes = {
            "healthy": healthy,
            "health_consecutive_failures": failures,
            "health_latency_ms": result.latency_ms,
            "health_checked_at": self._clock(),
        }
        if healthy and item.status == Status.UNHEALTHY:
            self._deployments.transition_latest(item.id, towards(Status.RUNNING), **changes)
        elif failures >= UNHEALTHY_AFTER and item.status == Status.RUNNING:
            self._deployments.transition_latest(item.id, towards(Status.UNHEALTHY), **changes)
        else:
            self._deployments.record(item, **changes)

    def _instance_gone(self, item: DeploymentItem) -> bool:
        try:
            instance = self._providers(item.target).get(
                item.provider_instance_id, port=int(item.deploy_config.port)
            )
        except Exception:  # cannot tell now: the next check asks again
            return False
        return instance is None or instance.state in (
            InstanceState.TERMINATED,
            InstanceState.FAILED,
        )

    def _instance_died(self, item: DeploymentItem) -> None:
        """The provider ended a running instance: fail the deployment (its teardown stops the
        billing)."""
        item, _ = self._deployments.transition_latest(
            item.id,
            towards(Status.STOPPING),
            failure_reason="crash",
            failure_message=f"the {item.target} instance {item.provider_instance_id} stopped",
        )
        if item.status == Status.STOPPING:
            self._workflows.start_teardown(item.id)


def _watched(item: DeploymentItem) -> bool:
    return (
        item.status in (Status.RUNNING, Status.UNHEALTHY)
        and bool(item.endpoint_url)
        and not runs_agent(item)  # the agent on the instance reports its health itself
    )
