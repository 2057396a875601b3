"""Randomized fault runs of cloud provisioning against the fake RunPod and Lambda Cloud.

Each run creates a deployment on a random provider with random faults injected (no capacity,
429 with Retry-After, 5xx bursts, terminate failures, an instance that never boots, a model
that never answers its health path) and a random ending (stopped once running, stopped while
provisioning, left to fail), or simulates the control plane dying between launch and recording
the instance (an instance of ours with no deployment record). Everything runs for real: the
state machines on moto's Step Functions interpreter, their Lambda steps in the Chalice app,
the providers over HTTP. After the runs, the reaper runs once, as its schedule would.

Prints: runs, instances launched, instances leaked (goal 0), deployments stuck in a
non-terminal state after the deadline (goal 0), and max |charged - provider bill| at a price
($3,600/h) where one second shows (goal: at most the price of 1 s; a deployment is charged up to
the moment the provider accepted its terminate, which is when the providers stop billing).

    .venv/bin/python benchmarks/provision_faults.py [--runs 200] [--concurrency 20] [--seed 1]
"""

import argparse
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGE = "bench"
os.environ.update(
    AWS_ACCESS_KEY_ID="bench",
    AWS_SECRET_ACCESS_KEY="bench",
    AWS_DEFAULT_REGION="us-east-1",
    PRISM_STAGE=STAGE,
    POWERTOOLS_LOG_LEVEL="CRITICAL",
    POWERTOOLS_METRICS_DISABLED="true",
)
os.environ.pop("PRISM_AWS_ENDPOINT_URL", None)

import logging  # noqa: E402

from chalicelib.lifecycle import Status  # noqa: E402
from chalicelib.logs import metrics  # noqa: E402
from chalicelib.providers import provider_for  # noqa: E402
from chalicelib.providers.base import (  # noqa: E402
    LaunchSpec,
    ProviderError,
    instance_name,
    owned_by_stage,
)
from chalicelib.schemas import CreateDeploymentRequest  # noqa: E402
from chalicelib.services import registry  # noqa: E402
from chalicelib.store.metering import MeteringRepository  # noqa: E402
from chalicelib.store.users import UserRepository  # noqa: E402
from prism.dev.cloud_sandbox import (  # noqa: E402
    PRICE_PER_HOUR,
    cloud_sandbox,
    fake_clouds,
    fast_cloud_settings,
    wait_for_executions,
)
from prism.dev.fakes.runpod import FakeRunPod  # noqa: E402

ENDINGS = ("stop_when_running", "stop_while_provisioning", "never_boots", "never_healthy")
RUN_DEADLINE_S = 90.0
lock = threading.Lock()


def inject_faults(fakes: dict, rng: random.Random) -> None:
    """Bump the fakes' fault counters: the next requests, whoever makes them, hit them."""
    fake = fakes[rng.choice(("runpod", "lambda"))]
    with lock:
        fault = rng.choice(("capacity", "rate_limit", "server_error", "terminate", "none"))
        if fault == "capacity":
            fake.capacity_failures += rng.randint(1, 2)
        elif fault == "rate_limit":
            fake.rate_limit_next += rng.randint(1, 2)
            fake.retry_after_s = 1
        elif fault == "server_error":
            fake.server_error_next += rng.randint(1, 3)
        elif fault == "terminate":
            fake.terminate_failures += rng.randint(1, 3)


def one_run(index: int, owner_id: str, fakes: dict, seed: int) -> dict:
    rng = random.Random(seed * 100_003 + index)
    if rng.random() < 0.05:
        return orphan_run(index, fakes, rng)
    target = rng.choice(("runpod", "lambda"))
    inject_faults(fakes, rng)
    service = registry.deployment_service()
    request = CreateDeploymentRequest(
        name=f"run-{index}",
        target=target,
        image="acme/llm:1",
        gpu_type="A100" if target == "runpod" else rng.choice(("A100", "H100")),
        budget_max_usd=10_000,  # never reached in a run at PRICE_PER_HOUR
    )
    item = service.create(owner_id, request, None).item
    ending = rng.choice(ENDINGS)
    name = instance_name(item.id, STAGE)
    if ending == "never_boots":
        fakes[target].never_boot.add(name)
    started = time.monotonic()
    if ending == "stop_while_provisioning":
        time.sleep(rng.uniform(0, 2))
        service.stop(owner_id, item.id)
    elif ending == "never_healthy":
        mark_unhealthy_when_launched(fakes[target], name, started)
    if ending in ("stop_when_running", "never_healthy"):
        # never_healthy: if faults delayed the launch past our marking, it comes up healthy.
        status = wait_for(item.id, {Status.RUNNING} | TERMINAL_STATUSES, started)
        if status == Status.RUNNING:
            service.stop(owner_id, item.id)
    final = wait_for(item.id, TERMINAL_STATUSES, started)
    return {"deployment_id": item.id, "target": target, "ending": ending, "final": final}


