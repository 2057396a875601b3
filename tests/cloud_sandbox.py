"""AWS on moto in-process with Step Functions really executing infra/statemachines, the Lambda
tasks routed to the Chalice app, and the cloud settings pointed at fake providers with short
waits. Shared by the cloud functional tests and benchmarks/provision_faults.py."""

import dataclasses
import time
from contextlib import contextmanager
from decimal import Decimal

from moto import mock_aws

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.providers.base import instance_name
from chalicelib.services import registry
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
from prism.dev.fakes.runpod import FakeRunPod
from prism.dev.infra import create_queues, create_state_machines, create_tables
from prism.dev.lambda_router import SFN_CONFIG, route_lambda_to_app
from prism.dev.moto_server import make_dynamodb_writes_atomic, make_transactions_cheap


@contextmanager
def fake_clouds(boot_seconds=0.3):
    """Fake RunPod and Lambda Cloud on 127.0.0.1, by provider name."""
    with (
        FakeRunPod(boot_seconds=boot_seconds) as runpod,
        FakeLambdaCloud(boot_seconds=boot_seconds) as lam,
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


# Cloud deployments that run our agent on the instance, with the test playing that agent
# (tests/functional/node_sim.py): not the fakes' agent image, so nothing else answers.
AGENT_IMAGE = "example/played-agent:1"
PUBLIC_WS = "wss://ws.prism.example/api"


@contextmanager
def agent_cloud_sandbox(fakes):
    """cloud_sandbox for deployments whose instance runs the (played) node agent."""
    cloud = fast_cloud_settings(
        fakes["runpod"],
        fakes["lambda"],
        node_agent_image=AGENT_IMAGE,
        public_ws_url=PUBLIC_WS,
        agent_start_seconds=30,
    )
    with cloud_sandbox(cloud) as app:
        yield app


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


# --- helpers for tests driving cloud deployments through the API ---------------------------

DEPLOYMENTS = "/api/v1/compute/deployments"
TERMINAL = {"stopped", "failed"}


def create(api, target="runpod", **body):
    request = {"name": "m", "target": target, "image": "acme/llm:1", "gpu_type": "A100"}
    request["budget_max_usd"] = 50
    response = api.post(DEPLOYMENTS, request | body)
    assert response.status_code == 201, response.data
    return response.data["id"]


def detail(api, deployment_id):
    return api.get(f"{DEPLOYMENTS}/{deployment_id}").data


def reaches(api, deployment_id, wanted, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = detail(api, deployment_id)
        if current["status"] in wanted:
            return current
        time.sleep(0.2)
    raise AssertionError(f"{deployment_id} never reached {wanted}: {current}")


def assert_nothing_leaked_and_billed_exactly(fake, api, deployment_ids):
    wait_for_executions()
    live = fake.live_pods() if isinstance(fake, FakeRunPod) else fake.live_instances()
    live_names = {i["name"] for i in live}
    for deployment_id in deployment_ids:
        current = detail(api, deployment_id)
        if current["status"] in TERMINAL:
            name = instance_name(deployment_id, settings.stage)
            assert name not in live_names, f"{deployment_id} leaked"
    charged = sum(Decimal(str(detail(api, d)["cost_accrued_usd"])) for d in deployment_ids)
    assert abs(charged - fake.total_bill()) < Decimal("0.01"), (charged, fake.total_bill())
