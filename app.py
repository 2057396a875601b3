"""PRISM control plane: Chalice app. Wiring only; behaviour lives in chalicelib."""

import time

from chalice import Chalice, Rate, Response

from chalicelib.config import settings
from chalicelib.logs import logger
from chalicelib.routes import deployments, marketplace, meta, nodes
from chalicelib.services import registry

app = Chalice(app_name="prism")
app.experimental_feature_flags.update(["WEBSOCKETS"])
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
