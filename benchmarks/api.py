"""API latency against the bare DynamoDB calls it needs, on the same moto server, in one run.

10,000 deployments across 20 owners are batch-written to the local platform's moto server. For
create, detail and a 50-item status-filtered list page we time the HTTP API (the local API
Gateway REST API, invoking the APIHandler function in its container) and, interleaved with it,
the bare boto3 calls that operation needs, exactly the requests the API sends:
create: API-key GetItem + the owner's nodes (Query on the nodes' by-owner index) + PutItem (a
deployment no node can take is written once, with why it waits: the bare put writes the very
item the API's first create wrote, under a new id); detail: API-key GetItem + GetItem; list:
API-key GetItem + Query on by-owner-status (a page of prism_node deployments has no meters).
moto is slow (a GSI Query walks the whole index), so the goal is a ratio: API p50 <= 1.3x bare.

    .venv/bin/python benchmarks/api.py [--deployments 10000] [--owners 20] [--rounds 200] \
        [--list-rounds 60]
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from http.client import HTTPConnection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prism.dev.awsenv import local_aws_env  # noqa: E402
from prism.dev.local_state import LocalState  # noqa: E402
from prism.dev.platform import STAGE, LocalPlatform  # noqa: E402
from prism.dev.processes import free_port  # noqa: E402

BARE_CALLS = {
    "create": "GetItem api-keys; Query nodes/by-owner; PutItem deployments (conditional: no such"
    " id or version; the item the API's create writes)",
    "detail": "GetItem api-keys; GetItem deployments",
    "list": "GetItem api-keys; Query deployments/by-owner-status (Limit 51)",
}
# ...each as the API sends it: consistent reads, ReturnConsumedCapacity TOTAL (pynamodb asks
# for it on every call), attribute names by placeholder.
STATUSES = [
    "provisioning",
    "pulling",
    "starting",
    "running",
    "unhealthy",
    "stopping",
    "stopped",
    "failed",
]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def handler_durations(log: Path, skip: int) -> list[float]:
    """duration_ms of each request the API function logged after its first `skip` lines."""
    lines = log.read_text().splitlines()[skip:]
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    return [row["duration_ms"] for row in rows if row.get("message") == "request"]


def load(owners: list[str], total: int) -> list[tuple[str, str]]:
    """Batch-write `total` deployments round-robin over owners; returns (owner, id) pairs."""
    import seeding  # beside this script

    from chalicelib.store.models import DeploymentItem

    made = []
    with DeploymentItem.batch_write() as batch:
        for i in range(total):
            owner, status = owners[i % len(owners)], STATUSES[(i // len(owners)) % 8]
            item = seeding.image_deployment(owner, f"m{i}", status)
            batch.save(item)
            made.append((owner, item.id))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200, help="of create and of detail")
    parser.add_argument("--list-rounds", type=int, default=60, help="a list takes ~0.2 s")
    args = parser.parse_args()

    scan_log = Path(tempfile.mkdtemp()) / "scans.log"
    scan_log.touch()
    os.environ["PRISM_MOTO_SCAN_LOG"] = str(scan_log)
    platform = LocalPlatform(
        api_port=free_port(),
        moto_port=free_port(),
        ws_port=free_port(),
        management_port=free_port(),
        state=LocalState(scan_log.parent / "state"),
    )
    platform.start()
    try:
        os.environ.update(local_aws_env(platform.aws_url, STAGE, *platform.operator_keys()))
        run(platform, args, scan_log)
    finally:
        platform.stop()


class Calls:
    """One operation through the HTTP API, and as the bare DynamoDB calls it issues, on the
    same moto server."""

    BASE = "/api/v1/compute/deployments"
    CREATE_BODY = json.dumps({"name": "bench", "image": "nginx:1.27"})

    def __init__(self, platform: LocalPlatform, rng: random.Random):
        from chalicelib import aws
        from chalicelib.config import settings
        from chalicelib.store.users import hash_key

        self.ddb = aws.client("dynamodb")
        self.tables = settings
        self.hash_key = hash_key
        # A lean keep-alive client, so the figure is the API's latency, not an HTTP library's.
        self.http = HTTPConnection(platform.host, platform.api_port, timeout=30)
        self.rng = rng
        self.created = None  # the first item the API's create wrote, as DynamoDB holds it

    def api(self, op, user, deployment_id):
        headers = {"Authorization": f"Bearer {user.api_key}", "Content-Type": "application/json"}
        if op == "create":
            self.http.request("POST", self.BASE, body=self.CREATE_BODY, headers=headers)
        elif op == "detail":
            self.http.request("GET", f"{self.BASE}/{deployment_id}", headers=headers)
        else:
            self.http.request("GET", f"{self.BASE}?status=running&limit=50", headers=headers)
        response = self.http.getresponse()
        body = response.read()
        assert response.status in (200, 201), body
        if op == "list":
            assert len(json.loads(body)["items"]) == 50
        if op == "create" and self.created is None:  # what a create writes, for the bare put
            key = {"id": {"S": json.loads(body)["id"]}}
            table = self.tables.deployments_table
            self.created = self.ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]

    def bare(self, op, user, deployment_id):
        # Each request exactly as the API sends it (pynamodb asks every call for its consumed
        # capacity and names attributes by placeholder), so moto does the same work for both.
        self.ddb.get_item(
            TableName=self.tables.api_keys_table,
            Key={"key_hash": {"S": self.hash_key(user.api_key)}},
            ConsistentRead=True,
            ReturnConsumedCapacity="TOTAL",
        )
        if op == "create":
            self._bare_create(user)
        elif op == "detail":
            self.ddb.get_item(
                TableName=self.tables.deployments_table,
                Key={"id": {"S": deployment_id}},
                ConsistentRead=True,
                ReturnConsumedCapacity="TOTAL",
            )
        else:
            self.ddb.query(
                TableName=self.tables.deployments_table,
                IndexName="by-owner-status",
                KeyConditionExpression="#0 = :0",
                ExpressionAttributeNames={"#0": "owner_status"},
                ExpressionAttributeValues={":0": {"S": f"{user.user_id}#running"}},
                ScanIndexForward=False,
                Limit=51,
                ReturnConsumedCapacity="TOTAL",
            )

    def _bare_create(self, user):
        """The owner's nodes (none online: it waits), then the one write."""
        self.ddb.query(
            TableName=self.tables.nodes_table,
            IndexName="by-owner",
            KeyConditionExpression="#0 = :0",
            ExpressionAttributeNames={"#0": "owner_id"},
            ExpressionAttributeValues={":0": {"S": user.user_id}},
            ScanIndexForward=False,
            ReturnConsumedCapacity="TOTAL",
        )
        # The very item the API's create writes (its size and its index entries cost moto as
        # they would cost DynamoDB), under a new id and this owner.
        item = self.created | {
            "id": {"S": f"dep_{self.rng.randrange(16**16):016x}"},
            "owner_id": {"S": user.user_id},
            "owner_status": {"S": f"{user.user_id}#provisioning"},
        }
        self.ddb.put_item(
            TableName=self.tables.deployments_table,
            Item=item,
            ConditionExpression="(attribute_not_exists (#0) AND attribute_not_exists (#1))",
            ExpressionAttributeNames={"#0": "id", "#1": "version"},
            ReturnConsumedCapacity="TOTAL",
        )


