"""The environment that points chalicelib at a local moto server."""


def local_aws_env(
    endpoint_url: str, stage: str, access_key: str = "prism-local", secret_key: str = "prism-local"
) -> dict[str, str]:
    """Fake credentials by default, so local runs never pick up (or reach) a real account; the
    local platform, which enforces IAM, passes its operator's keys."""
    return {
        "PRISM_AWS_ENDPOINT_URL": endpoint_url,
        "PRISM_STAGE": stage,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
