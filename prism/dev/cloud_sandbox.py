"""AWS on moto in-process with Step Functions really executing infra/statemachines, the Lambda
tasks routed to the Chalice app, and the cloud settings pointed at fake providers with short
waits. Used by the cloud functional tests (tests/cloud_sandbox.py adds their helpers) and
benchmarks/provision_faults.py."""

import dataclasses
import time
from contextlib import contextmanager
from decimal import Decimal

from moto import mock_aws

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from prism.dev.fakes.lambda_catalog import priced_instance_types
from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
from prism.dev.fakes.runpod import FakeRunPod, priced_gpu_types
from prism.dev.infra import create_queues, create_state_machines, create_tables
from prism.dev.lambda_router import SFN_CONFIG, route_lambda_to_app
from prism.dev.moto_server import make_dynamodb_writes_atomic, make_transactions_cheap

# Every GPU at $3,600/h, $1 a second: a second more or less charged than the provider bills
# shows in the cost, which at a real price would round away.
PRICE_PER_HOUR = 3600
BILLING_TOLERANCE = Decimal(PRICE_PER_HOUR) / 3600  # the price of 1 s, per deployment


@contextmanager
def fake_clouds(boot_seconds=0.3, price_per_hour=PRICE_PER_HOUR):
    """Fake RunPod and Lambda Cloud on 127.0.0.1, by provider name."""
    with (
        FakeRunPod(boot_seconds=boot_seconds, gpu_types=priced_gpu_types(price_per_hour)) as runpod,
        FakeLambdaCloud(
            boot_seconds=boot_seconds, instance_types=priced_instance_types(price_per_hour)
        ) as lam,
    ):
        yield {"runpod": runpod, "lambda": lam}


def fast_cloud_settings(runpod, lam, **overrides):
    return dataclasses.replace(
        settings.cloud,
        poll_seconds=1,
        terminate_retry_seconds=1,
        health_grace_seconds=4,
        boot_deadline_seconds={"runpod": 4, "lambda": 4},
        workflow_lost_seconds=2,
        api_keys={"runpod": runpod.api_key, "lambda": lam.api_key},
        runpod_api_url=runpod.url,
        runpod_endpoint_template=runpod.endpoint_template,
        lambda_api_url=lam.url,
        lambda_endpoint_template=lam.endpoint_template,
        **overrides,
    )


@contextmanager
def cloud_sandbox(cloud_settings):
    """`registry.settings` is swapped for the duration (restore it with monkeypatch in tests,
    or let the process end)."""
    make_dynamodb_writes_atomic()
    make_transactions_cheap()
    registry.settings = dataclasses.replace(settings, cloud=cloud_settings)
    with mock_aws(config=SFN_CONFIG):
        registry.reset()
        create_tables(aws.client("dynamodb"), settings)
        create_queues(aws.client("sqs"), settings.stage)
        create_state_machines(
            aws.client("stepfunctions"), aws.client("lambda"), aws.client("iam"), settings.stage
        )
        from app import app

        route_lambda_to_app(app, settings.stage)
        CatalogService(ResourceRepository()).seed()
        try:
            yield app
        finally:
            wait_for_executions()
            registry.reset()


def wait_for_executions(timeout=60.0) -> bool:
    """True when no execution is running any more."""
    sfn = aws.client("stepfunctions")
    deadline = time.monotonic() + timeout
    for machine in sfn.list_state_machines()["stateMachines"]:
        arn = machine["stateMachineArn"]
        while sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    return True
