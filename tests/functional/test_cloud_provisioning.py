"""Cloud deployments end to end on moto: the real state machines (infra/statemachines) run by
moto's Step Functions interpreter, their Lambda tasks routed to the Chalice app, against fake
RunPod and Lambda Cloud servers speaking the real wire formats. After every scenario: no
instance left at the provider without a live deployment, and the USD charged matches the
provider's own bill to the cent."""

from datetime import timedelta

import pytest

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.lifecycle import Status
from chalicelib.services import registry
from tests.cloud_sandbox import (
    DEPLOYMENTS,
    TERMINAL,
    assert_nothing_leaked_and_billed_exactly,
    create,
    detail,
    reaches,
)

pytestmark = pytest.mark.clouds("plain")


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


def test_an_image_on_a_cloud_instance_has_no_logs_and_says_why(api, fakes):
    deployment_id = create(api, "runpod")
    reaches(api, deployment_id, {"running"})
    response = api.get(f"{DEPLOYMENTS}/{deployment_id}/logs")
    assert response.status_code == 409
    assert "without our node agent" in response.data["error"]["message"]
    assert api.delete(f"{DEPLOYMENTS}/{deployment_id}").status_code == 202
    reaches(api, deployment_id, TERMINAL)


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
    assert failed["failure_message"].endswith("(last probe: HTTP 500)")  # what it answered
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


@pytest.mark.parametrize("target", ["runpod", "lambda"])
def test_a_stop_between_launch_and_record_is_charged_as_the_provider_bills(
    api, fakes, target, monkeypatch
):
    """The user stops it after the provider made the instance but before the control plane
    recorded it: the instance is terminated at once and its seconds are charged, launch call
    to accepted terminate, as the provider bills them (not left free, nor running)."""
    from chalicelib.store.deployments import DeploymentRepository

    record = DeploymentRepository.record_instance

    def stopped_first(self, item, *args, **kwargs):
        assert api.delete(f"{DEPLOYMENTS}/{item.id}").status_code == 202
        return record(self, item, *args, **kwargs)

    monkeypatch.setattr(DeploymentRepository, "record_instance", stopped_first)
    deployment_id = create(api, target)
    assert reaches(api, deployment_id, TERMINAL)["status"] == "stopped"
    assert_nothing_leaked_and_billed_exactly(fakes[target], api, [deployment_id])  # waits
    assert fakes[target].total_bill() > 0 and detail(api, deployment_id)["cost_accrued_usd"] > 0


def test_the_reaper_terminates_an_instance_the_control_plane_never_recorded(api, fakes):
    """The control plane died between launch and recording the instance."""
    from chalicelib.providers import provider_for
    from chalicelib.providers.base import LaunchSpec

    provider = provider_for("runpod", registry.settings.cloud)
    offer = provider.offers("A100")[0]
    spec = LaunchSpec("dep_" + "f" * 16, "acme/llm:1", 8000, stage=settings.stage)
    orphan = provider.launch(spec, offer)
    registry.cloud_upkeep().reap()
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


def test_a_budget_stop_tears_the_instance_down_and_ends_budget_exceeded(api, fakes):
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    registry.deployment_service().stop_for_budget(deployment_id, "budget $50 reached")
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "budget_exceeded")
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_running_cloud_deployments_turn_unhealthy_after_three_failed_probes(api, fakes):
    deployment_id = create(api, "lambda")
    reaches(api, deployment_id, {"running"})
    (instance_id,) = [i["id"] for i in fakes["lambda"].live_instances()]
    fakes["lambda"].unhealthy.add(instance_id)
    for expected in ("running", "running", "unhealthy"):
        registry.cloud_health().check_all()
        assert detail(api, deployment_id)["status"] == expected
    fakes["lambda"].unhealthy.discard(instance_id)
    registry.cloud_health().check_all()
    recovered = detail(api, deployment_id)
    assert recovered["status"] == "running"
    last_probe = recovered["last_probe"]
    assert last_probe["healthy"] and last_probe["consecutive_failures"] == 0
    assert 0 < last_probe["latency_ms"] < 5000  # measured, within the probe's timeout
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["lambda"], api, [deployment_id])


def test_the_reaper_terminates_the_instance_of_a_deployment_that_is_over(api, fakes):
    """Termination was never confirmed (say the provider lost the request): the instance of a
    finished deployment is found by its name and terminated."""
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    repo = registry.cloud()._deployments
    item = repo.get(deployment_id)
    repo.transition(item, Status.STOPPING)  # as if torn down by hand, unconfirmed
    repo.transition(repo.get(deployment_id), Status.STOPPED)
    assert fakes["runpod"].live_pods()
    report = registry.cloud_upkeep().reap()
    assert report.terminated and not fakes["runpod"].live_pods()


