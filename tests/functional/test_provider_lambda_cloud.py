"""The real Lambda Cloud provider against the fake Lambda Cloud API, over real HTTP."""

import socket
import time
from decimal import Decimal

import pytest
import requests

from chalicelib.providers.base import (
    AuthError,
    CapacityError,
    InstanceState,
    InvalidRequest,
    LaunchSpec,
    Offer,
    ProviderError,
    RateLimited,
    TransientError,
)
from chalicelib.providers.lambda_cloud import LambdaCloudProvider, _retry_after, _serves
from prism.dev.fakes.lambda_catalog import instance_type_entry
from prism.dev.fakes.lambda_cloud import FakeLambdaCloud

KEY = "lambda_secret_k3y_0123456789"
USER_DATA = "#cloud-config\nwrite_files: [{path: /etc/prism/token, content: node-secret}]\n"
A100_EAST = Offer("gpu_1x_a100_sxm4", "us-east-1", Decimal("1.29"))


@pytest.fixture
def cloud():
    with FakeLambdaCloud(api_key=KEY, boot_seconds=0.2) as fake:
        yield fake


@pytest.fixture
def provider(cloud):
    return make_provider(cloud)


def make_provider(cloud, key=KEY, **kwargs):
    return LambdaCloudProvider(
        key, "prism-ops", api_url=cloud.url, endpoint_template=cloud.endpoint_template, **kwargs
    )


def spec(deployment_id="dep1", port=8000, user_data=USER_DATA):
    return LaunchSpec(deployment_id=deployment_id, image=None, port=port, user_data=user_data)