def mark_unhealthy_when_launched(fake, name: str, started: float) -> None:
    repo = registry.cloud()._deployments
    while time.monotonic() - started < RUN_DEADLINE_S:
        for instance_id, record in list(instances_of(fake).items()):
            if record["name"] == name:
                fake.unhealthy.add(instance_id)
                return
        if Status(repo.get(owned_by_stage(name, STAGE)).status).is_terminal():
            return  # it failed before launching anything
        time.sleep(0.05)


def orphan_run(index: int, fakes: dict, rng: random.Random) -> dict:
    """The control plane launched an instance and died before recording it."""
    target = rng.choice(("runpod", "lambda"))
    provider = provider_for(target, registry.settings.cloud)
    spec = LaunchSpec(f"dep_{index:016x}", "acme/llm:1", 8000, stage=STAGE)
    for _ in range(20):  # the injected faults hit this launch too
        try:
            provider.launch(spec, provider.offers("A100")[0])
            break
        except ProviderError:
            time.sleep(0.5)
    return {"deployment_id": None, "target": target, "ending": "orphan", "final": None}


TERMINAL_STATUSES = {Status.STOPPED, Status.FAILED}


def wait_for(deployment_id: str, wanted: set, started: float) -> Status | None:
    repo = registry.cloud()._deployments
    while time.monotonic() - started < RUN_DEADLINE_S:
        status = Status(repo.get(deployment_id).status)
        if status in wanted:
            return status
        time.sleep(0.25)
    return None


def deployment_named(repo, name: str):
    deployment_id = owned_by_stage(name, STAGE)
    return repo.get(deployment_id) if deployment_id else None


def instances_of(fake) -> dict:
    return fake.pods if isinstance(fake, FakeRunPod) else fake.instances


def live_of(fake) -> list[dict]:
    return fake.live_pods() if isinstance(fake, FakeRunPod) else fake.live_instances()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # moto logs every Fail state it runs
    metrics.flush_metrics = lambda *_, **__: metrics.clear_metrics()  # no EMF flood on stdout
    with fake_clouds(boot_seconds=0.3, price_per_hour=PRICE_PER_HOUR) as fakes:
        runpod, lam = fakes["runpod"], fakes["lambda"]
        cloud = fast_cloud_settings(runpod, lam, reaper_grace_seconds=0)
        with cloud_sandbox(cloud):
            owner = UserRepository().create_user_with_key("bench").user_id
            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                runs = list(
                    pool.map(lambda i: one_run(i, owner, fakes, args.seed), range(args.runs))
                )
            wait_for_executions()
            reaped = registry.cloud_upkeep().reap()  # its 5-minute schedule, once
            report(runs, fakes, reaped, time.monotonic() - started)


def report(runs: list[dict], fakes: dict, reaped, seconds: float) -> None:
    repo = registry.cloud()._deployments
    launched = sum(len(instances_of(f)) for f in fakes.values())
    deployments = {r["deployment_id"]: r for r in runs if r["deployment_id"]}
    stuck = [d for d in deployments if not Status(repo.get(d).status).is_terminal()]
    leaked = []
    worst, worst_run, unrecorded = Decimal(0), None, Decimal(0)
    for fake in fakes.values():
        for record in live_of(fake):
            item = deployment_named(repo, record["name"])
            if item is None or Status(item.status).is_terminal():
                leaked.append(record["id"])
        for instance_id, record in instances_of(fake).items():
            item = deployment_named(repo, record["name"])
            if item is None or not Status(item.status).is_terminal():
                continue  # an orphan (nobody is charged), or still running (charged by ticks)
            if item.provider_instance_id != instance_id:
                unrecorded += fake.bill(instance_id)  # a second launch, reaped: nobody's charge
                continue
            meter = MeteringRepository().meter(item.id)  # a recorded instance has one
            gap = abs(meter.cost_accrued_usd - fake.bill(instance_id))
            if gap > worst:
                worst, worst_run = gap, deployments.get(item.id, {}).get("ending")
    endings = {}
    for run in runs:
        key = (run["ending"], str(run["final"]))
        endings[key] = endings.get(key, 0) + 1
    print(f"runs                 {len(runs)} in {seconds:.0f} s")
    for (ending, final), count in sorted(endings.items()):
        print(f"  {ending:24} -> {final:8} {count}")
    print(f"instances launched   {launched}")
    print(f"orphans reaped       {len(reaped.terminated)}")
    print(f"instances leaked     {len(leaked)} (goal 0)")
    print(f"deployments stuck    {len(stuck)} (goal 0)")
    for deployment_id in stuck:
        item = repo.get(deployment_id)
        print(
            f"  {deployment_id} {item.status} since {item.updated_at:%H:%M:%S}: "
            f"{item.status_message} / {item.failure_message} (instance {item.provider_instance_id})"
        )
    one_second = Decimal(PRICE_PER_HOUR) / 3600
    print(
        f"max |charged - bill| ${worst:.6f} at ${PRICE_PER_HOUR:,}/h "
        f"(goal <= ${one_second:.2f}, the price of 1 s; worst: a {worst_run} run)"
    )
    print(f"billed for instances no deployment recorded (reaped): ${unrecorded:.2f}")


if __name__ == "__main__":
    main()
