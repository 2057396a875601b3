"""benchmarks/lambda_sizing.py's scenarios: the data each measured function works on, seeded
into moto and the fake clouds, and the invocations that measure them."""

import json
import math
import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from lambda_sizing_harness import STAGE, Measurement, Runner, measured, start_health_server

from prism.dev.events import scheduled_event, sqs_record

DEPLOYMENTS = "/api/v1/compute/deployments"


@dataclass(frozen=True)
class Sizes:
    billable: int  # deployments the metering tick and worker charge
    stopped: int  # deployments that are over: never read by the tick (a sparse index)
    cloud: int  # running cloud deployments, each with a pod on the fake RunPod
    listed: int  # deployments of the owner whose list page the API serves


FULL = Sizes(billable=10_000, stopped=50_000, cloud=1_000, listed=1_000)
QUICK = Sizes(billable=500, stopped=1_000, cloud=50, listed=100)


# --- scenario: the API ---------------------------------------------------------------------


def seed_owner_deployments(owner_id: str, total: int) -> None:
    """`total` prism_node deployments of one owner over every status (as benchmarks/api.py)."""
    import seeding  # beside this script

    from chalicelib.lifecycle import Status
    from chalicelib.store.models import DeploymentItem

    statuses = [s.value for s in Status]
    with DeploymentItem.batch_write() as batch:
        for i in range(total):
            batch.save(seeding.image_deployment(owner_id, f"m{i}", statuses[i % len(statuses)]))


def api_event(method: str, api_key: str, query: dict | None = None, body=None, headers=None):
    """An API Gateway REST proxy event for DEPLOYMENTS (no path parameters)."""
    headers = {
        "host": "abc123.execute-api.us-east-1.amazonaws.com",
        "authorization": f"Bearer {api_key}",
        "content-type": "application/json",
        **(headers or {}),
    }
    return {
        "resource": DEPLOYMENTS,
        "path": DEPLOYMENTS,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": DEPLOYMENTS,
            "httpMethod": method,
            "path": f"/api{DEPLOYMENTS}",
            "stage": "api",
            "requestId": "sizing",
            "identity": {"sourceIp": "203.0.113.9"},
        },
        "body": json.dumps(body) if body is not None else None,
        "isBase64Encoded": False,
    }


def measure_api(runner: Runner, sizes: Sizes) -> list[Measurement]:
    from chalicelib.store.users import UserRepository

    user = UserRepository().create_user_with_key("sizing")
    seed_owner_deployments(user.user_id, sizes.listed)
    listing = api_event("GET", user.api_key, query={"limit": "100"})
    create = api_event(
        "POST",
        user.api_key,
        body={"name": "sizing", "image": "nginx:1.27", "budget_max_usd": 10},
        headers={"idempotency-key": "sizing-create-1"},
    )
    rows = []
    for label, event, size in (
        ("list", listing, f"GET list (limit 100) of an owner's {sizes.listed:,} deployments"),
        ("create", create, "POST create (prism_node, Idempotency-Key)"),
    ):
        report = runner.invoke(f"api-{label}", "app", [event])
        status = report["outcomes"][0]["status"]
        if status >= 300:
            raise SystemExit(f"API {label} answered {status}: {report['outcomes'][0]}")
        rows.append(measured("APIHandler", size, report))
    return rows


def measure_sweep(runner: Runner) -> list[Measurement]:
    """SweepNodes with no nodes and the one deployment the create left waiting: not a load
    figure, but what any handler adds to the import by making its AWS clients."""
    report = runner.invoke("sweep-nodes", "sweep_nodes", [scheduled_event("sweep")])
    return [measured("SweepNodes", "0 nodes, 1 deployment waiting for a node", report)]


# --- scenario: cloud upkeep ------------------------------------------------------------------


def seed_running_cloud(owner_id: str, launched: list, health_url: str) -> None:
    """Running image deployments on those pods (probed by CheckCloudHealth, not by an agent),
    their endpoints on the health server. No meter (not billable), so the metering figures
    count exactly the billable deployments asked for."""
    from chalicelib.store.deployments import owner_status_key
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem
    from chalicelib.store.shards import CLOUD_SHARDS, shard_of

    launched_at = datetime.now(UTC) - timedelta(hours=1)
    with DeploymentItem.batch_write() as batch:
        for i, (deployment_id, instance) in enumerate(launched):
            batch.save(
                DeploymentItem(
                    id=deployment_id,
                    owner_id=owner_id,
                    name=f"c{i}",
                    target="runpod",
                    status="running",
                    owner_status=owner_status_key(owner_id, "running"),
                    image="acme/llm:1",
                    gpu_type="A100",
                    deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
                    provider_instance_id=instance.id,
                    launched_at=launched_at,
                    endpoint_url=f"{health_url}/{deployment_id}",
                    healthy=True,
                    cloud=shard_of(deployment_id, CLOUD_SHARDS),
                )
            )


