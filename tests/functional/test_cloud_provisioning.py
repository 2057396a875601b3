"""Cloud deployments end to end on moto: the real state machines (infra/statemachines) run by
moto's Step Functions interpreter, their Lambda tasks routed to the Chalice app, against fake
RunPod and Lambda Cloud servers speaking the real wire formats. After every scenario: no
instance left at the provider without a live deployment, and the USD charged matches the
provider's own bill to the cent."""

import dataclasses
import time
from decimal import Decimal

import pytest
from moto import mock_aws

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services import registry
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from prism.dev.fakes.lambda_cloud import FakeLambdaCloud
from prism.dev.fakes.runpod import FakeRunPod
from prism.dev.infra import create_queues, create_state_machines, create_tables
from prism.dev.lambda_router import SFN_CONFIG, route_lambda_to_app

DEPLOYMENTS = "/api/v1/compute/deployments"
TERMINAL = {"stopped", "failed"}


@pytest.fixture
def fakes():
    with FakeRunPod(boot_seconds=0.3) as runpod, FakeLambdaCloud(boot_seconds=0.3) as lam:
        yield {"runpod": runpod, "lambda": lam}


@pytest.fixture
def aws_backend(fakes, monkeypatch):
    """Overrides the functional conftest's backend: Step Functions really executes."""
    cloud = dataclasses.replace(
        settings.cloud,
        poll_seconds=1,
        terminate_retry_seconds=1,
        health_grace_seconds=4,
        boot_deadline_seconds={"runpod": 4, "lambda": 4},
        api_keys={"runpod": fakes["runpod"].api_key, "lambda": fakes["lambda"].api_key},
        runpod_api_url=fakes["runpod"].url,
        runpod_endpoint_template=fakes["runpod"].endpoint_template,
        lambda_api_url=fakes["lambda"].url,
        lambda_endpoint_template=fakes["lambda"].endpoint_template,
    )
    monkeypatch.setattr(registry, "settings", dataclasses.replace(settings, cloud=cloud))
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
        yield
        _wait_for_executions()
        registry.reset()


def _wait_for_executions(timeout=30.0):
    sfn = aws.client("stepfunctions")
    deadline = time.monotonic() + timeout
    for machine in sfn.list_state_machines()["stateMachines"]:
        arn = machine["stateMachineArn"]
        while (
            time.monotonic() < deadline
            and sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]
        ):
            time.sleep(0.2)


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
    _wait_for_executions()
    live = fake.live_pods() if isinstance(fake, FakeRunPod) else fake.live_instances()
    live_names = {i["name"] for i in live}
    for deployment_id in deployment_ids:
        current = detail(api, deployment_id)
        if current["status"] in TERMINAL:
            assert f"prism-{deployment_id}" not in live_names, f"{deployment_id} leaked"
    charged = sum(Decimal(str(detail(api, d)["cost_accrued_usd"])) for d in deployment_ids)
    assert abs(charged - fake.total_bill()) < Decimal("0.01"), (charged, fake.total_bill())


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_happy_path_to_running_and_back_to_stopped(api, fakes, target):
    deployment_id = create(api, target)
    running = reaches(api, deployment_id, {"running"})
    assert running["endpoint_url"].startswith(fakes[target].base_url)
    assert running["price_per_hour_usd"] > 0
    assert api.delete(f"{DEPLOYMENTS}/{deployment_id}").status_code == 202
    stopped = reaches(api, deployment_id, TERMINAL)
    assert stopped["status"] == "stopped" and stopped["cost_accrued_usd"] > 0
    assert_nothing_leaked_and_billed_exactly(fakes[target], api, [deployment_id])


def test_no_capacity_on_one_offer_moves_to_the_next(api, fakes):
    from chalicelib.providers import provider_for

    cheapest = provider_for("runpod", registry.settings.cloud).offers("A100")[0].gpu_type
    fakes["runpod"].capacity_gpu_types.add(cheapest)
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    launched = [p["gpuTypeId"] for p in fakes["runpod"].pods.values()]
    assert launched and cheapest not in launched
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_no_capacity_anywhere_fails_with_the_offers_tried(api, fakes):
    fakes["lambda"].capacity_failures = 99
    deployment_id = create(api, "lambda")
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "provision_error")
    assert "no A100 capacity at lambda (tried" in failed["failure_message"]
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_a_429_with_retry_after_is_waited_out(api, fakes):
    fakes["runpod"].rate_limit_next, fakes["runpod"].retry_after_s = 2, 1
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_bursts_of_5xx_are_retried(api, fakes):
    fakes["lambda"].server_error_next = 3
    deployment_id = create(api, "lambda")
    reaches(api, deployment_id, {"running"})
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_an_instance_that_never_boots_is_terminated_at_its_deadline(api, fakes):
    fakes["runpod"].never_boot.add("*")
    deployment_id = create(api)
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "provision_error")
    assert "boot deadline" in failed["failure_message"]
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_a_model_that_never_answers_its_health_path_fails_after_the_grace(api, fakes):
    fakes["lambda"].unhealthy.add("*")
    deployment_id = create(api, "lambda")
    failed = reaches(api, deployment_id, TERMINAL)
    assert failed["failure_reason"] == "provision_error"
    assert "did not answer within" in failed["failure_message"]
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_terminate_failing_transiently_is_retried_until_confirmed(api, fakes):
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    fakes["runpod"].terminate_failures = 3
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    assert reaches(api, deployment_id, TERMINAL)["status"] == "stopped"
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_delete_while_provisioning_leaves_nothing_behind(api, fakes):
    deployment_id = create(api, "lambda")
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    assert reaches(api, deployment_id, TERMINAL)["status"] == "stopped"
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_the_reaper_terminates_an_instance_the_control_plane_never_recorded(api, fakes):
    """The control plane died between launch and recording the instance."""
    from chalicelib.providers import provider_for
    from chalicelib.providers.base import LaunchSpec

    provider = provider_for("runpod", registry.settings.cloud)
    offer = provider.offers("A100")[0]
    orphan = provider.launch(LaunchSpec("dep_" + "f" * 16, "acme/llm:1", 8000), offer)
    registry.cloud().reap()
    assert orphan.id not in {p["id"] for p in fakes["runpod"].live_pods()}


def test_the_state_machines_on_moto_are_the_infra_files(api):
    """Local runs exactly what is deployed: the definitions come from infra/statemachines."""
    import json

    from prism.dev.infra import STATE_MACHINES

    sfn = aws.client("stepfunctions")
    for machine in sfn.list_state_machines()["stateMachines"]:
        kind = machine["name"].removeprefix(f"prism-{settings.stage}-")
        deployed = json.loads(
            sfn.describe_state_machine(stateMachineArn=machine["stateMachineArn"])["definition"]
        )
        source = json.loads((STATE_MACHINES / f"{kind}.asl.json").read_text())
        assert deployed.keys() == source.keys()
        assert deployed["States"].keys() == source["States"].keys()
