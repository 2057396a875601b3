"""`prism admin`: operator commands that write straight to the tables (never via the API).

They sign as the operator: on the local platform with the operator keys `prism dev up` keeps
in the CLI config; with `--stage`, with whatever AWS credentials the environment has. Closing
a node's live WebSocket connections needs the WebSocket management API's URL: the CLI config
has the local one; on AWS pass `--management-url https://<api id>.execute-api.<region>.
amazonaws.com/api` (or set PRISM_WS_MANAGEMENT_URL).
"""

import json
import os

import click

from prism.config import CliConfig
from prism.dev.awsenv import local_aws_env

STAGE = click.option("--stage", help="stage whose tables to use (default: the local platform's)")
JSON = click.option("--json", "as_json", is_flag=True)


@click.group()
def admin():
    """Operator commands (need access to the platform's DynamoDB tables)."""


def _operator_env(stage: str | None, management_url: str | None = None) -> CliConfig:
    """Points chalicelib's settings at the platform's AWS, signing as the operator. Must run
    before chalicelib is imported (settings are read once)."""
    config = CliConfig.load()
    if config.aws_endpoint_url and not stage:
        keys = (config.aws_access_key_id, config.aws_secret_access_key)
        os.environ.update(
            local_aws_env(config.aws_endpoint_url, config.stage or "dev", *filter(None, keys))
        )
    elif stage:
        os.environ["PRISM_STAGE"] = stage
        if "PRISM_AWS_ACCOUNT_ID" not in os.environ:  # the state machines' ARNs name it
            os.environ["PRISM_AWS_ACCOUNT_ID"] = _account_id()
    management_url = (
        management_url
        or os.environ.get("PRISM_WS_MANAGEMENT_URL")
        or (None if stage else config.ws_management_url)
    )
    if management_url:
        os.environ["PRISM_WS_MANAGEMENT_URL"] = management_url
    return config


def _account_id() -> str:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return boto3.client("sts").get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as exc:
        raise click.ClickException(f"cannot tell which AWS account this is ({exc})") from None


def _fail(exc) -> click.ClickException:
    message = getattr(exc, "msg", None) or getattr(exc, "message", None) or str(exc)
    return click.ClickException(
        f"cannot reach the platform's tables ({message}); is the platform up (`make up`)?"
    )


@admin.command("create-key")
@click.option("--name", required=True, help="the new user's name")
@STAGE
@JSON
def create_key(name, stage, as_json):
    """Create a user and print its new API key, once. Only the key's hash is stored."""
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise click.BadParameter("must be 1-64 characters", param_hint="--name")
    _operator_env(stage)
    # Imported here: settings are read from the environment prepared above.
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.store.users import UserRepository

    try:
        new = UserRepository().create_user_with_key(name)
    except PynamoDBException as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(
            json.dumps({"user_id": new.user_id, "api_key": new.api_key, "key_id": new.key_id})
        )
        return
    click.echo(f"user {new.user_id} ({new.user_name})")
    click.echo(f"PRISM_API_KEY={new.api_key}")
    click.echo(
        f"This key is shown once; only its hash is stored. Its id is {new.key_id} "
        f"(prism admin revoke-key {new.key_id}).",
        err=True,
    )


@admin.command("list-keys")
@click.option("--user", "user_id", required=True, help="the user's id (usr_…)")
@STAGE
@JSON
def list_keys(user_id, stage, as_json):
    """A user's API keys: id, first characters, creation time (never the key)."""
    _operator_env(stage)
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.store.users import UserRepository, key_id

    try:
        keys = UserRepository().keys_of(user_id)
    except PynamoDBException as exc:
        raise _fail(exc) from None
    rows = [
        {
            "key_id": key_id(k.key_hash),
            "prefix": k.key_prefix,
            "created_at": k.created_at.isoformat(),
        }
        for k in keys
    ]
    if as_json:
        click.echo(json.dumps({"user_id": user_id, "keys": rows}))
        return
    if not rows:
        click.echo(f"{user_id} has no API keys")
    for row in rows:
        click.echo(f"{row['key_id']}  {row['prefix']}…  created {row['created_at']}")


