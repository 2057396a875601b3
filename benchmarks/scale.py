"""The control plane at internet scale, simulated: DynamoDB partition load, write units per charge
and per heartbeat, node_hello's reads, the cloud health round and provider calls.

Method. The control plane's real code (the Chalice app's handlers, on moto in this process, with
the provisioning state machines really executing, fake RunPod and Lambda Cloud over HTTP and
model endpoints on a local HTTP server) runs one simulated minute of a fleet 1/FACTOR of the
target (10,000 deployments, 1,000 nodes, 100 cloud running, 1,000 billable, 100 pulls at
FACTOR 10), and every DynamoDB call it makes is counted (benchmarks/capacity.py: table, index,
partition key, and the units DynamoDB bills from the items' real sizes and the indexes'
projections). The fleet is seeded in its steady state: meters hold 1 to 8 charges in their
tails (one in 8 moves a page to the ledger this minute), connections were last heard from 15 s
before the minute. The minute:
- every node sends 4 heartbeats, at 0, 15, 30 and 45 s of a whole minute on the connections'
  clock (the simulated minute takes seconds of real time, which must not cross a minute's end
  more often than a real minute does);
- every pulling deployment reports progress 12 times (at most every 5 s);
- every running node deployment reports request metrics at the agent's default interval (once
  a minute; every one has traffic);
- one metering tick, its queue drained by the real worker (every billable deployment charged);
- one cloud health tick, its queue drained by the real worker, each message by its own
  invocation (every running cloud image deployment probed; 1 in 50 endpoints hangs, so its
  message waits for the probe timeout);
- one node sweep;
- API calls: 50 creates, 200 lists and 200 details, spread over the owners.
Owners: one tenant holds 10% of the deployments and nodes, 99 share the rest. Then, apart from
the minute: node_hello's calls for an owner with waiting deployments, with none and with 1,000
of other owners' waiting; and 3 whole lives on each fake provider, counting the provider
requests of each launch and terminate step.

Extrapolation: a partition key whose entries belong to one entity (a deployment's own item, a
connection's, a deployment's ledger rows) carries the same load at any fleet size; a key shared
by many entities (an index shard, a tenant's index key) grows linearly, by FACTOR. Rates are
the minute's units / 60 s: the metering and health bursts are spread by their SQS queues. The
health round at 1,000 running is the tick's time times FACTOR plus the slowest message (the
messages run in parallel, one invocation each).

AWS arithmetic at the target sizes (printed after the goals, from the counted units and calls;
on-demand prices, us-east-1: $0.625 a million write units, $0.125 a million read units, Lambda
$0.20 a million requests and $0.0000166667 a GB-second, WebSocket $1.00 a million messages and
$0.25 a million connection-minutes, SQS $0.40 a million requests). A run with FACTOR 10:
- DynamoDB: ~3,600 write units and ~2,200 read units a second (~9.4 and ~5.6 billion a month):
  request metrics ~1,330 write units/s (every running deployment with traffic, once a minute,
  each rewriting its item and three index entries), heartbeats ~1,000 (1.5 each), pull progress
  ~800, charges ~330 (2 each), the API ~80, cloud health ~70. ~$6,600 a month.
- Lambda: ~77,000 invocations a minute (72,000 node messages, 4,500 API requests, 11 metering,
  101 health, 1 sweep) and ~540 GB-seconds a minute (measured here with moto's and the
  counting's time included: an upper bound), ~$1,050 a month.
- SQS: ~270 requests a minute (metering and health sends, receives and deletes, and the event
  sources' idle polls), ~$5 a month. WebSocket: 72,000 node messages a minute and 10,000
  connections, ~$3,200 a month.
- The hottest key is the largest tenant's `by-owner` entry (~57 write units/s for a tenant with
  10% of the fleet); the `liveness` shards take ~21 each.

    .venv/bin/python benchmarks/scale.py [--factor 10]
"""

