"""The REST API over HTTP. The CLI never touches the store."""

from dataclasses import dataclass, field
from urllib.parse import quote

import requests


@dataclass
class ApiError(Exception):
    status: int | None
    code: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.http = requests.Session()

    def _request(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        headers = kwargs.pop("headers", {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url + path
        try:
            response = self.http.request(
                method, url, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise ApiError(
                None,
                "unreachable",
                f"cannot reach the PRISM API at {self.base_url} ({type(exc).__name__}); "
                "is the platform running (`make up`) and PRISM_API_URL right?",
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = {"code": "http_error", "message": f"HTTP {response.status_code} from {url}"}
            raise ApiError(
                response.status_code,
                error.get("code", "error"),
                error.get("message", ""),
                error.get("fields") or {},
            )
        return response.status_code, body

    def create_deployment(self, body: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/api/v1/compute/deployments", json=body, headers=headers)[1]

    def list_deployments(
        self, statuses: list[str] | None = None, limit: int = 50, next_token: str | None = None
    ) -> dict:
        params = {"limit": limit}
        if statuses:
            params["status"] = ",".join(statuses)
        if next_token:
            params["next_token"] = next_token
        return self._request("GET", "/api/v1/compute/deployments", params=params)[1]

    def get_deployment(self, deployment_id: str) -> dict:
        return self._request("GET", _deployment_path(deployment_id))[1]

    def stop_deployment(self, deployment_id: str) -> dict:
        return self._request("DELETE", _deployment_path(deployment_id))[1]

    def rotate_endpoint_key(self, deployment_id: str) -> dict:
        return self._request("POST", _deployment_path(deployment_id) + "/endpoint-keys")[1]

    def deployment_health(self, deployment_id: str) -> dict:
        return self._request("GET", _deployment_path(deployment_id) + "/health")[1]

    def deployment_logs(self, deployment_id: str, tail: int) -> dict:
        return self._request(
            "GET", _deployment_path(deployment_id) + "/logs", params={"tail": tail}
        )[1]

    def deployment_costs(self, deployment_id: str, limit: int) -> dict:
        return self._request(
            "GET", _deployment_path(deployment_id) + "/costs", params={"limit": limit}
        )[1]

    def register_node(self, name: str) -> dict:
        return self._request("POST", "/api/v1/compute/nodes", json={"name": name})[1]

    def list_nodes(self) -> dict:
        return self._request("GET", "/api/v1/compute/nodes")[1]

    def list_resources(self) -> dict:
        return self._request("GET", "/api/v1/marketplace/resources")[1]


def _deployment_path(deployment_id: str) -> str:
    # Quoted whole, so an id like "../x" can never address another route.
    return f"/api/v1/compute/deployments/{quote(deployment_id, safe='')}"