def test_the_reaper_leaves_other_installations_instances_alone(api, fakes):
    """Two stages sharing a provider account: names carry the stage."""
    from chalicelib.providers import provider_for
    from chalicelib.providers.base import LaunchSpec

    provider = provider_for("runpod", registry.settings.cloud)
    spec = LaunchSpec("dep_" + "e" * 16, "acme/llm:1", 8000, stage="prod")
    theirs = provider.launch(spec, provider.offers("A100")[0])
    registry.cloud_upkeep().reap()
    assert theirs.id in {p["id"] for p in fakes["runpod"].live_pods()}
    provider.terminate(theirs.id)


def test_an_instance_the_provider_ends_while_running_fails_the_deployment(api, fakes):
    deployment_id = create(api)
    reaches(api, deployment_id, {"running"})
    (pod_id,) = [p["id"] for p in fakes["runpod"].live_pods()]
    registry.providers.provider_for("runpod", registry.settings.cloud).terminate(pod_id)
    registry.cloud_health().check_all()
    failed = reaches(api, deployment_id, TERMINAL)
    assert (failed["status"], failed["failure_reason"]) == ("failed", "crash")
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_a_provision_that_never_started_is_started_by_the_reaper(api, fakes):
    """Step Functions was unreachable at create: the deployment waits, then the reaper starts
    its provisioning (not 30 minutes of nothing and a vague failure)."""
    workflows = registry.workflows()
    workflows.start_provision = lambda deployment_id: 1 / 0  # the start fails
    deployment_id = create(api)
    del workflows.start_provision
    item = registry.cloud()._deployments.get(deployment_id)
    # Older than a workflow may take to show up, within the provisioning deadline (8 s here).
    earlier = item.updated_at - timedelta(seconds=5)
    item.update(actions=[type(item).updated_at.set(earlier)])
    report = registry.cloud_upkeep().reap()
    assert report.restarted_provisions == [deployment_id]
    reaches(api, deployment_id, {"running"})
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_an_instance_launched_just_before_the_control_plane_died_is_billed_from_its_launch(
    api, fakes
):
    """The provider created the pod, then the launch died before recording it: the retried
    launch adopts the pod by name and bills it from the first request to the provider (the
    time it was down is charged, not lost)."""
    from chalicelib.providers.base import TransientError

    repository = registry.cloud()._deployments
    record_instance = repository.record_instance
    calls = []

    def dies_the_first_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("the control plane died here")
        return record_instance(*args, **kwargs)

    repository.record_instance = dies_the_first_time
    try:
        deployment_id = create(api)
        reaches(api, deployment_id, {"running"})
    finally:
        repository.record_instance = record_instance
    (pod,) = fakes["runpod"].live_pods()
    item = repository.get(deployment_id)
    assert len(calls) == 2  # adopted by the retry, not launched twice
    assert item.launch_requested_at == item.launched_at
    assert 0 <= pod["created_at"] - item.launched_at.timestamp() < 1.0  # from its launch...
    api.delete(f"{DEPLOYMENTS}/{deployment_id}")
    reaches(api, deployment_id, TERMINAL)
    assert_nothing_leaked_and_billed_exactly(fakes["runpod"], api, [deployment_id])


def test_health_checks_fan_out_over_the_queue_one_message_per_worker(api, fakes, client):
    """The minute tick queues the running deployments' ids, HEALTH_CHECKS_PER_MESSAGE to a
    message; each message is one worker invocation probing its deployments at once."""
    from chalicelib import aws
    from chalicelib.services.cloud_health import HEALTH_CHECKS_PER_MESSAGE

    running = [create(api, "lambda", name=f"m{i}") for i in range(HEALTH_CHECKS_PER_MESSAGE + 2)]
    for deployment_id in running:
        reaches(api, deployment_id, {"running"})
    unhealthy = fakes["lambda"].live_instances()[0]["id"]
    fakes["lambda"].unhealthy.add(unhealthy)
    sqs = aws.client("sqs")
    url = sqs.get_queue_url(QueueName=registry.settings.health_queue)["QueueUrl"]
    repository = registry.cloud()._deployments

    def checked(deployment_id):
        return repository.get(deployment_id).health_checked_at

    checked_before = {d: checked(d) for d in running}
    for _ in range(3):  # three minutes: three failed probes make it unhealthy
        assert registry.cloud_health().enqueue() == len(running)
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert len(messages) == 2  # 12 deployments: 10 + 2
        for message in messages:
            event = client.events.generate_sqs_event(message_bodies=[message["Body"]])
            answer = client.lambda_.invoke("health_worker", event).payload
            assert answer == {"batchItemFailures": []}
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    assert all(checked(d) != checked_before[d] for d in running)  # every one probed
    statuses = [detail(api, d)["status"] for d in running]
    assert statuses.count("unhealthy") == 1 and statuses.count("running") == len(running) - 1