def interleaved(calls: Calls, op: str, pick, rounds: int) -> tuple[list[float], list[float]]:
    """(API ms, bare ms) over `rounds`, each round one of each on the same deployment."""
    api_ms, bare_ms = [], []
    for i in range(rounds):
        user, dep = pick()
        # Alternate which goes first so drift on a noisy machine hits both sides alike.
        order = [(calls.api, api_ms), (calls.bare, bare_ms)]
        for call, samples in order if i % 2 == 0 else reversed(order):
            t0 = time.perf_counter()
            call(op, user, dep)
            samples.append((time.perf_counter() - t0) * 1000)
    return api_ms, bare_ms


def run(platform: LocalPlatform, args, scan_log: Path) -> None:
    from chalicelib.store.users import UserRepository

    users = [UserRepository().create_user_with_key(f"bench{i}") for i in range(args.owners)]
    started = time.perf_counter()
    made = load([u.user_id for u in users], args.deployments)
    print(
        f"loaded {len(made):,} deployments for {len(users)} owners "
        f"in {time.perf_counter() - started:.1f}s on {platform.aws_url}"
    )
    scans_before = len(scan_log.read_text().splitlines())
    by_owner = {u.user_id: u for u in users}
    rng = random.Random(7)
    calls = Calls(platform, rng)

    def pick():
        owner, dep = rng.choice(made)
        return by_owner[owner], dep

    print("\nbaselines, the bare calls each operation issues:")
    for op, described in BARE_CALLS.items():
        print(f"  {op:<8} {described}")
    print(
        f"\n{'operation':<10}{'API p50':>10}{'API p95':>10}{'bare p50':>10}{'bare p95':>10}"
        f"{'p50 ratio':>11}  goal <= 1.3x"
    )
    handler_log = platform.log_dir / "functions" / "APIHandler.log"
    handler_rows = []
    for op in ("create", "detail", "list"):
        interleaved(calls, op, pick, 3)  # warm both paths (the API's first create is the put's)
        logged_before = len(handler_log.read_text().splitlines())
        rounds = args.list_rounds if op == "list" else args.rounds
        api_ms, bare_ms = interleaved(calls, op, pick, rounds)
        ratio = statistics.median(api_ms) / statistics.median(bare_ms)
        verdict = "ok" if ratio <= 1.3 else "OVER"
        print(
            f"{op:<10}{pct(api_ms, 0.5):>9.1f}ms{pct(api_ms, 0.95):>8.1f}ms"
            f"{pct(bare_ms, 0.5):>8.1f}ms{pct(bare_ms, 0.95):>8.1f}ms{ratio:>10.2f}x  {verdict}"
        )
        handled = handler_durations(handler_log, logged_before)
        handler_rows.append((op, statistics.median(handled), statistics.median(bare_ms)))
    print(
        "\nthe API function's own time per request (its access log's duration_ms: routing, our "
        "code and its DynamoDB calls; not the local gateway and Lambda hops before it):"
    )
    for op, handled, bare in handler_rows:
        print(f"  {op:<8} p50 {handled:.1f}ms = {handled / bare:.2f}x the bare calls' p50")
    scans = len(scan_log.read_text().splitlines()) - scans_before
    print(f"\nScan calls made during the measured requests: {scans} (must be 0)")


if __name__ == "__main__":
    main()
