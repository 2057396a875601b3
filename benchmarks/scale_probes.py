"""What benchmarks/scale.py measures beside the simulated minute: DynamoDB calls per node_hello
with and without other owners' waiting deployments, and the provider calls per launch and per
terminate of whole cloud lives through the real state machines."""

import json
import threading
import time
from datetime import UTC, datetime

from world import DEPLOYMENTS, Fleet, deployment_item, gpus_of

from prism.dev.events import websocket_event


def hello_calls(app, accounting) -> dict:
    """node_hello's DynamoDB calls for an owner with 3 waiting deployments, with none and with
    1,000 of other owners' waiting (unplaced) deployments in the table."""
    from chalicelib.store.nodes import NodeRepository
    from chalicelib.store.users import UserRepository

    owner = UserRepository().create_user_with_key("hello-owner")
    others = [UserRepository().create_user_with_key(f"waiting{i}") for i in range(10)]
    fleet = Fleet([owner, *others])
    fleet.by_owner = {o.user_id: [] for o in fleet.owners}
    node, token = NodeRepository().register(owner.user_id, "hello-node")
    headers = {"Authorization": f"Bearer {token}"}
    connect = websocket_event("$connect", "hello-conn=", headers=headers)
    app.handler_map["node_connect"](connect, None)
    _seed_waiting(fleet, [owner.user_id] * 3)
    hello = {"type": "node_hello", "id": "h", "node_id": node.id, "gpus": gpus_of(1)}
    hello |= {"agent_version": "1.0", "running": []}
    fleet.say(app, "hello-conn=", hello)  # the first hello also records the node's GPUs
    seen = {}
    for label, waiting_elsewhere in (("none", 0), ("1,000", 1000)):
        _seed_waiting(fleet, [others[i % 10].user_id for i in range(waiting_elsewhere)])
        accounting.workload(f"hello {label}")
        fleet.say(app, "hello-conn=", hello)
        accounting.workload(None)
        seen[label] = (
            accounting.calls_of(f"hello {label}"),
            accounting.read_units[f"hello {label}"],
        )
    calls = seen["none"][0]
    independent = seen["none"] == seen["1,000"]
    detail = f"{seen['none']} with none, {seen['1,000']} with 1,000 (calls, read units)"
    return {"calls": calls, "independent": independent, "detail": detail}


def _seed_waiting(fleet: Fleet, owners: list[str]) -> None:
    """prism_node deployments no node can take (an H100 nobody has), as a create leaves them."""
    from chalicelib.store.models import DeploymentItem
    from chalicelib.store.shards import UNPLACED_SHARDS, shard_of

    with DeploymentItem.batch_write() as batch:
        for i, owner_id in enumerate(owners):
            item = deployment_item(fleet, owner_id, i, "provisioning", gpu_type="H100")
            item.created_at = datetime.now(UTC)
            item.unplaced = shard_of(item.id, UNPLACED_SHARDS)
            item.status_message = "waiting for a node with an H100"
            batch.save(item)


class ProviderCalls:
    """HTTP requests the control plane sends to the providers, by the step that sent them (a
    thread-local label set around CloudService.launch/poll and CloudTeardown.terminate)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.steps: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def install(self):
        import requests

        from chalicelib.services.cloud import CloudService
        from chalicelib.services.cloud_teardown import CloudTeardown

        send = requests.Session.send
        calls = self

        def counted(session, request, **kwargs):
            step = getattr(calls._local, "step", None)
            if step is not None:
                with calls._lock:
                    calls.counts[step] = calls.counts.get(step, 0) + 1
            return send(session, request, **kwargs)

        requests.Session.send = counted
        for owner, name in ((CloudService, "launch"), (CloudService, "poll")):
            self._label(owner, name)
        self._label(CloudTeardown, "terminate")

    def _label(self, owner, name):
        method, calls = getattr(owner, name), self

        def labelled(service, *args, **kwargs):
            calls._local.step = name
            with calls._lock:
                calls.steps[name] = calls.steps.get(name, 0) + 1
            try:
                return method(service, *args, **kwargs)
            finally:
                calls._local.step = None

        setattr(owner, name, labelled)


def provider_calls(app, per_provider: int = 3) -> dict:
    """Whole lives (create, running, stop, stopped) of cloud deployments on both fakes through
    the real state machines; provider requests per launch and per terminate step."""
    from chalice.test import Client

    from chalicelib.store.users import UserRepository
    from prism.dev.cloud_sandbox import wait_for_executions

    owner = UserRepository().create_user_with_key("cloud-owner")
    calls = ProviderCalls()
    calls.install()
    headers = {"Authorization": f"Bearer {owner.api_key}", "Content-Type": "application/json"}
    ids = []
    with Client(app) as client:
        for target in ("runpod", "lambda"):
            for i in range(per_provider):
                body = {"name": f"c{i}", "image": "acme/llm:1", "target": target}
                body |= {"gpu_type": "A100", "budget_max_usd": 100}
                response = client.http.post(DEPLOYMENTS, headers=headers, body=json.dumps(body))
                ids.append(json.loads(response.body)["id"])
        _wait(client, headers, ids, {"running"})
        for deployment_id in ids:
            client.http.delete(f"{DEPLOYMENTS}/{deployment_id}", headers=headers)
        _wait(client, headers, ids, {"stopped"})
    wait_for_executions()
    launches = len(ids)
    return {
        "launch": calls.counts.get("launch", 0) / launches,
        "terminate": calls.counts.get("terminate", 0) / max(1, calls.steps.get("terminate", 0)),
        "poll": calls.counts.get("poll", 0) / launches,
        "terminate_steps": calls.steps.get("terminate", 0) / launches,
    }


def _wait(client, headers, ids, wanted, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for deployment_id in list(pending):
            response = client.http.get(f"{DEPLOYMENTS}/{deployment_id}", headers=headers)
            status = json.loads(response.body)["status"]
            if status in wanted:
                pending.discard(deployment_id)
            elif status == "failed":
                raise SystemExit(f"{deployment_id} failed: {response.body[:300]}")
        time.sleep(0.5)
    if pending:
        raise SystemExit(f"{len(pending)} cloud deployments never reached {wanted}")
