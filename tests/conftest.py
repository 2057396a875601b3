"""Shared test setup. AWS credentials are fake everywhere; nothing here reaches the internet."""

import os

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    PRISM_STAGE="test",
    POWERTOOLS_LOG_LEVEL="WARNING",
)
os.environ.pop("PRISM_AWS_ENDPOINT_URL", None)
