"""What every cloud GPU provider offers the control plane, in plain dataclasses: offers to
choose from, launch, get, terminate, and the instances carrying our name prefix (for the
reaper). Provider-specific wire formats stay inside each provider's module; their statuses
map onto InstanceState through one table per module."""

import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

NAME_PREFIX = "prism-"  # every instance we launch is named prism-<deployment id>


def instance_name(deployment_id: str, stage: str | None = None) -> str:
    """prism-<stage>-<deployment id>: the stage keeps one installation's reaper off another's
    instances when two share a provider account."""
    return f"{NAME_PREFIX}{stage}-{deployment_id}" if stage else f"{NAME_PREFIX}{deployment_id}"


def owned_by_stage(name: str | None, stage: str) -> str | None:
    """The deployment id in an instance name of this stage, or None when it is not ours."""
    match = re.fullmatch(rf"{NAME_PREFIX}{re.escape(stage)}-(dep_[0-9a-f]{{16}})", name or "")
    return match.group(1) if match else None


def deployment_of(name: str | None) -> str | None:
    """The deployment id an instance name carries, or None when the instance is not ours."""
    if name and name.startswith(NAME_PREFIX):
        return name[len(NAME_PREFIX) :]
    return None


class InstanceState(StrEnum):
    PENDING = "pending"  # asked for, booting, image pulling: billed, not usable yet
    RUNNING = "running"  # up; the endpoint (or ip) is known
    STOPPING = "stopping"  # terminate requested, not confirmed: still billed
    TERMINATED = "terminated"  # gone: billing stopped
    FAILED = "failed"  # the provider gave up on it (still terminate it to be sure)


@dataclass(frozen=True)
class Offer:
    """One way to get the GPU asked for: a provider GPU/instance type, in a region."""

    gpu_type: str  # the provider's id: RunPod gpuTypeId, Lambda instance_type_name
    region: str | None  # Lambda region_name; RunPod: None (any data center)
    price_per_hour: Decimal  # the listed price; the launched instance reports its own


@dataclass(frozen=True)
class LaunchSpec:
    deployment_id: str
    image: str | None  # RunPod: the container to run; Lambda: ignored (a VM)
    port: int  # the HTTP port to expose
    env: dict[str, str] = field(default_factory=dict, repr=False)  # values are secrets
    user_data: str | None = field(default=None, repr=False)  # cloud-init (VMs): node bootstrap
    gpu_count: int = 1
    disk_gb: int = 50
    stage: str | None = None  # part of the instance name

    @property
    def name(self) -> str:
        return instance_name(self.deployment_id, self.stage)


@dataclass(frozen=True)
class Instance:
    id: str
    name: str
    state: InstanceState
    provider_status: str  # the provider's own word, for messages and logs
    price_per_hour: Decimal | None = None
    endpoint_url: str | None = None  # where the model's HTTP port answers, once known
    ip: str | None = None
    region: str | None = None

    @property
    def deployment_id(self) -> str | None:
        return deployment_of(self.name)


class ProviderError(Exception):
    """Base of every provider failure; the message is the provider's, fit for a user."""

    retryable = False


def without_secrets(exc: ProviderError, secrets) -> ProviderError:
    """The same error with every secret value (launch env, user data) blanked out of its
    message: providers echo parts of a refused request back."""
    message = str(exc)
    for value in secrets:
        if len(value) >= 4:  # short values would blank out ordinary words
            message = message.replace(value, "***")
    clone = type(exc).__new__(type(exc))
    clone.__dict__.update(exc.__dict__)
    clone.args = (message,)
    return clone


class CapacityError(ProviderError):
    """No instance of that offer is available now: try the next offer."""


class RateLimited(ProviderError):
    retryable = True

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthError(ProviderError):
    """The API key is missing, wrong or lacks permission."""


class InvalidRequest(ProviderError):
    """The provider refused the request as malformed or against its rules: never retried."""


class TransientError(ProviderError):
    """5xx, timeouts, connection resets: retry with backoff."""

    retryable = True


class Provider(Protocol):
    name: str  # "runpod" | "lambda"

    def offers(self, gpu_type: str) -> list[Offer]:
        """Offers matching a GPU type such as "A100" or "H100", cheapest first."""

    def launch(self, spec: LaunchSpec, offer: Offer) -> Instance: ...

    def get(self, instance_id: str, port: int | None = None) -> Instance | None:
        """None when the provider no longer knows the instance (it is gone). `port`: the
        model's port, for providers whose instances do not know it (VMs)."""

    def terminate(self, instance_id: str) -> None:
        """Idempotent: an instance that is already gone is success."""

    def list_owned(self) -> list[Instance]:
        """Every live instance whose name carries NAME_PREFIX."""