import argparse
import copy
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PRISM_STAGE", "scale")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
os.environ.update(AWS_ACCESS_KEY_ID="scale", AWS_SECRET_ACCESS_KEY="scale")
os.environ.update(AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
os.environ.pop("PRISM_AWS_ENDPOINT_URL", None)  # moto in this process
# The simulated minute takes several real ones: a node heard from at its start must not look
# silent to the sweep at its end (a healthy fleet: the sweep finds no silent node).
os.environ.update(PRISM_NODE_TIMEOUT_SECONDS="3600", PRISM_NODE_LOST_SECONDS="7200")

import capacity  # noqa: E402 - benchmarks/capacity.py, beside this script
import scale_probes  # noqa: E402 - benchmarks/scale_probes.py, beside this script
import world  # noqa: E402 - benchmarks/world.py, beside this script

from node_agent.reporting import METRICS_INTERVAL_S  # noqa: E402

TARGET = {"deployments": 100_000, "nodes": 10_000, "cloud": 1_000, "billable": 10_000}
HEARTBEATS_A_MINUTE = 4
PROGRESS_A_MINUTE = 12
METRICS_A_MINUTE = round(60 / METRICS_INTERVAL_S)  # the agent's default
API_A_MINUTE = {"create": 50, "list": 200, "detail": 200}
GOAL_WRITE_PER_KEY, GOAL_READ_PER_KEY = 1000, 3000
SIZING = REPO / "infra" / "sizing.json"


class Endpoints(BaseHTTPRequestHandler):
    """Every cloud model's endpoint: 200, except the hanging ones (path ends in /hang)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        if "/hang" in self.path:
            time.sleep(8)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def endpoint_server() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoints)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # a probe gave up on a hanging one
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=10, help="the target / the simulated fleet")
    args = parser.parse_args()
    sizes = {name: count // args.factor for name, count in TARGET.items()}
    sizes["pulls"] = sizes["billable"] // 10
    sizes["running_on_nodes"] = sizes["nodes"] * 2

    from prism.dev.cloud_sandbox import fake_clouds

    started = time.perf_counter()
    with fake_clouds(boot_seconds=0.2) as fakes, sandbox(fakes) as app:
        accounting = capacity.Accounting()
        accounting.install()
        try:
            fleet = world.seed(app, sizes, fakes["runpod"], endpoint_server())
            print(f"seeded {fleet.summary()} in {time.perf_counter() - started:.0f} s")
            minute = simulate_minute(app, fleet, accounting)
            minute["usage"] = copy.deepcopy(accounting.usage)  # the keys' load: this minute's
            hello = scale_probes.hello_calls(app, accounting)
            launches = scale_probes.provider_calls(app)
        finally:
            accounting.uninstall()
    report(accounting, args.factor, fleet.owners[0].user_id, minute, hello, launches)
    print(f"(ran in {time.perf_counter() - started:.0f} s)")


def sandbox(fakes):
    from prism.dev.cloud_sandbox import cloud_sandbox, fast_cloud_settings

    return cloud_sandbox(fast_cloud_settings(fakes["runpod"], fakes["lambda"]))


def simulate_minute(app, fleet, accounting) -> dict:
    """One minute of the fleet's traffic through the real handlers; returns the counts (and
    under "seconds" the time each kind of work took here)."""
    counts, seconds = {}, {}
    for name, work in [
        ("heartbeat", lambda: fleet.heartbeats(app, HEARTBEATS_A_MINUTE)),
        ("pull progress", lambda: fleet.progress(app, PROGRESS_A_MINUTE)),
        ("request metrics", lambda: fleet.metrics(app, METRICS_A_MINUTE)),
        ("charge", lambda: fleet.meter(app)),
        ("sweep", lambda: fleet.sweep(app)),
        ("api", lambda: fleet.api(app, API_A_MINUTE)),
    ]:
        began = time.perf_counter()
        accounting.workload(name)
        try:
            counts[name] = work()
        finally:
            accounting.workload(None)
        seconds[name] = time.perf_counter() - began
        print(f"  {name}: {counts[name]:,} in {seconds[name]:.0f} s", flush=True)
    accounting.workload("cloud health")
    try:
        counts["health"] = fleet.health_round(app)
    finally:
        accounting.workload(None)
    counts["seconds"] = seconds
    return counts


def key_rates(usage_by_key: dict, factor: int) -> list[tuple[float, float, str]]:
    """(write units/s, read units/s, key) at the target, per partition key."""
    rates = []
    for (table, index, partition), usage in usage_by_key.items():
        grows = factor if len(usage.entities) > 1 else 1
        name = f"{table.removeprefix('prism-scale-')}{'/' + index if index else ''} {partition}"
        rates.append((usage.write / 60 * grows, usage.read / 60 * grows, name))
    return rates


def report(accounting, factor, big_tenant, minute, hello, launches) -> None:
    rates = key_rates(minute["usage"], factor)
    top_write = max(rates)
    top_read = max(rates, key=lambda r: r[1])
    fleet = "100k deployments / 10k nodes"
    per_charge = accounting.write_units["charge"] / max(1, minute["charge"])
    per_heartbeat = accounting.write_units["heartbeat"] / max(1, minute["heartbeat"])
    health = minute["health"]
    print()
    print(
        f"max write units per second on one partition key at {fleet}: "
        f"{top_write[0]:.0f} (goal <= {GOAL_WRITE_PER_KEY})"
    )
    print(
        f"max read units per second on one partition key at {fleet}: "
        f"{top_read[1]:.0f} (goal <= {GOAL_READ_PER_KEY})"
    )
    print(f"write units per charge: {per_charge:.2f} (goal <= 2)")
    print(f"write units per heartbeat: {per_heartbeat:.2f} (goal <= 2)")
    print(
        f"DynamoDB calls per node_hello: {hello['calls']} "
        f"(goal: independent of other owners' deployments)"
        + ("" if hello["independent"] else f" NOT MET: {hello['detail']}")
    )
    print(f"cloud health round at 1,000 running: {health['round_s']:.1f} s (goal <= 60)")
    print(
        f"provider calls per launch: {launches['launch']:.1f}, per terminate: "
        f"{launches['terminate']:.1f} (goal <= 3 each)"
    )
    print("hottest keys at the target (write units/s, read units/s):")
    for write, read, name in sorted(rates, key=lambda r: -(r[0] + r[1] / 3))[:5]:
        print(f"  {write:8.1f} {read:8.1f}  {name}")
    tenant = max(rate for rate in rates if big_tenant in rate[2])
    share = world.BIG_TENANT_SHARE
    limit = share * GOAL_WRITE_PER_KEY / tenant[0]  # the share at which its key reaches the goal
    print(
        f"the largest tenant ({share:.0%} of the fleet): {tenant[0]:.0f} write units/s on "
        f"{tenant[2]}; "
        + (
            f"one key reaches {GOAL_WRITE_PER_KEY} at about {limit:.0%} of the fleet"
            if limit <= 1
            else f"no tenant reaches {GOAL_WRITE_PER_KEY}, not even one holding the whole fleet"
        )
    )
    print()
    aws_arithmetic(accounting, factor, minute)


def aws_arithmetic(accounting, factor, minute) -> None:
    """The month at the target sizes, from what the simulated minute counted."""
    minute_kinds = [*minute["seconds"], "cloud health"]  # not the node_hello probes
    writes = sum(accounting.write_units[k] for k in minute_kinds) * factor / 60
    reads = sum(accounting.read_units[k] for k in minute_kinds) * factor / 60
    month_s = 30 * 24 * 3600
    print(f"at the target: {writes:,.0f} write units/s, {reads:,.0f} read units/s on DynamoDB")
    by_kind = sorted(minute_kinds, key=lambda kind: -accounting.write_units[kind])
    print(
        "  write units/s by kind of work: "
        + ", ".join(f"{k} {accounting.write_units[k] * factor / 60:,.0f}" for k in by_kind)
    )
    ddb_cost = (writes * 0.625 + reads * 0.125) * month_s / 1e6
    messages = (minute["heartbeat"] + minute["pull progress"] + minute["request metrics"]) * factor
    invocations = invocations_a_minute(minute, factor)
    gb_s = gb_seconds_a_minute(minute, factor, minute["seconds"])
    sqs = sqs_requests_a_minute(minute, factor)
    lambda_cost = (sum(invocations.values()) * 0.20 / 1e6 + gb_s * 0.0000166667) * 43_200
    ws_cost = messages * 43_200 * 1.00 / 1e6 + TARGET["nodes"] * 43_200 * 0.25 / 1e6
    sqs_cost = sqs * 43_200 * 0.40 / 1e6
    print(
        f"  Lambda: {sum(invocations.values()):,.0f} invocations/min "
        f"({', '.join(f'{k} {v:,.0f}' for k, v in invocations.items())}), {gb_s:,.0f} GB-s/min"
    )
    print(f"  SQS: {sqs:,.0f} requests/min; WebSocket: {messages:,.0f} node messages/min")
    print(
        f"  per month (on-demand, us-east-1): DynamoDB ${ddb_cost:,.0f}, Lambda "
        f"${lambda_cost:,.0f}, API Gateway WebSocket ${ws_cost:,.0f}, SQS ${sqs_cost:,.0f}"
    )
    if accounting.scans:
        print(f"  Scans: {dict(accounting.scans)}")


def _memory_gb(function: str) -> float:
    return json.loads(SIZING.read_text())[function]["MemorySize"] / 1024


def invocations_a_minute(minute: dict, factor: int) -> dict[str, float]:
    charges = minute["charge"] * factor
    return {
        "node messages": (minute["heartbeat"] + minute["pull progress"] + minute["request metrics"])
        * factor,
        "API": minute["api"] * factor,
        "metering": 1 + math.ceil(charges / 1000),  # the tick + 10 messages of 100 each
        "health": 1 + math.ceil(1000 / 10),
        "sweep": 1,
    }


def gb_seconds_a_minute(minute: dict, factor: int, seconds: dict) -> float:
    """From the simulation's own time per invocation (moto and the counting included, so an
    upper bound), at each function's memory size."""
    per = {k: seconds[k] / max(1, minute[k]) for k in seconds}
    node_messages = sum(
        per[k] * minute[k] * factor for k in ("heartbeat", "pull progress", "request metrics")
    )
    return (
        node_messages * _memory_gb("WebsocketMessage")
        + per["api"] * minute["api"] * factor * _memory_gb("APIHandler")
        + seconds["charge"] * factor * _memory_gb("MeterWorker")
        + minute["health"]["slowest_s"] * 100 * _memory_gb("HealthWorker")
    )


def sqs_requests_a_minute(minute: dict, factor: int) -> float:
    """Sends (batches of 10), receives and batch deletes for the metering and health queues,
    plus the event source mappings' idle long polls (5 pollers each, 20 s waits)."""
    metering_messages = math.ceil(minute["charge"] * factor / 100)
    health_messages = 100
    metering = 3 * math.ceil(metering_messages / 10)
    health = math.ceil(health_messages / 10) + 2 * health_messages  # batch 1: one each
    return metering + health + 2 * 5 * 3


if __name__ == "__main__":
    main()
