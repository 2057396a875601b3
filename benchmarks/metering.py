"""One metering tick + drain on a moto server, beside the bare DynamoDB calls it needs.

10,000 billable and 50,000 stopped deployments are batch-written to a moto server, the billable
ones with their meters (the meters table: a deployment's billing state, apart from its item).
We time one tick + drain as it runs: the tick Queries the meters' sparse `billable` index (keys
only, one Query per key), reads those meters with consistent BatchGetItem (100 a call) and sends
SendMessageBatch calls (100 deployments a message) as the pages come in, while the worker drains
the queue (as the SQS trigger starts invocations as soon as messages land); a message's
deployments are charged METER_THREADS at a time, each with one conditional UpdateItem of its
meter (the running total, the time and its ledger entry; every 8th charge of a deployment first
writes its page of entries to the ledger table, one BatchWriteItem). Beside it, the same server
does the bare calls for the same deployments: the BatchGetItem reads, then the conditional
UpdateItem calls (boto3) one at a time (the goal's baseline) and METER_THREADS at a time (like
for like with the worker); --diagnose adds the worker's own UpdateItem issued bare. Every AWS
call the server receives is counted.
Goals: tick + drain <= 1.5x the bare calls; <= 1 write call per deployment per tick; 0 items
read that were not billable; <= 0.1 SQS requests per deployment.

    .venv/bin/python benchmarks/metering.py [--billable 10000] [--stopped 50000] [--rounds 3]

Rounds alternate one tick + drain with the bare passes on the same server (each round's items
carry the ledger entries of the rounds before); the ratios reported are medians.

On AWS, the same design for 100,000 billable deployments: the tick's Queries read only the sparse
`billable` index of the meters table, keys only (~60 bytes an entry, ~6 MB in ~8 pages, ~800
read units), then the meters themselves (100,000 consistent reads of < 1 KB items: 100,000 read
units, 1,000 BatchGetItem calls as the pages come in), and sends 1,000 messages in 100
SendMessageBatch calls. The SQS trigger spreads them over Lambda invocations (batch 10 = 1,000
deployments an invocation, ~100 invocations; a concurrency of a few tens, capped with the event
source's maximum concurrency); an invocation issues its writes 8 at a time, so at ~5-10 ms a
write it charges 1,000 deployments in ~1 s. The writes are 100,000 conditional UpdateItems a
minute of items under 1 KB (1 write unit each: the meter stays under 1 KB with its tail of 8)
that rewrite no index entry (the index projects only keys, and a charge never changes its key),
plus 100,000 ledger rows a minute written 8 at a time: 2 write units per charge, ~3,300 write
units a second if the minute's burst drains in one minute, inside on-demand table limits (40,000
WCU) and SQS standard throughput (unlimited). Each meter is its own partition key, so no key is
hot however many deployments are billed. Conditional writes keep it exactly-once under any
redelivery or concurrency.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import seeding  # noqa: E402 - benchmarks/seeding.py, beside this script

from prism.dev.awsenv import local_aws_env  # noqa: E402

WRITE_CALLS = ("PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems")


def start_moto(call_log: Path) -> tuple[subprocess.Popen, str]:
    return seeding.start_moto(os.environ | {"PRISM_MOTO_CALL_LOG": str(call_log)})


def calls(log: Path) -> Counter:
    return Counter(line.strip() for line in log.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--billable", type=int, default=10_000)
    parser.add_argument("--stopped", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="tick + drain, then bare, each")
    parser.add_argument(
        "--diagnose", action="store_true", help="also time the worker's own UpdateItem bare"
    )
    args = parser.parse_args()
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # no log line per tick
    log = Path(tempfile.mkdtemp()) / "calls.log"
    log.touch()
    moto, url = start_moto(log)
    try:
        os.environ.update(local_aws_env(url, "bench"))
        run(args, log)
    finally:
        moto.terminate()
        moto.wait()


@dataclass
class Bench:
    """What a round needs, made once the local AWS environment is set (chalicelib reads it at
    import): the clients, the queue, the metering service and the billable deployments."""

    settings: Any
    ddb: Any
    sqs: Any
    queue: Any
    service: Any
    metrics: Any
    billable_ids: list[str]


def setup(args) -> Bench:
    from chalicelib import aws
    from chalicelib.config import settings
    from chalicelib.logs import metrics
    from chalicelib.queue import WorkQueue

    # Metrics are still collected (their cost is part of the worker's) but never printed.
    for emitter in (metrics, metrics.provider):  # the provider prints every 100 values itself
        emitter.flush_metrics = lambda *_, **__: metrics.clear_metrics()
    from chalicelib.services.metering import MeteringService
    from chalicelib.store.metering import MeteringRepository
    from prism.dev.infra import create_queues, create_tables

    create_tables(aws.client("dynamodb"), settings)
    create_queues(aws.client("sqs"), settings.stage)
    started = time.perf_counter()
    billable_ids = seeding.billing_deployments(args.billable, args.stopped)
    print(
        f"loaded {args.billable:,} billable + {args.stopped:,} stopped deployments in "
        f"{time.perf_counter() - started:.0f}s"
    )
    sqs = aws.client("sqs")
    queue = WorkQueue(sqs, settings.metering_queue)
    service = MeteringService(
        MeteringRepository(), queue, lambda *_: None, lambda: datetime.now(UTC)
    )
    return Bench(settings, aws.client("dynamodb"), sqs, queue, service, metrics, billable_ids)


def tick_and_drain(bench: Bench):
    """The tick sends as the index pages in; the worker drains meanwhile, as the SQS trigger
    would start invocations as soon as messages land."""
    sent = {}  # "messages" appears when the tick is done

    def drain():
        drained = 0
        while "messages" not in sent or drained < sent["messages"]:
            for message in bench.sqs.receive_message(
                QueueUrl=bench.queue.url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", []):
                bench.service.work(json.loads(message["Body"]))
                bench.metrics.clear_metrics()  # collected, as the worker does, never printed
                bench.sqs.delete_message(
                    QueueUrl=bench.queue.url, ReceiptHandle=message["ReceiptHandle"]
                )
                drained += 1

    started = time.perf_counter()
    worker = threading.Thread(target=drain)
    worker.start()
    report = bench.service.tick()
    tick_s = time.perf_counter() - started
    sent["messages"] = report.messages
    worker.join()
    return report, tick_s, time.perf_counter() - started


def timed_reads(bench: Bench) -> float:
    """What the tick reads beyond its index Queries: the meters, 100 a BatchGetItem."""
    ids = bench.billable_ids
    started = time.perf_counter()
    for start in range(0, len(ids), 100):
        keys = [{"deployment_id": {"S": d}} for d in ids[start : start + 100]]
        request = {bench.settings.meters_table: {"Keys": keys, "ConsistentRead": True}}
        while request:
            request = bench.ddb.batch_get_item(RequestItems=request).get("UnprocessedKeys")
    return time.perf_counter() - started


def timed_updates(bench: Bench, request, threads: int) -> float:
    """One UpdateItem per billable deployment's meter, the same items, `threads` at a time."""
    from chalicelib.store.metering import stamp

    table, now = bench.settings.meters_table, stamp(datetime.now(UTC))
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(lambda d: bench.ddb.update_item(**request(table, d, now)), bench.billable_ids)
        )
    return time.perf_counter() - started


