"""A fake Lambda Cloud API v1: a real HTTP server speaking the wire format of
/work/shared/reference/external-apis.md, so the real provider client runs over real HTTP:

    with FakeLambdaCloud(boot_seconds=0.2) as cloud:
        provider = LambdaCloudProvider(cloud.api_key, "prism", api_url=cloud.url,
                                       endpoint_template=cloud.endpoint_template)

Routes (all under /api/v1, `Authorization: Bearer <api_key>`, else 401 global/invalid-api-key):
    GET  /instance-types                  -> {"data": {type: {instance_type, regions_with_...}}}
    POST /instance-operations/launch      -> {"data": {"instance_ids": [id]}}
    GET  /instances                       -> {"data": [instance, ...]}  (not yet terminated)
    GET  /instances/{id}                  -> {"data": instance}; 404 global/object-does-not-exist
    POST /instance-operations/terminate   -> {"data": {"terminated_instances": [instance, ...]}}
Errors are `{"error": {"code", "message", "suggestion"?}}` with the real codes.

Instances are "booting" for `boot_seconds`, then "active" with ip 127.0.0.1; a terminate makes
them "terminating" for `terminating_seconds`, then "terminated"; they answer GET for
`forget_after_s` more. An active instance's model "answers" at `endpoint_template`:
    GET|POST /vm/{id}/{port}/<anything>  -> 200 {"ok": true, "instance": id}
                                            (500 if id in `unhealthy`, 502 while not active)

A VM runs its user data at first boot (cloud-init, prism/dev/fakes/instances.py): the node agent
bootstrap really starts our agent, and /vm/{id}/{port}/... then forwards to its model.

Faults (counters decrement per request): capacity_failures, no_capacity, rate_limit_next
(+ retry_after_s), server_error_next, terminate_failures, never_boot, unhealthy, quota.

This module holds the instances and the API's logic; the regions and instance types are in
prism/dev/fakes/lambda_catalog.py, the HTTP handler and error answers in
prism/dev/fakes/lambda_http.py.
"""

import copy
import threading
import time
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from prism.dev.fakes.http_server import json_answer, serve_in_background
from prism.dev.fakes.instances import InstanceHost
from prism.dev.fakes.lambda_catalog import REGIONS, default_instance_types, price_per_hour
from prism.dev.fakes.lambda_http import (
    API_PREFIX,
    ApiError,
    LambdaHandler,
    LambdaServer,
    insufficient_capacity,
    internal_error,
    invalid,
    not_found,
)

FAKE_IP = "127.0.0.1"

_INSTANCE_KEYS = (  # what GET /instances/{id} shows; the rest of a record is the fake's own
    "id",
    "name",
    "ip",
    "private_ip",
    "status",
    "ssh_key_names",
    "file_system_names",
    "region",
    "instance_type",
    "hostname",
    "jupyter_token",
    "jupyter_url",
    "is_reserved",
)