@admin.command("revoke-key")
@click.argument("key")
@click.option("--user", "user_id", help="only a key of this user (usr_…)")
@STAGE
@JSON
def revoke_key(key, user_id, stage, as_json):
    """Revoke one API key at once: KEY is its id (key_…, from create-key or list-keys), the key
    itself (prism_…) or its first 10 characters (refused when several keys share them)."""
    _operator_env(stage)
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.errors import PrismError
    from chalicelib.store.users import key_id

    try:
        revoked = _accounts().revoke_key(key.strip(), user_id)
    except PrismError as exc:
        raise click.ClickException(exc.message) from None
    except PynamoDBException as exc:
        raise _fail(exc) from None
    row = {"key_id": key_id(revoked.key_hash), "user_id": revoked.owner_id}
    if as_json:
        click.echo(json.dumps({"revoked": row}))
        return
    click.echo(f"revoked {row['key_id']} ({revoked.key_prefix}…) of {row['user_id']}")


@admin.command("delete-user")
@click.argument("user_id")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option(
    "--management-url",
    help="the WebSocket management API, to close the user's live node connections "
    "(default: the local platform's, from the CLI config; env PRISM_WS_MANAGEMENT_URL)",
)
@STAGE
@JSON
def delete_user(user_id, yes, management_url, stage, as_json):
    """Delete a user: its API keys and node tokens stop working at once, its nodes are cut off
    (connections closed), its deployments stopped (cloud instances torn down). Deployments and
    their costs stay on record. Safe to repeat."""
    if not yes:
        click.confirm(
            f"Delete {user_id}: revoke its keys and nodes, stop its deployments?", abort=True
        )
    _operator_env(stage, management_url)
    from pynamodb.exceptions import PynamoDBException

    try:
        report = _accounts(close_connections=True).delete_user(user_id)
    except PynamoDBException as exc:
        raise _fail(exc) from None
    if not report.found_anything:
        raise click.ClickException(f"no user {user_id} (nor anything of it)")
    summary = {
        "user_id": user_id,
        "keys_revoked": report.keys_revoked,
        "nodes_removed": report.nodes_removed,
        "connections_closed": report.connections_closed,
        "connections_not_closed": report.connections_not_closed,
        "deployments_stopped": report.deployments_stopped,
        "errors": report.errors,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"deleted {user_id}")
        click.echo(f"  API keys revoked: {len(report.keys_revoked)}")
        click.echo(
            f"  nodes removed: {len(report.nodes_removed)} "
            f"(live connections closed: {len(report.connections_closed)})"
        )
        for deployment_id, status in sorted(report.deployments_stopped.items()):
            click.echo(f"  {deployment_id}: {status}")
        if report.connections_not_closed:
            click.echo(
                f"  {len(report.connections_not_closed)} connection(s) not closed (no management "
                "API access): each further message on one is refused, and so is a reconnect",
                err=True,
            )
    for error in report.errors:
        click.echo(f"warning: {error} (run delete-user again)", err=True)


def _accounts(close_connections: bool = False):
    from chalicelib.services import registry
    from chalicelib.services.auth import Accounts
    from chalicelib.store.deployments import DeploymentRepository
    from chalicelib.store.nodes import NodeRepository
    from chalicelib.store.users import UserRepository

    return Accounts(
        UserRepository(),
        NodeRepository(),
        DeploymentRepository(),
        stop=registry.deployment_service().stop,
        end_stopped=registry.ending().stopped,
        close_connection=_connection_closer() if close_connections else None,
    )


def _connection_closer():
    """DeleteConnection on the WebSocket management API, signed as the operator (boto3's
    credentials from the environment); None without a management URL."""
    url = os.environ.get("PRISM_WS_MANAGEMENT_URL")
    if not url:
        return None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("apigatewaymanagementapi", endpoint_url=url)

    def close(connection_id: str) -> bool:
        try:
            client.delete_connection(ConnectionId=connection_id)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("GoneException", "410"):  # already gone: nothing left to close
                return True
            click.echo(f"warning: could not close connection {connection_id}: {code}", err=True)
            return False
        except BotoCoreError as exc:
            click.echo(f"warning: could not close connection {connection_id}: {exc}", err=True)
            return False
        return True

    return close
