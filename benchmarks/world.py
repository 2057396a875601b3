"""The simulated fleet of benchmarks/scale.py: seeding it (not counted) and driving its minute of
traffic through the app's real handlers, as API Gateway, EventBridge and SQS would call them."""

import contextlib
import io
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from unittest import mock

import seeding  # benchmarks/seeding.py, beside this script

from prism.dev.events import scheduled_event, sqs_record, websocket_event

OWNERS = 100
BIG_TENANT_SHARE = 0.10  # of the deployments and the nodes
DEPLOYMENTS = "/api/v1/compute/deployments"
HANG_EVERY = 50  # 1 cloud endpoint in 50 hangs: its message waits for the probe timeout


def sqs_records(queue: str) -> list[dict]:
    """Every message now on `queue`, as SQS event records (taken: hidden for an hour)."""
    from chalicelib import aws

    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    records = []
    while got := sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=3600
    ).get("Messages", []):
        records += [sqs_record(m, arn["QueueArn"]) for m in got]
    return records


@dataclass
class Fleet:
    owners: list  # NewKey: user_id, api_key
    connections: list[tuple[str, str]] = field(default_factory=list)  # (connection, node)
    pulling: list[tuple[str, str]] = field(default_factory=list)  # (deployment, connection)
    running: list[tuple[str, str]] = field(default_factory=list)
    by_owner: dict[str, list[str]] = field(default_factory=dict)  # owner -> deployment ids
    billable: int = 0
    cloud: int = 0
    total: int = 0
    minute_start: datetime | None = None  # the simulated minute, on the connections' clock

    def summary(self) -> str:
        return (
            f"{self.total:,} deployments ({self.billable:,} billable, {self.cloud:,} cloud "
            f"running, {len(self.pulling):,} pulling, {len(self.running):,} running on nodes), "
            f"{len(self.connections):,} nodes, {len(self.owners)} owners"
        )

    def owner_for(self, i: int, count: int):
        """Owner of the i-th of `count` things: the big tenant holds BIG_TENANT_SHARE."""
        if i < count * BIG_TENANT_SHARE:
            return self.owners[0]
        return self.owners[1 + i % (len(self.owners) - 1)]

    # --- the minute's traffic ---------------------------------------------------------------
    def say(self, app, connection_id: str, message: dict) -> None:
        event = websocket_event("$default", connection_id, body=message)
        app.handler_map["node_message"](event, None)

    def heartbeats(self, app, rounds: int) -> int:
        """Every node's heartbeats of one minute, at 0, 15, 30 and 45 s into it on the
        connections' clock (the real minute's would cross a minute's end at most once; the
        simulation's, a few seconds of real time, might cross one more)."""
        for n in range(rounds):
            at = self.minute_start + timedelta(seconds=60 * n / rounds)
            with mock.patch("chalicelib.store.connections.utcnow", lambda at=at: at):
                for connection_id, _ in self.connections:
                    self.say(app, connection_id, {"type": "heartbeat", "id": "h"})
        return rounds * len(self.connections)

    def progress(self, app, rounds: int) -> int:
        total = 10 * 1024**3
        for step in range(rounds):
            for deployment_id, connection_id in self.pulling:
                done = total * (step + 1) // (rounds + 1)
                message = {"type": "deployment_progress", "id": "p", "status": "pulling"}
                message |= {"deployment_id": deployment_id, "bytes_done": done}
                self.say(app, connection_id, message | {"bytes_total": total})
        return rounds * len(self.pulling)

    def metrics(self, app, rounds: int) -> int:
        since = time.time() - 3600
        for step in range(rounds):
            for deployment_id, connection_id in self.running:
                count = 1000 * (step + 1)
                message = {"type": "deployment_metrics", "id": "m", "deployment_id": deployment_id}
                message |= {"requests_total": count, "status_2xx": count, "counting_since": since}
                message |= {"window_s": 15, "latency_p50_ms": 20.5, "latency_p95_ms": 80.2}
                self.say(app, connection_id, message | {"latency_p99_ms": 150.9})
        return rounds * len(self.running)

    def meter(self, app) -> int:
        import app as handlers
        from chalicelib.config import settings

        handlers.meter_tick(scheduled_event("scale"), None)
        records = sqs_records(settings.metering_queue)
        charged = sum(len(json.loads(r["body"])["entries"]) for r in records)
        # The worker's EMF metric lines (CloudWatch's, on Lambda) are not this benchmark's output.
        with contextlib.redirect_stdout(io.StringIO()):
            for start in range(0, len(records), 10):  # the trigger's batch
                handlers.meter_worker({"Records": records[start : start + 10]}, None)
        return charged

    def sweep(self, app) -> int:
        import app as handlers

        handlers.sweep_nodes(scheduled_event("scale"), None)
        return 1

    def api(self, app, per_minute: dict) -> int:
        from chalice.test import Client

        rng = random.Random(17)
        calls = 0
        with Client(app) as client:
            for op, count in per_minute.items():
                for i in range(count):
                    owner = self.owner_for(i, count)
                    headers = {"Authorization": f"Bearer {owner.api_key}"}
                    if op == "create":
                        body = json.dumps({"name": f"s{i}", "image": "acme/model:1", "gpu": False})
                        headers["Content-Type"] = "application/json"
                        response = client.http.post(DEPLOYMENTS, headers=headers, body=body)
                    elif op == "list":
                        response = client.http.get(f"{DEPLOYMENTS}?limit=50", headers=headers)
                    else:
                        mine = self.by_owner[owner.user_id]
                        path = f"{DEPLOYMENTS}/{rng.choice(mine)}"
                        response = client.http.get(path, headers=headers)
                    if response.status_code >= 300:
                        raise SystemExit(f"{op}: {response.status_code} {response.body[:300]}")
                    calls += 1
        return calls

    def health_round(self, app) -> dict:
        """The tick, then every message by its own invocation (threads stand for Lambda's
        concurrency); the round at the target: the tick's time grown with the fleet, plus the
        slowest message (they run in parallel)."""
        import app as handlers
        from chalicelib.config import settings

        began = time.perf_counter()
        handlers.check_cloud_health(scheduled_event("scale"), None)
        tick_s = time.perf_counter() - began
        records = sqs_records(settings.health_queue)

        def invoke(record) -> float:
            started = time.perf_counter()
            result = handlers.health_worker({"Records": [record]}, None)
            if result.get("batchItemFailures"):
                raise SystemExit(f"health worker failed a message: {result}")
            return time.perf_counter() - started

        with ThreadPoolExecutor(32) as pool:
            durations = list(pool.map(invoke, records))
        factor = max(1, 1000 // max(1, self.cloud))
        return {
            "round_s": tick_s * factor + max(durations),
            "tick_s": tick_s,
            "messages": len(records),
            "slowest_s": max(durations),
            "median_s": sorted(durations)[len(durations) // 2],
            "probes": self.cloud,
        }


def seed(app, sizes: dict, runpod, endpoints: str) -> Fleet:
    from chalicelib.store.users import UserRepository

    users = UserRepository()
    fleet = Fleet([users.create_user_with_key(f"owner{i}") for i in range(OWNERS)])
    fleet.by_owner = {o.user_id: [] for o in fleet.owners}
    _seed_nodes(app, fleet, sizes["nodes"])
    _seed_node_deployments(fleet, sizes["running_on_nodes"], sizes["pulls"])
    fleet.billable = _seed_meter_tails(seeding.billing_deployments(sizes["billable"], 0))
    fleet.cloud = _seed_cloud(fleet, runpod, endpoints, sizes["cloud"])
    done = fleet.billable + fleet.cloud + len(fleet.running) + len(fleet.pulling)
    _seed_ended(fleet, max(0, sizes["deployments"] - done))
    fleet.total = max(done, sizes["deployments"])
    return fleet


def gpus_of(i: int) -> list[dict]:
    """A node's GPUs: 8 on one node in four, else 1 or 2 (the node item's size varies)."""
    count = 8 if i % 4 == 0 else 1 + i % 2
    return [
        {
            "index": g,
            "name": "NVIDIA A100-SXM4-80GB",
            "uuid": f"GPU-{i:08x}-{g:04x}-0000-0000-000000000000",
            "memory_total_mb": 81920,
        }
        for g in range(count)
    ]


def _seed_nodes(app, fleet: Fleet, count: int) -> None:
    from chalicelib.store.nodes import NodeRepository

    nodes = NodeRepository()

    def one(i: int) -> tuple[str, str]:
        node, token = nodes.register(fleet.owner_for(i, count).user_id, f"node{i}")
        connection_id = f"conn{i:06d}="
        headers = {"Authorization": f"Bearer {token}"}
        connect = websocket_event("$connect", connection_id, headers=headers)
        app.handler_map["node_connect"](connect, None)
        hello = {"type": "node_hello", "id": "h", "node_id": node.id, "gpus": gpus_of(i)}
        fleet.say(app, connection_id, hello | {"agent_version": "1.0", "running": []})
        return connection_id, node.id

    with ThreadPoolExecutor(4) as pool:
        fleet.connections = list(pool.map(one, range(count)))
    _heard_the_minute_before(fleet)


def _heard_the_minute_before(fleet: Fleet) -> None:
    """Steady state: each connection's last heartbeat was 15 s before the simulated minute (the
    next whole minute), so its first heartbeat of that minute moves its liveness index entry,
    as one heartbeat in four does."""
    from chalicelib.store.connections import minute_of
    from chalicelib.store.model_base import utcnow
    from chalicelib.store.node_models import ConnectionItem

    now = utcnow()
    fleet.minute_start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    then = fleet.minute_start - timedelta(seconds=15)
    for connection_id, _ in fleet.connections:
        ConnectionItem(connection_id=connection_id).update(
            actions=[
                ConnectionItem.last_seen_at.set(then),
                ConnectionItem.seen_minute.set(minute_of(then)),
            ]
        )


def _seed_meter_tails(billable_ids: list[str]) -> int:
    """Steady state: a meter's tail holds 1 to LEDGER_PAGE charges, evenly spread, so one meter
    in LEDGER_PAGE moves its page to the ledger table this minute."""
    from decimal import Decimal

    from chalicelib.store.meter_models import MeterItem
    from chalicelib.store.metering import LEDGER_PAGE
    from chalicelib.store.model_base import LedgerEntry

    ended = datetime.now(UTC) - timedelta(minutes=1)
    with MeterItem.batch_write() as batch:
        for i, meter in enumerate(MeterItem.batch_get(billable_ids)):
            charges = 1 + i % LEDGER_PAGE
            meter.ledger_tail = [
                LedgerEntry(
                    ended - timedelta(minutes=n + 1),
                    ended - timedelta(minutes=n),
                    Decimal("0.06"),
                    meter.price_per_hour_usd,
                    Decimal("0.06") * (charges - n),
                )
                for n in reversed(range(charges))
            ]
            meter.cost_accrued_usd = Decimal("0.06") * charges
            batch.save(meter)
    return len(billable_ids)


def deployment_item(fleet: Fleet, owner_id: str, i: int, status: str, **fields):
    from chalicelib.services.deployments import new_deployment_id
    from chalicelib.store.deployments import owner_status_key
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem

    item = DeploymentItem(
        id=fields.pop("id", None) or new_deployment_id(),
        owner_id=owner_id,
        name=f"model-{i}",
        target=fields.pop("target", "prism_node"),
        status=status,
        owner_status=owner_status_key(owner_id, status),
        image="ghcr.io/acme/model-server:1.4.2",
        deploy_config=DeployConfigAttribute(port=8000, health_path="/health", auth="key"),
        endpoint_key_hashes=["0" * 64],
        created_at=datetime.now(UTC) - timedelta(hours=2),
        **fields,
    )
    fleet.by_owner[owner_id].append(item.id)
    return item


def _seed_node_deployments(fleet: Fleet, running: int, pulling: int) -> None:
    from chalicelib.store.models import DeploymentItem

    nodes = fleet.connections
    stride = max(1, len(nodes) // max(1, pulling))  # pulls spread over the nodes, and owners
    with DeploymentItem.batch_write() as batch:
        for i in range(running + pulling):
            status = "running" if i < running else "pulling"
            on = i if status == "running" else (i - running) * stride
            connection_id, node_id = nodes[on % len(nodes)]
            owner = fleet.owner_for(on % len(nodes), len(nodes)).user_id  # the node's owner
            extra = {"node_id": node_id, "gpu": False}
            if status == "running":
                extra |= {"endpoint_url": f"http://10.0.{i // 250}.{i % 250}:8000", "healthy": True}
            else:
                extra |= {"bytes_total": 10 * 1024**3, "bytes_done": 0}
            item = deployment_item(fleet, owner, i, status, **extra)
            batch.save(item)
            (fleet.running if status == "running" else fleet.pulling).append(
                (item.id, connection_id)
            )


def _seed_cloud(fleet: Fleet, runpod, endpoints: str, count: int) -> int:
    """Running cloud image deployments on pods of the fake RunPod (launched through the real
    provider code), probed by the health worker at `endpoints`."""
    from chalicelib.store.models import DeploymentItem
    from chalicelib.store.shards import CLOUD_SHARDS, shard_of

    instances = seeding.launch_pods(runpod, count, "scale")
    with DeploymentItem.batch_write() as batch:
        for i, (deployment_id, instance) in enumerate(instances):
            owner = fleet.owner_for(i, count).user_id
            hang = "hang/" if i % HANG_EVERY == HANG_EVERY - 1 else ""
            item = deployment_item(
                fleet,
                owner,
                i,
                "running",
                id=deployment_id,
                target="runpod",
                gpu_type="A100",
                price_per_hour_usd=instance.price_per_hour,
                provider_instance_id=instance.id,
                launched_at=datetime.now(UTC) - timedelta(hours=1),
                healthy=True,
            )
            item.endpoint_url = f"{endpoints}/{hang}{item.id}"
            item.cloud = shard_of(item.id, CLOUD_SHARDS)
            item.endpoint_key_hashes = None  # an image on a cloud instance is reached directly
            batch.save(item)
    return count


def _seed_ended(fleet: Fleet, count: int) -> None:
    from chalicelib.store.models import DeploymentItem

    with DeploymentItem.batch_write() as batch:
        for i in range(count):
            owner = fleet.owner_for(i, count).user_id
            status = "stopped" if i % 3 else "failed"
            batch.save(deployment_item(fleet, owner, i, status))
