"""Prepare the local AWS (moto): tables and the KMS key sealing deployments' secrets from
infra/resources.json, queues, state machines, provider keys in SSM, the marketplace catalog and
a dev user; what exists already is kept, so a restarted platform keeps its data. Run by
`prism dev up` as `python -m prism.dev.bootstrap USER_NAME` as the operator identity;
PRISM_DEV_API_KEY, when set, is the dev user's key from the last run, kept if the platform still
knows it. Prints {"user_id", "api_key"} as JSON."""

import json
import os
import sys

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services.catalog import CatalogService
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.users import UserRepository
from prism.dev.infra import REPO_ROOT, create_queues, create_state_machines, create_tables


def main(user_name: str) -> None:
    create_tables(aws.client("dynamodb"), settings, kms=aws.client("kms"))  # + the secrets key
    create_queues(aws.client("sqs"), settings.stage)
    create_state_machines(
        aws.client("stepfunctions"), aws.client("lambda"), aws.client("iam"), settings.stage
    )
    _provider_keys_to_ssm(aws.client("ssm"))
    CatalogService(ResourceRepository()).seed(examples_root=REPO_ROOT)
    users = UserRepository()
    kept = os.environ.get("PRISM_DEV_API_KEY")
    owner = users.owner_of_key(kept) if kept else None
    if owner:
        print(json.dumps({"user_id": owner, "api_key": kept}))
        return
    new = users.create_user_with_key(user_name)
    print(json.dumps({"user_id": new.user_id, "api_key": new.api_key}))


def _provider_keys_to_ssm(ssm) -> None:
    """Provider API keys where the functions read them on AWS: SSM SecureStrings (locally the
    fakes' keys, or the user's own from the environment of `prism dev up`)."""
    for name, key in settings.cloud.api_keys.items():
        if key:
            parameter = settings.cloud.api_key_parameters[name]
            ssm.put_parameter(Name=parameter, Value=key, Type="SecureString", Overwrite=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dev")
