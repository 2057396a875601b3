"""Settings read once from the environment into a frozen object.

On AWS the stage's `.chalice/config.json` sets the table names; locally `prism dev up` adds
`PRISM_AWS_ENDPOINT_URL` so every client (boto3 and pynamodb) talks to the moto server.
"""

import os
from dataclasses import dataclass

# Built from infra/node-agent/Dockerfile; the tag is the agent version (node_agent.__version__).
DEFAULT_NODE_AGENT_IMAGE = "ghcr.io/prism-deployments/node-agent:0.1.0"


@dataclass(frozen=True)
class CloudSettings:
    """Cloud GPU provisioning: where the providers are, their keys, and the workflow clock."""

    stage: str
    provision_state_machine_arn: str
    teardown_state_machine_arn: str
    poll_seconds: int  # between provider status polls and health checks while provisioning
    boot_deadline_seconds: dict  # provider -> give up on an instance that is not up by then
    health_grace_seconds: int  # an up instance must answer its health path within this
    terminate_retry_seconds: int  # teardown retries terminate this often...
    terminate_give_up_seconds: int  # ...for this long, then flags the instance for the reaper
    reaper_grace_seconds: int  # an instance of ours with no live deployment older than this goes
    # A deployment coming up this long with no provision execution running gets a new one.
    workflow_lost_seconds: int
    max_offers: int  # offers (GPU type x region) tried when one has no capacity
    # provider -> API key: from the environment locally, else from this SSM SecureString
    api_keys: dict
    api_key_parameters: dict
    runpod_api_url: str | None
    runpod_endpoint_template: str | None
    lambda_api_url: str | None
    lambda_endpoint_template: str | None
    lambda_ssh_key_name: str
    # Weights/command deployments run our node agent on the instance, which connects back here.
    node_agent_image: str
    public_ws_url: str | None  # the WebSocket URL agents on instances connect to
    public_api_url: str | None
    agent_start_seconds: int  # from instance up: the agent has this long to bring the model up

    @classmethod
    def from_env(cls, env, stage: str, region: str) -> "CloudSettings":
        account = env.get("PRISM_AWS_ACCOUNT_ID", "123456789012")  # moto's default account

        def machine(kind: str) -> str:
            return env.get(
                f"PRISM_{kind.upper()}_STATE_MACHINE_ARN",
                f"arn:aws:states:{region}:{account}:stateMachine:prism-{stage}-{kind}",
            )

        return cls(
            stage=stage,
            provision_state_machine_arn=machine("provision"),
            teardown_state_machine_arn=machine("teardown"),
            poll_seconds=int(env.get("PRISM_CLOUD_POLL_SECONDS", "10")),
            boot_deadline_seconds={
                "runpod": int(env.get("PRISM_RUNPOD_BOOT_DEADLINE_SECONDS", "1200")),
                "lambda": int(env.get("PRISM_LAMBDA_BOOT_DEADLINE_SECONDS", "1800")),
            },
            health_grace_seconds=int(env.get("PRISM_CLOUD_HEALTH_GRACE_SECONDS", "600")),
            terminate_retry_seconds=int(env.get("PRISM_CLOUD_TERMINATE_RETRY_SECONDS", "30")),
            terminate_give_up_seconds=int(env.get("PRISM_CLOUD_TERMINATE_GIVE_UP_SECONDS", "900")),
            reaper_grace_seconds=int(env.get("PRISM_REAPER_GRACE_SECONDS", "600")),
            workflow_lost_seconds=int(env.get("PRISM_CLOUD_WORKFLOW_LOST_SECONDS", "120")),
            max_offers=int(env.get("PRISM_CLOUD_MAX_OFFERS", "5")),
            api_keys={
                "runpod": env.get("RUNPOD_API_KEY") or None,
                "lambda": env.get("LAMBDA_API_KEY") or None,
            },
            api_key_parameters={
                "runpod": env.get("PRISM_RUNPOD_KEY_PARAMETER", f"/prism/{stage}/runpod-api-key"),
                "lambda": env.get("PRISM_LAMBDA_KEY_PARAMETER", f"/prism/{stage}/lambda-api-key"),
            },
            runpod_api_url=env.get("PRISM_RUNPOD_API_URL") or None,
            runpod_endpoint_template=env.get("PRISM_RUNPOD_ENDPOINT_TEMPLATE") or None,
            lambda_api_url=env.get("PRISM_LAMBDA_API_URL") or None,
            lambda_endpoint_template=env.get("PRISM_LAMBDA_ENDPOINT_TEMPLATE") or None,
            lambda_ssh_key_name=env.get("PRISM_LAMBDA_SSH_KEY_NAME", "prism"),
            node_agent_image=env.get("PRISM_NODE_AGENT_IMAGE", DEFAULT_NODE_AGENT_IMAGE),
            public_ws_url=env.get("PRISM_PUBLIC_WS_URL") or None,
            public_api_url=env.get("PRISM_PUBLIC_API_URL") or None,
            agent_start_seconds=int(env.get("PRISM_CLOUD_AGENT_START_SECONDS", "3600")),
        )


