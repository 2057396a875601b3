"""One module per cloud GPU provider behind providers.base.Provider; `provider_for` builds
the one a deployment's target names, with its API key from the environment (local) or from
SSM Parameter Store as a SecureString (AWS). Keys are never logged."""

import time

from chalicelib import aws
from chalicelib.config import CloudSettings, settings
from chalicelib.providers.base import AuthError, Provider

PROVIDERS = ("runpod", "lambda")


class ProviderNotConfigured(AuthError):
    """No API key for this provider in this installation."""


def provider_for(name: str, cloud: CloudSettings | None = None) -> Provider:
    cloud = cloud or settings.cloud
    key = api_key(name, cloud)
    if name == "runpod":
        from chalicelib.providers.runpod import DEFAULT_API_URL, RunPodProvider

        return RunPodProvider(
            key,
            api_url=cloud.runpod_api_url or DEFAULT_API_URL,
            **_template(cloud.runpod_endpoint_template),
        )
    if name == "lambda":
        from chalicelib.providers.lambda_cloud import DEFAULT_API_URL, LambdaCloudProvider

        return LambdaCloudProvider(
            key,
            cloud.lambda_ssh_key_name,
            api_url=cloud.lambda_api_url or DEFAULT_API_URL,
            **_template(cloud.lambda_endpoint_template),
        )
    raise ValueError(f"unknown provider {name!r}")


def configured(cloud: CloudSettings | None = None) -> list[str]:
    """The providers this installation has a key for (the reaper sweeps those)."""
    names = []
    for name in PROVIDERS:
        try:
            api_key(name, cloud or settings.cloud)
        except ProviderNotConfigured:
            continue
        names.append(name)
    return names


def api_key(name: str, cloud: CloudSettings) -> str:
    return cloud.api_keys.get(name) or _key_from_ssm(cloud.api_key_parameters[name])


def _key_from_ssm(parameter: str) -> str:
    """Cached for 5 minutes, so a rotated key reaches warm Lambdas soon."""
    now = time.monotonic()
    cached = _SSM_CACHE.get(parameter)
    if cached and now - cached[0] < KEY_TTL_S:
        return cached[1]
    _SSM_CACHE[parameter] = (now, _read_parameter(parameter))
    return _SSM_CACHE[parameter][1]


KEY_TTL_S = 300.0
_SSM_CACHE: dict[str, tuple[float, str]] = {}


def _read_parameter(parameter: str) -> str:
    ssm = aws.client("ssm")
    try:
        return ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        raise ProviderNotConfigured(
            f"no API key: put it in SSM parameter {parameter} (SecureString)"
        ) from None


def _template(template: str | None) -> dict:
    return {"endpoint_template": template} if template else {}