def bare_update(table: str, deployment_id: str, now: str) -> dict:
    return dict(
        TableName=table,
        Key={"deployment_id": {"S": deployment_id}},
        UpdateExpression="ADD cost_accrued_usd :a SET last_metered_at = :now",
        ConditionExpression="attribute_exists(billable)",
        ExpressionAttributeValues={":a": {"N": "0.06"}, ":now": {"S": now}},
    )


def worker_update(table: str, deployment_id: str, now: str) -> dict:
    """The UpdateItem the worker sends (ledger entry appended, three-clause condition)."""
    entry = "|".join([now, now, "0.06", "3.6", "1"])
    return dict(
        TableName=table,
        Key={"deployment_id": {"S": deployment_id}},
        UpdateExpression="ADD #c :a SET #m = :now, #t = list_append(#t, :entry)",
        ConditionExpression="#m < :now AND attribute_exists(#b) AND size(#t) < :page",
        ExpressionAttributeNames={
            "#c": "cost_accrued_usd",
            "#m": "last_metered_at",
            "#t": "ledger_tail",
            "#b": "billable",
        },
        ExpressionAttributeValues={
            ":a": {"N": "0.06"},
            ":now": {"S": now},
            ":entry": {"L": [{"S": entry}]},
            ":page": {"N": "1000"},
        },
    )


