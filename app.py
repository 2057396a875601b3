"""PRISM control plane: Chalice app. Wiring only; behaviour lives in chalicelib."""

import time

from chalice import Chalice, Rate, Response

from chalicelib.config import settings
from chalicelib.logs import logger
from chalicelib.routes import console, deployments, marketplace, meta, nodes
from chalicelib.services import registry

app = Chalice(app_name="prism")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.register_blueprint(console.bp)
app.register_blueprint(deployments.bp)
app.register_blueprint(marketplace.bp)
app.register_blueprint(meta.bp)
app.register_blueprint(nodes.bp)


@app.on_ws_connect()
def node_connect(event):
    return nodes.on_connect(event)


@app.on_ws_message()
def node_message(event):
    return nodes.on_message(event)


@app.on_ws_disconnect()
def node_disconnect(event):
    return nodes.on_disconnect(event)


@app.schedule(Rate(1, unit=Rate.MINUTES))
def sweep_nodes(event):
    """Silent nodes' deployments turn unhealthy, then fail; unplaceable ones fail no_node."""
    registry.sweeper().sweep()


@app.schedule(Rate(5, unit=Rate.MINUTES))
def reap_cloud(event):
    """Orphaned instances terminated, stuck cloud deployments failed, stalled teardowns rerun."""
    registry.cloud_upkeep().reap()


@app.schedule(Rate(1, unit=Rate.MINUTES))
def check_cloud_health(event):
    """Running cloud deployments to probe -> the health queue, a few per message."""
    registry.cloud_health().enqueue()


@app.on_sqs_message(queue=settings.health_queue, batch_size=1)
def health_worker(event):
    """Probes a message's deployments at once (3 failures in a row -> unhealthy); one message
    per invocation, so a round takes one probe's time however many run."""
    return registry.cloud_health().work_batch(
        (record.to_dict()["messageId"], record.body) for record in event
    )


# The steps of infra/statemachines/*.asl.json. An exception's class name is the error the
# state machine's Retry and Catch match (RateLimited, TransientError, Cancelled, ...).
@app.lambda_function(name="cloud_launch")
def cloud_launch(event, context):
    return registry.cloud().launch(event)


@app.lambda_function(name="cloud_poll")
def cloud_poll(event, context):
    return registry.cloud().poll(event)


@app.lambda_function(name="cloud_check_health")
def cloud_check_health(event, context):
    return registry.cloud().check_health(event)


@app.lambda_function(name="cloud_mark_running")
def cloud_mark_running(event, context):
    return registry.cloud().mark_running(event)


@app.lambda_function(name="cloud_provision_failed")
def cloud_provision_failed(event, context):
    return registry.cloud().provision_failed(event)


@app.lambda_function(name="cloud_terminate")
def cloud_terminate(event, context):
    return registry.cloud_teardown().terminate(event)


@app.lambda_function(name="cloud_finish_teardown")
def cloud_finish_teardown(event, context):
    return registry.cloud_teardown().finish_teardown(event)


@app.lambda_function(name="cloud_teardown_unconfirmed")
def cloud_teardown_unconfirmed(event, context):
    return registry.cloud_teardown().teardown_unconfirmed(event)


@app.middleware("http")
def structured_logging(event, get_response):
    """One JSON access line per request; keys appended by routes (owner_id, deployment_id)
    never leak into the next request."""
    logger.clear_state()
    started = time.perf_counter()
    response = _in_error_shape(get_response(event))
    logger.info(
        "request",
        extra={
            "method": event.method,
            "path": event.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return response


@app.schedule(Rate(1, unit=Rate.MINUTES))
def meter_tick(event):
    """Billable deployments -> the metering queue, many per message."""
    registry.metering().tick()


@app.on_sqs_message(queue=settings.metering_queue, batch_size=10)
def meter_worker(event):
    """Charges each deployment in the batch; only the messages that failed come back."""
    return registry.metering().work_batch(
        (record.to_dict()["messageId"], record.body) for record in event
    )


def _in_error_shape(response: Response) -> Response:
    """Chalice's own errors (405, 415, ...) use {"Code", "Message"}; give them ours."""
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and "Code" in body:
        code = str(body["Code"]).removesuffix("Error").lower() or "error"
        return Response(
            body={"error": {"code": code, "message": body.get("Message", "")}},
            status_code=response.status_code,
            headers=response.headers,
        )
    return response
