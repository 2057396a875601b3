"""Prepare a fresh local AWS (moto): tables from infra/resources.json, the marketplace catalog
and a dev user. Run by `prism dev up` as `python -m prism.dev.bootstrap USER_NAME` with the
local AWS environment; prints {"user_id", "api_key"} as JSON."""

import json
import sys

import requests

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.users import UserRepository
from prism.dev.infra import REPO_ROOT, create_queues, create_state_machines, create_tables
from prism.dev.lambda_router import SFN_CONFIG


def main(user_name: str) -> None:
    create_tables(aws.client("dynamodb"), settings)
    create_queues(aws.client("sqs"), settings.stage)
    requests.post(f"{settings.aws_endpoint_url}/moto-api/config", json=SFN_CONFIG, timeout=10)
    create_state_machines(
        aws.client("stepfunctions"), aws.client("lambda"), aws.client("iam"), settings.stage
    )
    CatalogService(ResourceRepository()).seed(examples_root=REPO_ROOT)
    new = UserRepository().create_user_with_key(user_name)
    print(json.dumps({"user_id": new.user_id, "api_key": new.api_key}))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dev")
