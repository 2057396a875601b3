"""What the cloud steps share about an instance: whether it runs our node agent, what a launch
asks the provider for, when a provider call took effect, how long a probe of its endpoint may
take."""

import shlex
import time
from collections.abc import Callable
from datetime import datetime

from chalicelib.providers.base import Instance, LaunchSpec, RateLimited
from chalicelib.services.node_bootstrap import AgentBootstrap
from chalicelib.store.models import DeploymentItem

SHORT_RETRY_AFTER_S = 10.0  # a 429 asking for less than this is waited out inside the step
PROBE_TIMEOUT_S = 5.0  # an image's endpoint, probed over the internet by the control plane


def midpoint(started: datetime, returned: datetime) -> datetime:
    """When a provider call took effect, best guessed: between its start and its answer."""
    return started + (returned - started) / 2


def with_short_rate_limit(launch: Callable[[], Instance]) -> Instance:
    """A 429 asking for a short wait is waited out here; longer ones go back to the state
    machine's Retry with backoff."""
    try:
        return launch()
    except RateLimited as exc:
        if exc.retry_after_s is None or exc.retry_after_s > SHORT_RETRY_AFTER_S:
            raise
        time.sleep(exc.retry_after_s)
        return launch()


def runs_agent(item: DeploymentItem) -> bool:
    """Weights and command deployments run on our node agent on the instance; image
    deployments run their image directly."""
    return not item.image


def launch_spec(
    item: DeploymentItem,
    stage: str,
    bootstrap: AgentBootstrap | None = None,
    env: dict[str, str] | None = None,
) -> LaunchSpec:
    """`env`: an image deployment's env vars (opened from the secrets table)."""
    port = int(item.deploy_config.port)
    if bootstrap is not None:  # the deployment's own env goes to its model over the protocol
        image, env, user_data = bootstrap.image, bootstrap.env(), bootstrap.cloud_init()
    else:
        image, env, user_data = item.image, dict(env or {}), None
        if item.target == "lambda":
            user_data = _docker_user_data(item.image, port, env)
    return LaunchSpec(
        deployment_id=item.id,
        image=image,
        port=port,
        env=env,
        user_data=user_data if item.target == "lambda" else None,
        stage=stage,
    )


def _docker_user_data(image: str, port: int, env: dict[str, str]) -> str:
    """cloud-init for a Lambda VM (Docker and the NVIDIA toolkit come installed): run the
    image with every GPU and the port published."""
    env_args = " ".join(f"-e {shlex.quote(f'{k}={v}')}" for k, v in sorted(env.items()))
    return (
        "#!/bin/bash\nset -euo pipefail\n"
        f"docker run -d --restart unless-stopped --gpus all -p {port}:{port} "
        f"-e PORT={port} {env_args} {shlex.quote(image)}\n"
    )
