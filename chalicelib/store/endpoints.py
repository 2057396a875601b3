"""A deployment's endpoint as our node agent's proxy serves it: the hashes of the keys it
accepts and the request metrics it reports. Conditional writes on the deployment item that
never touch its status or version, and never write to a finished deployment."""

from chalicelib.lifecycle import ACTIVE, Status
from chalicelib.store.models import DeploymentItem, RequestMetricsAttribute
from chalicelib.store.writes import update_if

# Where a key can still be rotated: not once the deployment is stopping or over.
ROTATABLE = [s.value for s in ACTIVE if s is not Status.STOPPING]


def replace_key_hashes(item: DeploymentItem, key_hashes: list[str]) -> bool:
    """The endpoint accepts `key_hashes` from now on, replacing what `item` was read with.
    False when someone else changed the keys since (a concurrent rotation), or the deployment
    is stopping or over."""
    read = item.endpoint_key_hashes
    unchanged = (
        DeploymentItem.endpoint_key_hashes.does_not_exist()
        if read is None
        else DeploymentItem.endpoint_key_hashes == list(read)
    )
    condition = DeploymentItem.status.is_in(*ROTATABLE) & unchanged
    if not update_if(item, [DeploymentItem.endpoint_key_hashes.set(key_hashes)], condition):
        return False
    item.endpoint_key_hashes = key_hashes
    return True


def record_request_metrics(item: DeploymentItem, metrics: RequestMetricsAttribute) -> bool:
    """Keep the newest report: counts only grow while one proxy counts, so a report below the
    stored count of the same proxy run is late and changes nothing; a later run (the agent
    restarted, counting from zero) replaces it. A finished deployment is never written. False
    when the report was not kept."""
    stored = DeploymentItem.request_metrics
    newer = (
        stored.does_not_exist()
        | stored.counting_since.does_not_exist()
        | (stored.counting_since < metrics.counting_since)
        | (
            (stored.counting_since == metrics.counting_since)
            & (stored.requests_total <= metrics.requests_total)
        )
    )
    condition = DeploymentItem.status.is_in(*(s.value for s in ACTIVE)) & newer
    return update_if(item, [DeploymentItem.request_metrics.set(metrics)], condition)
