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
    idempotency_ttl_seconds: int

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
            idempotency_ttl_seconds=int(env.get("PRISM_IDEMPOTENCY_TTL_SECONDS", "86400")),
        )


settings = Settings.from_env()
