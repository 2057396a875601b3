"""Where the CLI finds the API: PRISM_API_URL / PRISM_API_KEY, else the config file
(PRISM_CONFIG, default ~/.config/prism/config.json) that `prism dev up` writes; and the API
client it configures."""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from prism.client import ApiClient


def config_path() -> Path:
    default = Path.home() / ".config" / "prism" / "config.json"
    return Path(os.environ.get("PRISM_CONFIG", default))


@dataclass
class CliConfig:
    api_url: str | None = None
    api_key: str | None = None
    ws_url: str | None = None  # the node WebSocket API (`prism node up` connects there)
    # Set by `prism dev up` so `prism admin` can reach the local platform's tables.
    aws_endpoint_url: str | None = None
    stage: str | None = None
    # The local platform's operator identity (IAM is enforced there): `prism admin` signs with it.
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    # The local WebSocket management API: `prism admin delete-user` closes a node's connections.
    ws_management_url: str | None = None

    @classmethod
    def load(cls) -> "CliConfig":
        path = config_path()
        data = json.loads(path.read_text()) if path.exists() else {}
        config = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        config.api_url = os.environ.get("PRISM_API_URL") or config.api_url
        config.api_key = os.environ.get("PRISM_API_KEY") or config.api_key
        config.ws_url = os.environ.get("PRISM_WS_URL") or config.ws_url
        return config

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds an API key: readable by its owner only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when it existed before with a wider mode
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        return path


def api_client() -> ApiClient:
    config = CliConfig.load()
    if not config.api_url:
        raise click.ClickException(
            "no API configured: set PRISM_API_URL and PRISM_API_KEY, or run `prism dev up`"
        )
    return ApiClient(config.api_url, config.api_key)
