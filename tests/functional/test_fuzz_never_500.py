"""Whatever a client sends, the answer is a 2xx or a clear 4xx in our error shape, never a 500."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BASE = "/api/v1/compute/deployments"
FIELDS = [
    "name",
    "image",
    "resource_slug",
    "weights_source",
    "target",
    "framework",
    "command",
    "gpu",
    "gpu_type",
    "deploy_config",
    "env_vars",
    "budget_max_usd",
    "allow_insecure_http",
    "port",
    "zzz",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.sampled_from(
        ["nginx", "hf://a/b", "/srv/m", "prism_node", "mace-mp-0", "runpod", "A100", "m"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["port", "health_path", "X", "1"]), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_clean(response):
    assert response.status_code < 500, response.body
    if response.status_code >= 400:
        assert set(json.loads(response.body)["error"]) >= {"code", "message"}


@FUZZ
@given(body=bodies)
def test_random_create_bodies_never_500(api, body):
    assert_clean(api.post(BASE, body))


@FUZZ
@given(
    query=st.dictionaries(
        st.sampled_from(["status", "limit", "next_token", "x"]),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789,-_=", max_size=20),
        max_size=3,
    )
)
def test_random_list_queries_never_500(api, query):
    path = BASE + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    assert_clean(api.get(path))
