"""One metering tick + drain on a moto server, beside the bare DynamoDB writes it needs.

10,000 billable and 50,000 stopped deployments are batch-written to a moto server. We time one
tick (Query on the sparse `billable` index -> SendMessageBatch, 100 deployments a message) plus
the drain (each message to the worker: one conditional UpdateItem per deployment: the running
total and its ledger entry on the deployment; every 25th charge of a deployment also moves its
entries to the ledger table with one BatchWriteItem and one UpdateItem), then the same server
doing just the bare conditional UpdateItem calls (boto3) for the same deployments, and the
worker's own UpdateItem (ledger entry appended) issued bare, which separates what the richer
write costs moto from what the tick, the queue and the worker add. Every AWS call the server
receives is counted.
Goals: tick + drain <= 1.5x the bare updates; <= 1 write call per deployment per tick; 0 items
read that were not billable; <= 0.1 SQS requests per deployment.

    .venv/bin/python benchmarks/metering.py [--billable 10000] [--stopped 50000] [--rounds 3]

Rounds alternate one tick + drain with one pass of bare updates on the same server (each round's
items carry the ledger entries of the rounds before); the ratio reported is the median.

On AWS, the same design for 100,000 billable deployments: the tick's Query reads only the sparse
`billable` index, which projects just the five attributes the tick needs (~150 bytes an entry,
~15 MB in ~15 pages of 1 MB, ~1,900 read units, a few seconds; never a ledger tail) and sends
1,000 messages in 100 SendMessageBatch calls; the SQS trigger spreads them over Lambda
invocations (batch 10 = 1,000 deployments an invocation, ~100 invocations, a concurrency of a few
tens with maximum_concurrency set); the writes are 100,000 conditional UpdateItems a minute plus
4,000 ledger pages (25 rows each). An update is billed on the item's size: ~1 KB plus the tail
(up to 25 x ~170 B), ~3 write units on average, plus 1 for the small index entry: ~7,000 write
units a second for the minute's burst if it is drained in one minute, inside on-demand limits
(40,000 WCU a table) and SQS standard throughput (unlimited); spreading the drain over the minute
(reserved concurrency) halves the peak. Conditional writes keep it exactly-once under any
redelivery or concurrency.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prism.dev.awsenv import local_aws_env  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(call_log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "prism.dev.moto_server", "-p", str(port)],
        cwd=REPO,
        env=os.environ | {"PRISM_MOTO_CALL_LOG": str(call_log)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(url + "/moto-api/", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("moto did not start")


def calls(log: Path) -> Counter:
    return Counter(line.strip() for line in log.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--billable", type=int, default=10_000)
    parser.add_argument("--stopped", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="tick + drain, then bare, each")
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp()) / "calls.log"
    log.touch()
    moto, url = start_moto(log)
    try:
        os.environ.update(local_aws_env(url, "bench"))
        run(args, log)
    finally:
        moto.terminate()
        moto.wait()


def run(args, log: Path) -> None:
    from chalicelib import aws
    from chalicelib.config import settings
    from chalicelib.logs import metrics
    from chalicelib.queue import WorkQueue

    # Metrics are still collected (their cost is part of the worker's) but never printed.
    for emitter in (metrics, metrics.provider):  # the provider prints every 100 values itself
        emitter.flush_metrics = lambda *_, **__: metrics.clear_metrics()
    from chalicelib.services.metering import MeteringService
    from chalicelib.store.metering import MeteringRepository, stamp
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem
    from prism.dev.infra import create_queues, create_tables

    create_tables(aws.client("dynamodb"), settings)
    create_queues(aws.client("sqs"), settings.stage)
    start = datetime.now(UTC) - timedelta(minutes=1)
    started = time.perf_counter()
    billable_ids = []
    with DeploymentItem.batch_write() as batch:
        for i in range(args.billable + args.stopped):
            billable = i < args.billable
            item = DeploymentItem(
                id=f"dep_{i:016x}",
                owner_id="usr_bench",
                name=f"m{i}",
                target="runpod",
                status="running" if billable else "stopped",
                owner_status="usr_bench#x",
                image="acme/llm:1",
                budget_max_usd=1000,
                deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
                price_per_hour_usd=Decimal("3.6"),
                last_metered_at=start,
            )
            item.billable = "1" if billable else None
            batch.save(item)
            if billable:
                billable_ids.append(item.id)
    print(
        f"loaded {args.billable:,} billable + {args.stopped:,} stopped deployments in "
        f"{time.perf_counter() - started:.0f}s"
    )

    sqs = aws.client("sqs")
    queue = WorkQueue(sqs, settings.metering_queue)
    service = MeteringService(
        MeteringRepository(), queue, lambda *_: None, lambda: datetime.now(UTC)
    )
    ddb = aws.client("dynamodb")

    def tick_and_drain():
        started = time.perf_counter()
        report = service.tick()
        tick_s = time.perf_counter() - started
        drained = 0
        while drained < report.messages:
            for message in sqs.receive_message(
                QueueUrl=queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", []):
                service.work(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
                drained += 1
        return report, tick_s, time.perf_counter() - started

    def bare_updates():
        now = datetime.now(UTC)
        started = time.perf_counter()
        for deployment_id in billable_ids:  # the bare conditional writes, same items
            ddb.update_item(
                TableName=settings.deployments_table,
                Key={"id": {"S": deployment_id}},
                UpdateExpression="ADD cost_accrued_usd :a SET last_metered_at = :now",
                ConditionExpression="attribute_exists(billable)",
                ExpressionAttributeValues={":a": {"N": "0.06"}, ":now": {"S": stamp(now)}},
            )
        return time.perf_counter() - started

    def worker_shaped_updates():
        """The UpdateItem the worker sends (ledger entry appended, counters, two-clause
        condition), bare: what the write itself costs this server, without tick, queue or
        worker."""
        now = datetime.now(UTC)
        entry = "|".join([stamp(now), stamp(now), "0.06", "3.6", "1"])
        started = time.perf_counter()
        for deployment_id in billable_ids:
            ddb.update_item(
                TableName=settings.deployments_table,
                Key={"id": {"S": deployment_id}},
                UpdateExpression="ADD #c :a, #v :one, #n :one SET #m = :now, "
                "#t = list_append(if_not_exists(#t, :empty), :entry)",
                ConditionExpression="#m < :now AND attribute_exists(#b)",
                ExpressionAttributeNames={
                    "#c": "cost_accrued_usd",
                    "#v": "version",
                    "#n": "ledger_tail_length",
                    "#m": "last_metered_at",
                    "#t": "ledger_tail",
                    "#b": "billable",
                },
                ExpressionAttributeValues={
                    ":a": {"N": "0.06"},
                    ":one": {"N": "1"},
                    ":now": {"S": stamp(now)},
                    ":empty": {"L": []},
                    ":entry": {"L": [{"S": entry}]},
                },
            )
        return time.perf_counter() - started

    ratios, shaped_ratios = [], []
    for round_ in range(1, args.rounds + 1):  # alternating, so drift hits all alike
        before = calls(log)
        report, tick_s, tick_drain = tick_and_drain()
        if round_ == 1:
            used = calls(log) - before
        bare = bare_updates()
        shaped = worker_shaped_updates()
        ratios.append(tick_drain / bare)
        shaped_ratios.append(tick_drain / shaped)
        print(
            f"round {round_}: tick + drain {tick_drain:.1f}s (tick {tick_s:.1f}s, drain "
            f"{tick_drain - tick_s:.1f}s) for {report.deployments:,} deployments in "
            f"{report.messages} messages; bare conditional UpdateItem x{len(billable_ids):,} "
            f"{bare:.1f}s (ratio {ratios[-1]:.2f}x); the worker's UpdateItem bare "
            f"{shaped:.1f}s (ratio {shaped_ratios[-1]:.2f}x)",
            flush=True,
        )

    n = report.deployments
    writes = used["DynamoHandler TransactWriteItems"] + used["DynamoHandler UpdateItem"]
    ddb_calls = sum(v for k, v in used.items() if k.startswith("DynamoHandler"))
    sqs_calls = sum(v for k, v in used.items() if k.startswith("SQSResponse"))
    # What the tick's Query returns comes from the sparse index: count any non-billable ones.
    not_billable = sum(1 for item in MeteringRepository().billable() if item.billable != "1")
    median = statistics.median(ratios)
    print(f"median ratio: {median:.2f}x over {args.rounds} rounds (goal <= 1.5x)")
    print(
        f"median ratio to the worker's own UpdateItem issued bare: "
        f"{statistics.median(shaped_ratios):.2f}x (the tick, queue and worker on top of the "
        "write itself)"
    )
    print(
        f"DynamoDB calls per billable deployment: {ddb_calls / n:.3f} "
        f"(write calls {writes / n:.3f} per deployment per tick, goal <= 1)"
    )
    print(
        f"items read that were not billable: {not_billable} (goal 0); "
        f"Scan calls: {used['DynamoHandler Scan']}"
    )
    print(f"SQS requests per deployment: {sqs_calls / n:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()
