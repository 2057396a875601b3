"""Builds each service once per Lambda container, on first use (no AWS calls at import)."""

from functools import cache

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

from chalicelib import aws, providers
from chalicelib.config import settings
from chalicelib.node_channel import NodeChannel
from chalicelib.queue import WorkQueue
from chalicelib.services.auth import AuthService
from chalicelib.services.catalog import CatalogService
from chalicelib.services.cloud import CloudService
from chalicelib.services.cloud_health import CloudHealth
from chalicelib.services.cloud_teardown import CloudTeardown
from chalicelib.services.cloud_upkeep import CloudUpkeep
from chalicelib.services.deployment_reads import DeploymentReads
from chalicelib.services.deployments import DeploymentService
from chalicelib.services.ending import Ending
from chalicelib.services.metering import MeteringService
from chalicelib.services.node_messages import NodeMessageHandler
from chalicelib.services.node_requests import NodeRequests
from chalicelib.services.nodes import NodeService, Sweeper
from chalicelib.services.placement import Placement
from chalicelib.services.workflows import Workflows
from chalicelib.store.deployments import DeploymentRepository
from chalicelib.store.metering import MeteringRepository
from chalicelib.store.model_base import utcnow
from chalicelib.store.nodes import NodeRepository, ReplyRepository
from chalicelib.store.resources import ResourceRepository
from chalicelib.store.users import UserRepository


@cache
def auth_service() -> AuthService:
    return AuthService(UserRepository())


@cache
def catalog_service() -> CatalogService:
    return CatalogService(ResourceRepository())


@cache
def placement() -> Placement:
    return Placement(DeploymentRepository(), NodeRepository(), NodeChannel())


@cache
def node_requests() -> NodeRequests:
    return NodeRequests(
        NodeRepository(), ReplyRepository(), NodeChannel(), settings.node_reply_timeout_seconds
    )


@cache
def deployment_service() -> DeploymentService:
    idempotency = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table, boto3_client=aws.client("dynamodb")
    )
    return DeploymentService(
        DeploymentRepository(),
        ResourceRepository(),
        idempotency,
        NodeRepository(),
        placement(),
        node_requests(),
        workflows(),
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
    )


@cache
def deployment_reads() -> DeploymentReads:
    return DeploymentReads(DeploymentRepository(), MeteringRepository(), node_requests())


@cache
def workflows() -> Workflows:
    return Workflows(aws.client("stepfunctions"), settings.cloud)


@cache
def cloud() -> CloudService:
    return CloudService(
        DeploymentRepository(),
        NodeRepository(),
        lambda name: providers.provider_for(name, settings.cloud),
        workflows(),
        settings.cloud,
        utcnow,
        place=placement().place,
    )


@cache
def cloud_teardown() -> CloudTeardown:
    return CloudTeardown(
        DeploymentRepository(),
        NodeRepository(),
        lambda name: providers.provider_for(name, settings.cloud),
        metering().meter,
        settings.cloud,
        utcnow,
    )


@cache
def cloud_health() -> CloudHealth:
    return CloudHealth(
        DeploymentRepository(),
        lambda name: providers.provider_for(name, settings.cloud),
        workflows(),
        utcnow,
        WorkQueue(aws.client("sqs"), settings.health_queue),
    )


@cache
def cloud_upkeep() -> CloudUpkeep:
    return CloudUpkeep(
        DeploymentRepository(),
        lambda name: providers.provider_for(name, settings.cloud),
        workflows(),
        settings.cloud,
        utcnow,
        cloud().provision_failed,
        configured=lambda: providers.configured(settings.cloud),
    )


@cache
def node_service() -> NodeService:
    return NodeService(NodeRepository(), DeploymentRepository(), placement())


@cache
def node_message_handler() -> NodeMessageHandler:
    return NodeMessageHandler(
        DeploymentRepository(), NodeRepository(), ReplyRepository(), placement(), ending()
    )


@cache
def ending() -> Ending:
    return Ending(DeploymentRepository(), workflows(), placement().place_waiting)


@cache
def node_channel() -> NodeChannel:
    return NodeChannel()


@cache
def sweeper() -> Sweeper:
    return Sweeper(
        NodeRepository(),
        DeploymentRepository(),
        placement(),
        settings.node_timeout_seconds,
        settings.node_lost_seconds,
        settings.no_node_timeout_seconds,
        ending(),
        settings.deploy_ack_seconds,
    )


@cache
def metering() -> MeteringService:
    queue = WorkQueue(aws.client("sqs"), settings.metering_queue)
    return MeteringService(
        MeteringRepository(),
        queue,
        deployment_service().stop_for_budget,
        utcnow,
        settings.metering_interval_seconds,
    )


FACTORIES = (
    metering,
    workflows,
    ending,
    cloud,
    cloud_upkeep,
    cloud_health,
    cloud_teardown,
    auth_service,
    catalog_service,
    placement,
    node_requests,
    deployment_service,
    node_service,
    node_message_handler,
    node_channel,
    sweeper,
)


def reset() -> None:
    """Forget built services (tests that swap the AWS backend between cases)."""
    for factory in FACTORIES:
        factory.cache_clear()
    for client in (aws.client, aws.session, aws.management_api):
        client.cache_clear()
    providers._SSM_CACHE.clear()