@dataclass(frozen=True)
class Settings:
    stage: str
    region: str
    aws_endpoint_url: str | None
    deployments_table: str
    users_table: str
    api_keys_table: str
    resources_table: str
    idempotency_table: str
    nodes_table: str
    connections_table: str
    node_replies_table: str
    ledger_table: str
    meters_table: str  # each cloud deployment's billing state (store/meter_models.py MeterItem)
    # A deployment's secrets, sealed (store/secrets.py) under this KMS key (an alias, a key id
    # or an ARN): infra/resources.json's SecretsKey, named by its alias.
    secrets_table: str
    secrets_key_id: str
    metering_queue: str  # the queue's name; its URL is looked up once
    health_queue: str  # cloud health checks fanned out (chalicelib/services/cloud_health.py)
    metering_interval_seconds: int  # how often the tick runs (the schedule's rate)
    idempotency_ttl_seconds: int
    # Where the API Gateway management API (post_to_connection) is; locally the gateway's URL.
    websocket_management_url: str | None
    node_timeout_seconds: int  # no heartbeat for this long: the node's deployments turn unhealthy
    node_lost_seconds: int  # ... and for this long: they fail with node_lost
    no_node_timeout_seconds: int  # a prism_node deployment waits this long for a node
    # A node must report on a deployment sent to it within this, or it is sent again.
    deploy_ack_seconds: int
    node_reply_timeout_seconds: float  # how long a live health/logs request waits for the node
    cloud: CloudSettings

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        stage = env.get("PRISM_STAGE", "dev")
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

        def table(kind: str) -> str:
            return env.get(f"PRISM_{kind.upper()}_TABLE", f"prism-{stage}-{kind}")

        return cls(
            stage=stage,
            region=region,
            aws_endpoint_url=env.get("PRISM_AWS_ENDPOINT_URL") or None,
            deployments_table=table("deployments"),
            users_table=table("users"),
            api_keys_table=table("api_keys"),
            resources_table=table("resources"),
            idempotency_table=table("idempotency"),
            nodes_table=table("nodes"),
            connections_table=table("connections"),
            node_replies_table=table("node_replies"),
            ledger_table=table("ledger"),
            meters_table=table("meters"),
            secrets_table=table("secrets"),
            secrets_key_id=env.get("PRISM_SECRETS_KEY_ID", f"alias/prism-{stage}-secrets"),
            metering_queue=env.get("PRISM_METERING_QUEUE", f"prism-{stage}-metering"),
            health_queue=env.get("PRISM_HEALTH_QUEUE", f"prism-{stage}-health"),
            metering_interval_seconds=int(env.get("PRISM_METERING_INTERVAL_SECONDS", "60")),
            idempotency_ttl_seconds=int(env.get("PRISM_IDEMPOTENCY_TTL_SECONDS", "86400")),
            websocket_management_url=env.get("PRISM_WS_MANAGEMENT_URL") or None,
            node_timeout_seconds=int(env.get("PRISM_NODE_TIMEOUT_SECONDS", "60")),
            node_lost_seconds=int(env.get("PRISM_NODE_LOST_SECONDS", "300")),
            no_node_timeout_seconds=int(env.get("PRISM_NO_NODE_TIMEOUT_SECONDS", "600")),
            deploy_ack_seconds=int(env.get("PRISM_DEPLOY_ACK_SECONDS", "60")),
            node_reply_timeout_seconds=float(env.get("PRISM_NODE_REPLY_TIMEOUT_SECONDS", "3")),
            cloud=CloudSettings.from_env(env, stage, region),
        )


settings = Settings.from_env()
