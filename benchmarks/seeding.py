"""What the benchmarks share: a moto server, and the data they load (benchmarks import this,
never the tests)."""

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from prism.dev.processes import free_port  # the repository is on sys.path: see its callers

REPO = Path(__file__).resolve().parents[1]


def start_moto(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m prism.dev.moto_server` on a free port, once it answers: (process, its URL)."""
    import requests

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "prism.dev.moto_server", "-p", str(port)],
        cwd=REPO,
        env=env,
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


def image_deployment(owner_id: str, name: str, status: str):
    """A prism_node deployment of an image, as the API and sizing benchmarks list them."""
    from chalicelib.services.deployments import new_deployment_id
    from chalicelib.store.deployments import owner_status_key
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem

    return DeploymentItem(
        id=new_deployment_id(),
        owner_id=owner_id,
        name=name,
        target="prism_node",
        status=status,
        owner_status=owner_status_key(owner_id, status),
        image="nginx:1.27",
        deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
    )


def billing_deployments(billable: int, stopped: int) -> list[str]:
    """`billable` running cloud deployments, each with its meter last metered a minute ago (as
    billing starts: see DeploymentRepository.record_instance), and `stopped` ones (no meter)
    that only make the deployments table bigger. Returns the billable ones' ids."""
    from chalicelib.store.deployments import billing_shard
    from chalicelib.store.meter_models import MeterItem
    from chalicelib.store.models import DeployConfigAttribute, DeploymentItem

    start = datetime.now(UTC) - timedelta(minutes=1)
    billable_ids = []
    with DeploymentItem.batch_write() as batch, MeterItem.batch_write() as meters:
        for i in range(billable + stopped):
            is_billable = i < billable
            item = DeploymentItem(
                id=f"dep_{i:016x}",
                owner_id="usr_bench",
                name=f"m{i}",
                target="runpod",
                status="running" if is_billable else "stopped",
                owner_status="usr_bench#x",
                image="acme/llm:1",
                budget_max_usd=1000,
                deploy_config=DeployConfigAttribute(port=8000, health_path="/health"),
            )
            batch.save(item)
            if is_billable:
                meters.save(
                    MeterItem(
                        deployment_id=item.id,
                        billable=billing_shard(item.id),
                        price_per_hour_usd=Decimal("3.6"),
                        budget_max_usd=item.budget_max_usd,
                        last_metered_at=start,
                        ledger_tail=[],
                    )
                )
                billable_ids.append(item.id)
    return billable_ids


def launch_pods(runpod, total: int, stage: str) -> list[tuple[str, object]]:
    """(deployment id, Instance) for `total` pods launched through the real provider code on
    the fake RunPod, named as the control plane of `stage` names them."""
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.providers.base import LaunchSpec
    from chalicelib.providers.runpod import RunPodProvider
    from chalicelib.services.deployments import new_deployment_id

    provider = RunPodProvider(runpod.api_key, runpod.url, runpod.endpoint_template)
    offer = provider.offers("A100")[0]

    def launch(_):
        deployment_id = new_deployment_id()
        spec = LaunchSpec(deployment_id, "acme/llm:1", 8000, stage=stage)
        return deployment_id, provider.launch(spec, offer)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(launch, range(total)))
