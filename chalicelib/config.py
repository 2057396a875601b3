"""Settings read once from the environment into a frozen object.

On AWS the stage's `.chalice/config.json` sets the table names; locally `prism dev up` adds
`PRISM_AWS_ENDPOINT_URL` so every client (boto3 and pynamodb) talks to the moto server.
"""

import os
from dataclasses import dataclass


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
    metering_queue: str  # the queue's name; its URL is looked up once
    metering_interval_seconds: int  # how often the tick runs (the schedule's rate)
    idempotency_ttl_seconds: int
    # Where the API Gateway management API (post_to_connection) is; locally the gateway's URL.
    websocket_management_url: str | None
    node_timeout_seconds: int  # no heartbeat for this long: the node's deployments turn unhealthy
    node_lost_seconds: int  # ... and for this long: they fail with node_lost
    no_node_timeout_seconds: int  # a prism_node deployment waits this long for a node
    node_reply_timeout_seconds: float  # how long a live health/logs request waits for the node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        stage = env.get("PRISM_STAGE", "dev")

        def table(kind: str) -> str:
            return env.get(f"PRISM_{kind.upper()}_TABLE", f"prism-{stage}-{kind}")

        return cls(
            stage=stage,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
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
            metering_queue=env.get("PRISM_METERING_QUEUE", f"prism-{stage}-metering"),
            metering_interval_seconds=int(env.get("PRISM_METERING_INTERVAL_SECONDS", "60")),
            idempotency_ttl_seconds=int(env.get("PRISM_IDEMPOTENCY_TTL_SECONDS", "86400")),
            websocket_management_url=env.get("PRISM_WS_MANAGEMENT_URL") or None,
            node_timeout_seconds=int(env.get("PRISM_NODE_TIMEOUT_SECONDS", "60")),
            node_lost_seconds=int(env.get("PRISM_NODE_LOST_SECONDS", "300")),
            no_node_timeout_seconds=int(env.get("PRISM_NO_NODE_TIMEOUT_SECONDS", "600")),
            node_reply_timeout_seconds=float(env.get("PRISM_NODE_REPLY_TIMEOUT_SECONDS", "3")),
        )


settings = Settings.from_env()
