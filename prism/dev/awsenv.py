"""The environment that points chalicelib at a local moto server."""


def local_aws_env(endpoint_url: str, stage: str) -> dict[str, str]:
    # Fixed fake credentials: local runs must never pick up (and never reach) a real account.
    return {
        "PRISM_AWS_ENDPOINT_URL": endpoint_url,
        "PRISM_STAGE": stage,
        "AWS_ACCESS_KEY_ID": "prism-local",
        "AWS_SECRET_ACCESS_KEY": "prism-local",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