class FakeLambdaCloud:
    """In-memory Lambda Cloud on 127.0.0.1; see the module docstring for what it answers."""

    def __init__(
        self,
        *,
        api_key: str = "lambda_test_key",
        boot_seconds: float = 0.5,
        instance_types: dict | None = None,
        port: int = 0,
        instances: InstanceHost | None = None,
    ):
        self.api_key = api_key
        self._port = port
        self.boot_seconds = boot_seconds
        self.instance_types = copy.deepcopy(
            instance_types if instance_types is not None else default_instance_types()
        )
        self.terminating_seconds = 0.2
        self.forget_after_s = 300.0  # terminated instances answer GET this long, then 404
        self.clock = time.time  # bill(now=...) takes this clock's readings
        # faults
        self.capacity_failures = 0
        self.no_capacity: set[tuple[str, str]] = set()
        self.rate_limit_next = 0
        self.retry_after_s: float = 1
        self.server_error_next = 0
        self.terminate_failures = 0
        self.never_boot: set[str] = set()  # instance names ("*": every instance)
        self.unhealthy: set[str] = set()  # instance ids ("*": every instance)
        self.quota: int | None = None  # max not-terminated instances, else global/quota-exceeded
        # observations
        self.launches: list[dict] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every API request
        self._instances: dict[str, dict] = {}
        self.machines = instances or InstanceHost()  # VMs run their user data
        self._lock = threading.RLock()
        self._server: LambdaServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "FakeLambdaCloud":
        self._server = LambdaServer(("127.0.0.1", self._port), LambdaHandler)
        self._server.cloud = self
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = serve_in_background(self._server, poll_interval=0.05)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None
        self.machines.close()

    def __enter__(self) -> "FakeLambdaCloud":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"{self.base_url}{API_PREFIX}"

    @property
    def endpoint_template(self) -> str:
        return f"{self.base_url}/vm/{{id}}/{{port}}"

    # -- assertions --------------------------------------------------------------------------

    @property
    def instances(self) -> dict[str, dict]:
        """Every instance ever launched, by id, with its status as of now."""
        with self._lock:
            for record in self._instances.values():
                self._refresh(record)
            return self._instances

    def live_instances(self) -> list[dict]:
        """Instances still billed: no terminate accepted for them yet."""
        return [r for r in self.instances.values() if r["terminated_at"] is None]

    def bill(self, instance_id: str, now: float | None = None) -> Decimal:
        """Price x billed hours. Billing stops at the accepted terminate call, not when the
        status reads "terminated": the control plane is accountable from its own call on."""
        record = self._instances[instance_id]
        end = record["terminated_at"] or (self.clock() if now is None else now)
        seconds = Decimal(max(0.0, end - record["launched_at"]))
        return price_per_hour(record["instance_type"]) * seconds / 3600

    def total_bill(self) -> Decimal:
        return sum((self.bill(i) for i in list(self._instances)), Decimal(0))

    # -- API ---------------------------------------------------------------------------------

    def handle_api(
        self, method: str, path: str, token: str | None, body: Any
    ) -> tuple[int, dict, dict[str, str]]:
        """(status, JSON body, extra headers) for one request under /api/v1."""
        with self._lock:
            self.requests.append((method, path))
            try:
                self._inject_faults()
                if token != self.api_key:
                    raise ApiError(401, "global/invalid-api-key", "API key was invalid.")
                return 200, {"data": self._route(method, path, body)}, {}
            except ApiError as err:
                return err.status, err.body(), err.headers

    def handle_vm(
        self,
        method: str,
        instance_id: str,
        port: int,
        path: str,
        body: bytes,
        authorization: str | None = None,
    ) -> tuple[int, bytes, str]:
        """A request to the VM's port: forwarded to the model when the VM runs our agent."""
        with self._lock:
            record = self._instances.get(instance_id)
            if record is None or self._refresh(record)["status"] != "active":
                return json_answer(502, {"ok": False, "error": "instance not reachable"})
            if instance_id in self.unhealthy or "*" in self.unhealthy:
                return json_answer(500, {"ok": False, "instance": instance_id})
        if self.machines.runs_agent(instance_id):
            return self.machines.forward(method, port, path, body, authorization)
        return json_answer(200, {"ok": True, "instance": instance_id})

    def _inject_faults(self) -> None:
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            retry = self.retry_after_s
            header = str(int(retry)) if float(retry).is_integer() else str(retry)
            raise ApiError(
                429, "global/too-many-requests", "Too many requests.", None, {"Retry-After": header}
            )
        if self.server_error_next > 0:
            self.server_error_next -= 1
            raise internal_error()

    def _route(self, method: str, path: str, body: Any) -> Any:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        match method, parts:
            case "GET", ["instance-types"]:
                return self._instance_types()
            case "GET", ["instances"]:
                return [self._view(r) for r in self._known() if r["status"] != "terminated"]
            case "GET", ["instances", instance_id]:
                return self._view(self._find(instance_id))
            case "POST", ["instance-operations", "launch"]:
                return self._launch(body)
            case "POST", ["instance-operations", "terminate"]:
                return self._terminate(body)
        raise ApiError(404, "global/not-found", f"No route for {method} {path}.")

    def _instance_types(self) -> dict[str, Any]:
        answer = copy.deepcopy(self.instance_types)
        for name, entry in answer.items():
            entry["regions_with_capacity_available"] = [
                r
                for r in entry["regions_with_capacity_available"]
                if (name, r["name"]) not in self.no_capacity
            ]
        return answer

    def _launch(self, body: Any) -> dict[str, Any]:
        entry, region = self._check_launch(body)
        type_name = entry["instance_type"]["name"]
        if self.capacity_failures > 0 or (type_name, region) in self.no_capacity:
            self.capacity_failures = max(0, self.capacity_failures - 1)
            raise insufficient_capacity()
        if region not in {r["name"] for r in entry["regions_with_capacity_available"]}:
            raise insufficient_capacity()
        live = [r for r in self._known() if r["terminated_at"] is None]
        if self.quota is not None and len(live) >= self.quota:
            raise ApiError(
                400,
                "global/quota-exceeded",
                "Launching would exceed your instance quota.",
                "Terminate instances or contact support to raise your quota.",
            )
        record = self._new_record(body, entry, region)
        self._instances[record["id"]] = record
        self.launches.append(copy.deepcopy(body))
        return {"instance_ids": [record["id"]]}

    def _check_launch(self, body: Any) -> tuple[dict, str]:
        if not isinstance(body, dict):
            raise invalid("Request body must be a JSON object.")
        entry = self.instance_types.get(body.get("instance_type_name"))
        if entry is None:
            raise invalid("Invalid instance type.")
        region = body.get("region_name")
        if region not in REGIONS:
            raise invalid("Invalid region.")
        keys = body.get("ssh_key_names")
        if not (isinstance(keys, list) and len(keys) == 1 and isinstance(keys[0], str)):
            raise invalid("Exactly one SSH key name is required.")
        if body.get("quantity", 1) != 1:
            raise invalid("Quantity must be 1.")
        name = body.get("name")
        if name is not None and not (isinstance(name, str) and len(name) <= 64):
            raise invalid("Name must be a string of at most 64 characters.")
        if len(body.get("file_system_names") or []) > 1:
            raise invalid("At most one file system can be attached.")
        if not isinstance(body.get("user_data", ""), str):
            raise invalid("user_data must be a string.")
        return entry, region

    def _new_record(self, body: dict, entry: dict, region: str) -> dict[str, Any]:
        return {
            "id": uuid.uuid4().hex,
            "name": body.get("name"),
            "ip": None,
            "private_ip": None,
            "status": "booting",
            "ssh_key_names": list(body["ssh_key_names"]),
            "file_system_names": list(body.get("file_system_names") or []),
            "region": {"name": region, "description": REGIONS[region]},
            "instance_type": copy.deepcopy(entry["instance_type"]),
            "hostname": None,
            "jupyter_token": uuid.uuid4().hex,
            "jupyter_url": None,
            "is_reserved": False,
            # the fake's own
            "user_data": body.get("user_data"),
            "launched_at": self.clock(),
            "terminated_at": None,
        }

    def _terminate(self, body: Any) -> dict[str, Any]:
        ids = body.get("instance_ids") if isinstance(body, dict) else None
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            raise invalid("instance_ids must be a non-empty list of instance ids.")
        records = [self._find(i) for i in ids]  # all known, or nothing is terminated
        if self.terminate_failures > 0:
            self.terminate_failures -= 1
            raise internal_error()
        now = self.clock()
        for record in records:
            if record["terminated_at"] is None:  # again: a no-op, as the real API is idempotent
                record["terminated_at"] = now
                self.machines.terminate(record["id"])
        return {"terminated_instances": [self._view(self._refresh(r)) for r in records]}

    # -- state -------------------------------------------------------------------------------

    def _known(self) -> list[dict]:
        """Instances the API still knows about (terminated ones are forgotten after a while)."""
        now = self.clock()
        return [
            self._refresh(r)
            for r in self._instances.values()
            if r["terminated_at"] is None
            or now - r["terminated_at"] < self.terminating_seconds + self.forget_after_s
        ]

    def _find(self, instance_id: str) -> dict:
        for record in self._known():
            if record["id"] == instance_id:
                return record
        raise not_found()

    def _refresh(self, record: dict) -> dict:
        now = self.clock()
        if record["terminated_at"] is not None:
            gone = now - record["terminated_at"] >= self.terminating_seconds
            record["status"] = "terminated" if gone else "terminating"
        elif record["name"] in self.never_boot or "*" in self.never_boot:
            record["status"] = "booting"
        elif now - record["launched_at"] >= self.boot_seconds:
            self.machines.boot_vm(record["id"], record["user_data"])
            record["status"] = "active"
            record.update(
                ip=FAKE_IP,
                private_ip="10.0.0.2",
                hostname=f"{FAKE_IP.replace('.', '-')}.cloud.lambdalabs.com",
                jupyter_url=f"https://jupyter-{record['id'][:8]}.lambdaspaces.com",
            )
        return record

    @staticmethod
    def _view(record: dict) -> dict[str, Any]:
        return {k: copy.deepcopy(record[k]) for k in _INSTANCE_KEYS}
