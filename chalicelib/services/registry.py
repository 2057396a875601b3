"""Builds each service once per Lambda container, on first use (no AWS calls at import)."""

from functools import cache

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

from chalicelib import aws
from chalicelib.config import settings
from chalicelib.services.auth import AuthService
from chalicelib.services.catalog import CatalogService
from chalicelib.services.deployments import DeploymentService
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.users import UserRepository


@cache
def auth_service() -> AuthService:
    return AuthService(UserRepository())


@cache
def catalog_service() -> CatalogService:
    return CatalogService(ResourceRepository())


@cache
def deployment_service() -> DeploymentService:
    idempotency = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table, boto3_client=aws.client("dynamodb")
    )
    return DeploymentService(
        DeploymentRepository(),
        ResourceRepository(),
        idempotency,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
    )


def reset() -> None:
    """Forget built services (tests that swap the AWS backend between cases)."""
    for factory in (auth_service, catalog_service, deployment_service):
        factory.cache_clear()
    aws.client.cache_clear()
    aws.session.cache_clear()
