"""`prism admin`: operator commands that write straight to the tables (never via the API)."""

import os

import click

from prism.config import CliConfig
from prism.dev.awsenv import local_aws_env


@click.group()
def admin():
    """Operator commands (need access to the platform's DynamoDB tables)."""


@admin.command("create-key")
@click.option("--name", required=True, help="the new user's name")
@click.option("--stage", help="stage whose tables to use (default: the local platform's)")
@click.option("--json", "as_json", is_flag=True)
def create_key(name, stage, as_json):
    """Create a user and print its new API key, once. Only the key's hash is stored."""
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise click.BadParameter("must be 1-64 characters", param_hint="--name")
    config = CliConfig.load()
    if config.aws_endpoint_url and not stage:
        keys = (config.aws_access_key_id, config.aws_secret_access_key)
        os.environ.update(
            local_aws_env(config.aws_endpoint_url, config.stage or "dev", *filter(None, keys))
        )
    elif stage:
        os.environ["PRISM_STAGE"] = stage
    # Imported here: settings are read from the environment prepared above.
    from pynamodb.exceptions import PynamoDBException

    from chalicelib.store.users import UserRepository

    try:
        new = UserRepository().create_user_with_key(name)
    except PynamoDBException as exc:
        raise click.ClickException(
            f"cannot write to the users table ({exc.msg}); is the platform up (`make up`)?"
        ) from None
    if as_json:
        click.echo(f'{{"user_id": "{new.user_id}", "api_key": "{new.api_key}"}}')
        return
    click.echo(f"user {new.user_id} ({new.user_name})")
    click.echo(f"PRISM_API_KEY={new.api_key}")
    click.echo("This key is shown once; only its hash is stored.", err=True)
