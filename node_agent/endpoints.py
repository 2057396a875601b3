"""Each deployment's endpoint: the agent's proxy (node_agent.proxy) listening on the
deployment's reserved port, in front of the model on its internal loopback port. It opens as
soon as the port is reserved (so nothing else takes the port during a long pull; it answers 502
until the model is up) or when a restarted agent adopts the deployment, stays up through
restarts of the model, and closes when the deployment ends. Its keys change live on
`endpoint_keys` and are kept with the record. Its counts go to the control plane every
`metrics_interval_s` while they change.

A mixin of node_agent.agent.Agent, whose state (records, lock, proxy, settings, send, ...) it
uses."""

import ipaddress
import logging
import time

from chalicelib.protocol import DeploymentMetrics, DeployModel, EndpointKeys
from node_agent.runtime.base import LaunchError
from node_agent.state import Record

log = logging.getLogger("prism.node")
EVERY_INTERFACE = "0.0.0.0"


class Endpoints:
    def _serve_endpoint(self, record: Record) -> None:
        """Open the deployment's proxy (nothing when it is already open); under the agent's
        lock, so a deployment that ended meanwhile never gets one."""
        if record.model_port == record.port:
            return  # adopted from an agent before the proxy: the model holds the port itself
        deploy = DeployModel.model_validate(record.deploy) if record.deploy else None
        auth = deploy.deploy_config.auth if deploy else "key"
        # A cloud instance of the deployment's own is reached on its interfaces, whatever it
        # advertises (the provider's proxy or the VM's address).
        host = EVERY_INTERFACE if deploy and deploy.whole_node else self._publish_on()
        with self.lock:
            if record.stop_requested or self.records.get(record.deployment_id) is not record:
                return
            try:
                self.proxy.open(
                    record.deployment_id,
                    host,
                    record.port,
                    record.model_port,
                    auth,
                    record.key_hashes,
                )
            except OSError as exc:
                raise LaunchError(
                    f"port_in_use: the endpoint port {record.port} cannot be served "
                    f"({exc.strerror or exc}); leave deploy_config.port unset and the node "
                    "picks a free one"
                ) from None

    def _close_endpoint(self, deployment_id: str) -> None:
        try:
            self.proxy.close(deployment_id)
        except Exception:  # never keeps a deployment from ending
            log.exception("closing the endpoint of %s failed", deployment_id)
        self.metrics_sent.pop(deployment_id, None)

    def set_endpoint_keys(self, message: EndpointKeys) -> None:
        """The keys the endpoint accepts from now on (the old ones stop at once)."""
        with self.lock:
            record = self.records.get(message.deployment_id)
            if record is None:
                log.info("endpoint keys for %s, which is not here", message.deployment_id)
                return
            record.key_hashes = list(message.key_hashes)
            self._save()
            self.proxy.set_keys(record.deployment_id, record.key_hashes)

    def _publish_on(self) -> str:
        """Endpoints: on loopback only while the endpoint advertised is a loopback one, else on
        every interface (the endpoint is reached there)."""
        return "127.0.0.1" if _is_loopback(self.settings.advertise_host) else EVERY_INTERFACE

    def _report_metrics(self) -> None:
        """Every metrics interval, each endpoint whose counts changed since its last report
        (in flight included, so a report with in_flight 0 follows the last request)."""
        now = time.monotonic()
        if now - self.metrics_reported_at < self.settings.metrics_interval_s:
            return
        self.metrics_reported_at = now
        for deployment_id in self.proxy.serving():
            metrics = self.proxy.metrics(deployment_id)
            if metrics is None:  # closed meanwhile
                continue
            report = metrics.report()
            counts = tuple(v for k, v in report.items() if not k.startswith(("latency", "win")))
            last = self.metrics_sent.get(deployment_id)
            if counts == last or (last is None and not report["requests_total"]):
                continue
            self.metrics_sent[deployment_id] = counts
            self.send(DeploymentMetrics(deployment_id=deployment_id, **report))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