def wait_for(probe, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def wait_state(provider, instance_id, state, port=None):
    return wait_for(lambda: (i := provider.get(instance_id, port=port)) and i.state is state and i)


# -- offers ------------------------------------------------------------------------------------


def test_offers_one_per_region_with_capacity(provider, cloud):
    assert provider.offers("A100") == [
        A100_EAST,
        Offer("gpu_1x_a100_sxm4", "us-west-1", Decimal("1.29")),
    ]
    cloud.no_capacity.add(("gpu_1x_a100_sxm4", "us-west-1"))
    assert provider.offers("a100") == [A100_EAST]


def test_offers_match_whole_gpu_names(provider):
    assert [o.gpu_type for o in provider.offers("A10")] == ["gpu_1x_a10", "gpu_1x_a10"]
    assert [o.gpu_type for o in provider.offers("h100")] == ["gpu_1x_h100_pcie"]
    assert provider.offers("B200") == []


def test_multi_gpu_types_only_when_no_single_gpu_type_matches(provider, cloud):
    assert provider.offers("A100 80GB") == [
        Offer("gpu_8x_a100_80gb_sxm4", "us-east-1", Decimal("14.32"))
    ]
    # A sold-out single-GPU type still wins: an 8-GPU machine would cost ~10x.
    cloud.no_capacity |= {("gpu_1x_a100_sxm4", "us-east-1"), ("gpu_1x_a100_sxm4", "us-west-1")}
    assert provider.offers("A100") == []


def test_offers_cheapest_first():
    types = {
        "gpu_1x_h100_sxm5": instance_type_entry(
            "gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 329, ["us-west-3"]
        ),
        "gpu_1x_h100_pcie": instance_type_entry(
            "gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 249, ["us-west-3", "us-east-1"]
        ),
        "gpu_1x_gh200": instance_type_entry("gpu_1x_gh200", "GH200 (96 GB)", 149, ["us-east-1"]),
    }
    with FakeLambdaCloud(api_key=KEY, instance_types=types) as cloud:
        offers = make_provider(cloud).offers("H100")
    assert [(o.gpu_type, o.region, o.price_per_hour) for o in offers] == [
        ("gpu_1x_h100_pcie", "us-east-1", Decimal("2.49")),
        ("gpu_1x_h100_pcie", "us-west-3", Decimal("2.49")),
        ("gpu_1x_h100_sxm5", "us-west-3", Decimal("3.29")),
    ]


# Lambda's own instance types: (name, gpu_description, cents per hour, gpus).
REAL_TYPES = {
    name: instance_type_entry(name, gpu, cents, ["us-east-1"], gpus=gpus)
    for name, gpu, cents, gpus in [
        ("gpu_1x_rtx6000", "RTX 6000 (24 GB)", 50, 1),
        ("gpu_1x_a10", "A10 (24 GB PCIe)", 75, 1),
        ("gpu_1x_a6000", "RTX A6000 (48 GB)", 80, 1),
        ("gpu_1x_a100", "A100 (40 GB PCIe)", 129, 1),
        ("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 139, 1),
        ("gpu_1x_gh200", "GH200 (96 GB)", 149, 1),
        ("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 249, 1),
        ("gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 329, 1),
        ("gpu_8x_a100", "A100 (40 GB SXM4)", 1032, 8),
        ("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 1432, 8),
        ("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 2392, 8),
    ]
}
A100_TYPES = {"gpu_1x_a100", "gpu_1x_a100_sxm4", "gpu_8x_a100", "gpu_8x_a100_80gb_sxm4"}


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("A100", A100_TYPES),  # 40 and 80 GB, never the A10
        ("a100", A100_TYPES),
        ("A100-80GB", {"gpu_8x_a100_80gb_sxm4"}),  # "8x" counts GPUs: gpu_8x_a100 has 40 GB
        ("a100 80gb", {"gpu_8x_a100_80gb_sxm4"}),
        ("A100-40GB", {"gpu_1x_a100", "gpu_1x_a100_sxm4", "gpu_8x_a100"}),
        ("A100-SXM", {"gpu_1x_a100_sxm4", "gpu_8x_a100", "gpu_8x_a100_80gb_sxm4"}),
        ("A100 PCIe", {"gpu_1x_a100"}),
        ("A10", {"gpu_1x_a10"}),
        ("H100", {"gpu_1x_h100_pcie", "gpu_1x_h100_sxm5", "gpu_8x_h100_sxm5"}),  # no GH200
        ("H100-SXM", {"gpu_1x_h100_sxm5", "gpu_8x_h100_sxm5"}),
        ("H100 PCIe", {"gpu_1x_h100_pcie"}),
        ("GH200", {"gpu_1x_gh200"}),
        ("RTX A6000", {"gpu_1x_a6000"}),
        ("RTX 6000", {"gpu_1x_rtx6000"}),
        ("RTX 6000 Ada", set()),
        ("L40", set()),
        ("B200", set()),
    ],
)
def test_which_real_instance_types_serve_a_request(asked, expected):
    assert {name for name, entry in REAL_TYPES.items() if _serves(entry, asked)} == expected


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("A100", ["gpu_1x_a100", "gpu_1x_a100_sxm4"]),  # single-GPU types first
        ("A100-80GB", ["gpu_8x_a100_80gb_sxm4"]),  # only an 8-GPU type has it
        ("H100-SXM", ["gpu_1x_h100_sxm5"]),
        ("A10", ["gpu_1x_a10"]),
        ("", []),  # nothing named, nothing rented
    ],
)
def test_offers_over_lambdas_real_instance_types(asked, expected):
    with FakeLambdaCloud(api_key=KEY, instance_types=REAL_TYPES) as cloud:
        offers = make_provider(cloud).offers(asked)
    assert [o.gpu_type for o in offers] == expected


# -- lifecycle ---------------------------------------------------------------------------------


def test_launch_boots_to_running_with_an_answering_endpoint(provider, cloud):
    launched = provider.launch(spec(), A100_EAST)
    assert launched.state is InstanceState.PENDING
    assert launched.provider_status == "booting"
    assert (launched.name, launched.deployment_id) == ("prism-dep1", "dep1")
    assert (launched.price_per_hour, launched.region) == (Decimal("1.29"), "us-east-1")
    assert launched.endpoint_url is None

    running = wait_state(provider, launched.id, InstanceState.RUNNING, port=8000)
    assert running.ip == "127.0.0.1"
    assert running.endpoint_url == f"{cloud.base_url}/vm/{launched.id}/8000"
    health = requests.get(f"{running.endpoint_url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"ok": True, "instance": launched.id}
    assert provider.get(launched.id).endpoint_url is None  # no port, no endpoint


def test_launch_body_carries_name_ssh_key_and_user_data(provider, cloud):
    provider.launch(spec(), A100_EAST)
    provider.launch(spec("dep2", user_data=None), A100_EAST)
    assert cloud.launches == [
        {
            "region_name": "us-east-1",
            "instance_type_name": "gpu_1x_a100_sxm4",
            "ssh_key_names": ["prism-ops"],
            "quantity": 1,
            "name": "prism-dep1",
            "user_data": USER_DATA,
        },
        {
            "region_name": "us-east-1",
            "instance_type_name": "gpu_1x_a100_sxm4",
            "ssh_key_names": ["prism-ops"],
            "quantity": 1,
            "name": "prism-dep2",
        },
    ]


def test_launch_still_returns_the_instance_when_the_follow_up_read_fails(provider, monkeypatch):
    def flaky_get(instance_id, port=None):
        raise RateLimited("slow down", 1)

    monkeypatch.setattr(provider, "get", flaky_get)
    launched = provider.launch(spec(), A100_EAST)
    assert launched.state is InstanceState.PENDING
    assert (launched.name, launched.region, launched.price_per_hour) == (
        "prism-dep1",
        "us-east-1",
        Decimal("1.29"),
    )


def test_terminate_stops_then_terminates_and_is_idempotent(provider, cloud):
    cloud.terminating_seconds = 0.5
    instance = provider.launch(spec(), A100_EAST)
    wait_state(provider, instance.id, InstanceState.RUNNING)

    provider.terminate(instance.id)
    assert provider.get(instance.id).state is InstanceState.STOPPING
    assert cloud.live_instances() == []  # billing stopped at the call
    provider.terminate(instance.id)  # while terminating
    gone = wait_state(provider, instance.id, InstanceState.TERMINATED)
    assert gone.provider_status == "terminated"
    provider.terminate(instance.id)  # once terminated


def test_unknown_or_forgotten_instances_are_gone(provider, cloud):
    assert provider.get("0123456789abcdef0123456789abcdef") is None
    provider.terminate("0123456789abcdef0123456789abcdef")  # already gone: success

    cloud.terminating_seconds = cloud.forget_after_s = 0
    instance = provider.launch(spec(), A100_EAST)
    provider.terminate(instance.id)
    assert provider.get(instance.id) is None


def test_terminate_failures_are_transient(provider, cloud):
    instance = provider.launch(spec(), A100_EAST)
    cloud.terminate_failures = 1
    with pytest.raises(TransientError):
        provider.terminate(instance.id)
    assert len(cloud.live_instances()) == 1
    provider.terminate(instance.id)
    assert cloud.live_instances() == []


def test_never_booting_and_unhealthy_instances(provider, cloud):
    cloud.never_boot.add("prism-stuck")
    stuck = provider.launch(spec("stuck"), A100_EAST)
    sick = provider.launch(spec("sick"), A100_EAST)
    cloud.unhealthy.add(sick.id)
    running = wait_state(provider, sick.id, InstanceState.RUNNING, port=9000)
    assert requests.get(running.endpoint_url, timeout=5).status_code == 500
    assert provider.get(stuck.id, port=9000).state is InstanceState.PENDING
    stuck_url = cloud.endpoint_template.format(id=stuck.id, port=9000)
    assert requests.post(f"{stuck_url}/generate", timeout=5).status_code == 502


def test_list_owned_keeps_only_our_live_instances(provider, cloud):
    ours = provider.launch(spec("mine"), A100_EAST)
    done = provider.launch(spec("done"), A100_EAST)
    foreign = {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a10",
        "ssh_key_names": ["someone"],
        "name": "notebook",
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{cloud.url}/instance-operations/launch"
    assert requests.post(url, json=foreign, headers=headers, timeout=5).ok
    cloud.terminating_seconds = 0
    provider.terminate(done.id)

    owned = provider.list_owned()
    assert [(i.id, i.name, i.deployment_id) for i in owned] == [(ours.id, "prism-mine", "mine")]
    assert owned[0].endpoint_url is None
    assert owned[0].price_per_hour == Decimal("1.29")


# -- errors ------------------------------------------------------------------------------------


def test_capacity_errors(provider, cloud):
    cloud.capacity_failures = 1
    with pytest.raises(CapacityError, match="capacity"):
        provider.launch(spec(), A100_EAST)
    assert provider.launch(spec(), A100_EAST).state is InstanceState.PENDING

    cloud.no_capacity.add(("gpu_1x_a100_sxm4", "us-west-1"))
    with pytest.raises(CapacityError):
        provider.launch(spec(), Offer("gpu_1x_a100_sxm4", "us-west-1", Decimal("1.29")))
    with pytest.raises(CapacityError):  # the type is not offered in that region
        provider.launch(spec(), Offer("gpu_1x_h100_pcie", "us-east-1", Decimal("2.49")))
    assert len(cloud.launches) == 1


@pytest.mark.parametrize(("retry_after", "expected"), [(7, 7.0), (1.5, 1.5)])
def test_rate_limited_carries_retry_after(provider, cloud, retry_after, expected):
    cloud.rate_limit_next, cloud.retry_after_s = 1, retry_after
    with pytest.raises(RateLimited) as caught:
        provider.offers("A100")
    assert caught.value.retry_after_s == expected
    assert caught.value.retryable
    assert provider.offers("A100")  # the next request goes through


def test_retry_after_as_http_date():
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


def test_server_errors_and_unreachable_api_are_transient(provider, cloud):
    cloud.server_error_next = 1
    with pytest.raises(TransientError) as caught:
        provider.get("anything")
    assert caught.value.retryable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = LambdaCloudProvider(KEY, "k", api_url=f"http://127.0.0.1:{port}/api/v1")
    with pytest.raises(TransientError, match="unreachable"):
        refused.list_owned()


def test_timeouts_are_transient():
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api/v1"
        slow = LambdaCloudProvider(KEY, "k", api_url=url, timeout_s=0.2)
        with pytest.raises(TransientError, match="Timeout"):
            slow.offers("A100")


def test_bad_key_is_an_auth_error(cloud):
    with pytest.raises(AuthError, match="API key was invalid"):
        make_provider(cloud, key="lambda_wrong_key").offers("A100")
    with pytest.raises(AuthError):
        make_provider(cloud, key="").get("x")


def test_invalid_parameters_and_quota_are_invalid_requests(provider, cloud):
    with pytest.raises(InvalidRequest, match="Invalid instance type"):
        provider.launch(spec(), Offer("gpu_1x_nonexistent", "us-east-1", Decimal(1)))
    with pytest.raises(InvalidRequest, match="at most 64"):
        provider.launch(spec("x" * 80), A100_EAST)
    cloud.quota = 0
    with pytest.raises(InvalidRequest, match="quota.*contact support") as caught:
        provider.launch(spec(), A100_EAST)
    assert not caught.value.retryable
    assert cloud.launches == []


def test_the_key_and_user_data_never_appear_in_errors(cloud):
    provider = make_provider(cloud)
    failures = []

    def record(call):
        with pytest.raises(ProviderError) as caught:
            call()
        failures.append(caught.value)

    cloud.rate_limit_next = 1
    record(lambda: provider.offers("A100"))
    cloud.server_error_next = 1
    record(lambda: provider.launch(spec(), A100_EAST))
    cloud.capacity_failures = 1
    record(lambda: provider.launch(spec(), A100_EAST))
    record(lambda: provider.launch(spec(), Offer("nope", "us-east-1", Decimal(1))))
    record(lambda: make_provider(cloud, key=KEY + "x").list_owned())
    # a URL holding the key (misconfiguration) is redacted in connection errors too
    record(lambda: LambdaCloudProvider(KEY, "k", api_url=f"http://{KEY}.invalid/api/v1").get("i"))
    assert len(failures) == 6
    for failure in failures:
        for text in (str(failure), repr(failure), repr(failure.args)):
            assert KEY not in text
            assert "node-secret" not in text
    assert KEY not in repr(provider)


# -- billing -----------------------------------------------------------------------------------


def test_bill_is_price_times_duration(provider, cloud):
    instance = provider.launch(spec(), A100_EAST)
    launched_at = cloud.instances[instance.id]["launched_at"]
    assert cloud.bill(instance.id, now=launched_at + 3600) == Decimal("1.29")
    assert cloud.bill(instance.id, now=launched_at + 1800) == Decimal("0.645")

    provider.terminate(instance.id)
    record = cloud.instances[instance.id]
    billed = Decimal("1.29") * Decimal(record["terminated_at"] - launched_at) / 3600
    assert cloud.bill(instance.id) == billed
    assert cloud.bill(instance.id, now=launched_at + 3600) == billed  # stopped at terminate
    assert cloud.total_bill() == billed