def run(args, log: Path) -> None:
    from chalicelib.services.metering import METER_THREADS

    bench = setup(args)
    ratios = {"bare": [], "bare_parallel": [], "worker_write": []}
    for round_ in range(1, args.rounds + 1):  # alternating, so drift hits all alike
        before = calls(log)
        report, tick_s, tick_drain = tick_and_drain(bench)
        if round_ == 1:
            used = calls(log) - before
        reads = timed_reads(bench)
        times = {
            "bare": reads + timed_updates(bench, bare_update, 1),
            "bare_parallel": reads + timed_updates(bench, bare_update, METER_THREADS),
        }
        if args.diagnose:
            times["worker_write"] = reads + timed_updates(bench, worker_update, METER_THREADS)
        for name, seconds in times.items():
            ratios[name].append(tick_drain / seconds)
        print_round(
            round_, report, tick_s, tick_drain, reads, times, ratios, len(bench.billable_ids)
        )
    print_summary(args, ratios, used, report, len(bench.billable_ids))


def print_round(round_, report, tick_s, tick_drain, reads, times, ratios, billable) -> None:
    from chalicelib.services.metering import METER_THREADS

    worker = (
        f"; the worker's own UpdateItem, {METER_THREADS} at a time "
        f"{times['worker_write']:.1f}s (ratio {ratios['worker_write'][-1]:.2f}x)"
        if "worker_write" in times
        else ""
    )
    print(
        f"round {round_}: tick + drain {tick_drain:.1f}s (the tick alone {tick_s:.1f}s) "
        f"for {report.deployments:,} deployments in {report.messages} messages; "
        f"bare BatchGetItem x{math.ceil(billable / 100)} ({reads:.1f}s) + "
        f"conditional UpdateItem x{billable:,}: one at a time "
        f"{times['bare']:.1f}s (ratio {ratios['bare'][-1]:.2f}x), {METER_THREADS} at a time "
        f"{times['bare_parallel']:.1f}s (ratio {ratios['bare_parallel'][-1]:.2f}x)" + worker,
        flush=True,
    )


def print_summary(args, ratios, used: Counter, report, billable: int) -> None:
    from chalicelib.services.metering import METER_THREADS

    n = report.deployments
    writes = sum(used[f"DynamoHandler {w}"] for w in WRITE_CALLS)
    ddb_calls = sum(v for k, v in used.items() if k.startswith("DynamoHandler"))
    sqs_calls = sum(v for k, v in used.items() if k.startswith("SQSResponse"))
    # What the tick's Queries returned, beyond the deployments that really are billable (the
    # stopped ones seeded beside them must never come back from the sparse index).
    not_billable = report.deployments - billable
    print(
        f"median ratio to the bare calls (the reads, then the updates one at a time): "
        f"{statistics.median(ratios['bare']):.2f}x over {args.rounds} rounds (goal <= 1.5x)"
    )
    print(
        f"median ratio to the bare calls with the updates {METER_THREADS} at a time, as the worker "
        f"issues its own: {statistics.median(ratios['bare_parallel']):.2f}x (like for like)"
    )
    if args.diagnose:
        print(
            f"median ratio to the worker's own UpdateItem {METER_THREADS} at a time: "
            f"{statistics.median(ratios['worker_write']):.2f}x (the tick, queue and worker on "
            "top of the write itself)"
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