def measure_cloud_upkeep(runner: Runner, sizes: Sizes, runpod, health) -> list[Measurement]:
    import seeding  # beside this script

    from chalicelib.store.users import UserRepository

    owner = UserRepository().create_user_with_key("sizing-cloud").user_id
    launched = seeding.launch_pods(runpod, sizes.cloud, STAGE)
    health_url = f"http://127.0.0.1:{health.server_address[1]}"
    seed_running_cloud(owner, launched, health_url)
    size = f"{sizes.cloud:,} running cloud deployments"

    from chalicelib.config import settings
    from chalicelib.services.cloud_health import HEALTH_CHECKS_PER_MESSAGE

    report = runner.invoke("check-cloud-health", "check_cloud_health", [scheduled_event("chk")])
    rows = [measured("CheckCloudHealth", f"{size} queued for their probes", report)]
    expected = math.ceil(sizes.cloud / HEALTH_CHECKS_PER_MESSAGE)
    batches = take_queue(expected, settings.health_queue, batch_size=1)
    report = runner.invoke("health-worker", "health_worker", batches)
    if health.probes != sizes.cloud or any(o["failed"] for o in report["outcomes"]):
        raise SystemExit(f"HealthWorker probed {health.probes} of {sizes.cloud} endpoints")
    rows.append(
        measured("HealthWorker", f"one message: {HEALTH_CHECKS_PER_MESSAGE} of {size}", report)
    )

    report = runner.invoke("reap-cloud", "reap_cloud", [scheduled_event("reap")])
    if len(runpod.live_pods()) != sizes.cloud:
        raise SystemExit("ReapCloud terminated pods of live deployments")
    rows.append(measured("ReapCloud", f"{size} + their {sizes.cloud:,} pods", report))
    return rows


# --- scenario: metering --------------------------------------------------------------------


def seed_metering(billable: int, stopped: int) -> None:
    """As benchmarks/metering.py (benchmarks/seeding.py)."""
    import seeding  # beside this script

    seeding.billing_deployments(billable, stopped)


def take_queue(expected: int, queue: str, batch_size: int = 10) -> list[dict]:
    """Every message the tick sent, as SQS events of `batch_size` (the trigger's), hidden
    from other receivers for the rest of the run."""
    from chalicelib import aws

    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = attributes["Attributes"]["QueueArn"]
    messages: list[dict] = []
    for _ in range(expected * 3):
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=3600
        ).get("Messages", [])
        messages += got
        if len(messages) >= expected:
            break
    if len(messages) != expected:
        raise SystemExit(f"the tick queued {len(messages)} messages, expected {expected}")
    records = [sqs_record(m, arn) for m in messages]
    return [{"Records": records[i : i + batch_size]} for i in range(0, len(records), batch_size)]


def measure_metering(runner: Runner, sizes: Sizes) -> list[Measurement]:
    from chalicelib.services.metering import ENTRIES_PER_MESSAGE

    started = time.perf_counter()
    seed_metering(sizes.billable, sizes.stopped)
    print(
        f"  seeded {sizes.billable:,} billable + {sizes.stopped:,} stopped deployments in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    size = f"{sizes.billable:,} billable (+{sizes.stopped:,} stopped)"
    report = runner.invoke("meter-tick", "meter_tick", [scheduled_event("tick")])
    rows = [measured("MeterTick", size, report)]

    from chalicelib.config import settings

    batches = take_queue(math.ceil(sizes.billable / ENTRIES_PER_MESSAGE), settings.metering_queue)
    report = runner.invoke("meter-worker", "meter_worker", batches)
    failed = sum(o["failed"] for o in report["outcomes"])
    if failed:
        raise SystemExit(f"MeterWorker: {failed} messages failed")
    first = len(batches[0]["Records"])
    rows.append(measured("MeterWorker", f"one batch: {first} messages x 100 of {size}", report))
    drain = report | {
        "peak_mb": report["all_peak_mb"],
        "duration_s": report["all_s"],
        "cpu_s": report["all_cpu_s"],
    }
    label = f"whole drain: {len(batches)} batches in one warm process"
    rows.append(replace(measured("MeterWorker", label, drain), one_invocation=False))
    return rows


# --- all of them ------------------------------------------------------------------------


def lambda_env(runpod, lam) -> dict[str, str]:
    """The children's environment: moto for AWS (set by run_scenarios), the fakes' keys and
    URLs for the providers, and the Powertools settings .chalice/config.json gives on AWS."""
    return os.environ | {
        "RUNPOD_API_KEY": runpod.api_key,
        "PRISM_RUNPOD_API_URL": runpod.url,
        "PRISM_RUNPOD_ENDPOINT_TEMPLATE": runpod.endpoint_template,
        "LAMBDA_API_KEY": lam.api_key,
        "PRISM_LAMBDA_API_URL": lam.url,
        "PRISM_LAMBDA_ENDPOINT_TEMPLATE": lam.endpoint_template,
        "POWERTOOLS_SERVICE_NAME": "prism",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }


def run_scenarios(runner: Runner, aws_url: str, sizes: Sizes) -> list[Measurement]:
    from prism.dev.awsenv import local_aws_env

    os.environ.update(local_aws_env(aws_url, STAGE))  # before chalicelib reads its settings
    from chalicelib import aws
    from chalicelib.config import settings
    from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
    from prism.dev.fakes.runpod import FakeRunPod
    from prism.dev.infra import create_queues, create_tables

    create_tables(aws.client("dynamodb"), settings)
    create_queues(aws.client("sqs"), settings.stage)
    health = start_health_server()
    rows: list[Measurement] = []
    with FakeRunPod(boot_seconds=0) as runpod, FakeLambdaCloud(boot_seconds=0) as lam:
        runner.env = lambda_env(runpod, lam)
        # Smallest tables first: moto walks a whole table for an index Query.
        scenarios = [
            ("API", lambda: measure_api(runner, sizes) + measure_sweep(runner)),
            ("cloud upkeep", lambda: measure_cloud_upkeep(runner, sizes, runpod, health)),
            ("metering", lambda: measure_metering(runner, sizes)),
        ]
        for name, scenario in scenarios:
            started = time.perf_counter()
            print(f"{name}...", flush=True)
            rows += scenario()
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    health.shutdown()
    return rows
