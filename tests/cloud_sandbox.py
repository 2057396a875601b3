"""The cloud functional tests' sandbox (prism/dev/cloud_sandbox.py) and their helpers: the
played-agent variant, creating, reading and waiting for cloud deployments, and the check that
nothing leaked and the charges match the provider's bill."""

import time
from contextlib import contextmanager
from decimal import Decimal

from chalicelib.config import settings
from chalicelib.providers.base import instance_name
from prism.dev.cloud_sandbox import (  # noqa: F401 (the tests' imports)
    BILLING_TOLERANCE,
    PRICE_PER_HOUR,
    cloud_sandbox,
    fake_clouds,
    fast_cloud_settings,
    wait_for_executions,
)
from prism.dev.fakes.runpod import FakeRunPod

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


# --- helpers for tests driving cloud deployments through the API ---------------------------

DEPLOYMENTS = "/api/v1/compute/deployments"
TERMINAL = {"stopped", "failed"}


def create(api, target="runpod", **body):
    request = {"name": "m", "target": target, "image": "acme/llm:1", "gpu_type": "A100"}
    request["budget_max_usd"] = 5000  # minutes at PRICE_PER_HOUR
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
    billed = fake.total_bill()
    assert abs(charged - billed) <= BILLING_TOLERANCE * len(deployment_ids), (
        charged,
        billed,
    )
