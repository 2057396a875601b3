"""RunPodProvider against the fake RunPod over real HTTP: offers, the pod lifecycle, the proxy
endpoint, the typed errors, billing, and that user values and the key stay where they belong."""

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
from chalicelib.providers.runpod import RunPodProvider
from prism.dev.fakes.runpod import FakeRunPod

KEY = "rp_secret_key_5f3a"
A100_PCIE = Offer("NVIDIA A100 80GB PCIe", None, Decimal("1.64"))


@pytest.fixture
def fake():
    with FakeRunPod(api_key=KEY, boot_seconds=0.2) as server:
        yield server


def provider_for(fake: FakeRunPod, **kwargs) -> RunPodProvider:
    kwargs.setdefault("api_key", KEY)
    return RunPodProvider(
        api_url=fake.url, endpoint_template=fake.endpoint_template, timeout_s=5, **kwargs
    )


@pytest.fixture
def provider(fake):
    return provider_for(fake)


def spec(deployment_id="dep1", **kwargs) -> LaunchSpec:
    kwargs.setdefault("image", "ghcr.io/org/model:1")
    kwargs.setdefault("port", 8000)
    return LaunchSpec(deployment_id=deployment_id, **kwargs)


def wait_for(provider, pod_id, state, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        instance = provider.get(pod_id)
        if instance is not None and instance.state is state:
            return instance
        assert time.monotonic() < deadline, f"pod {pod_id} never reached {state}: {instance}"
        time.sleep(0.05)


def raw_graphql(fake, query, variables=None, key=KEY):
    return requests.post(
        fake.url,
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )


# Offers


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("A100", [("NVIDIA A100 80GB PCIe", "1.64"), ("NVIDIA A100-SXM4-80GB", "1.94")]),
        ("a100 80gb", [("NVIDIA A100 80GB PCIe", "1.64"), ("NVIDIA A100-SXM4-80GB", "1.94")]),
        ("A100 SXM", [("NVIDIA A100-SXM4-80GB", "1.94")]),
        ("H100", [("NVIDIA H100 80GB HBM3", "2.69")]),
        ("RTX4090", [("NVIDIA GeForce RTX 4090", "0.44")]),
        ("rtx-4090", [("NVIDIA GeForce RTX 4090", "0.44")]),
        ("nvidia geforce rtx 4090", [("NVIDIA GeForce RTX 4090", "0.44")]),
        ("A10", []),  # a prefix of A100 is another GPU
        ("B200", []),
    ],
)
def test_offers_match_case_insensitively_cheapest_first(provider, asked, expected):
    offers = provider.offers(asked)
    assert [(o.gpu_type, o.price_per_hour) for o in offers] == [
        (gpu, Decimal(price)) for gpu, price in expected
    ]
    assert all(o.region is None for o in offers)


# RunPod's own gpuTypes (id, displayName, memoryInGb), cheapest first at these prices.
REAL_GPU_TYPES = [
    ("NVIDIA L4", "L4", 24),
    ("NVIDIA GeForce RTX 4090", "RTX 4090", 24),
    ("NVIDIA RTX A6000", "RTX A6000", 48),
    ("NVIDIA L40", "L40", 48),
    ("NVIDIA L40S", "L40S", 48),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 48),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM", 80),
    ("NVIDIA H100 PCIe", "H100 PCIe", 80),
    ("NVIDIA H100 NVL", "H100 NVL", 94),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80),
    ("NVIDIA H200", "H200 SXM", 141),
    ("AMD Instinct MI300X OAM", "MI300X", 192),
]


@pytest.fixture(scope="module")
def real_catalog():
    gpu_types = [
        {"id": i, "displayName": d, "memoryInGb": m, "securePrice": n + 1, "communityPrice": None}
        for n, (i, d, m) in enumerate(REAL_GPU_TYPES)
    ]
    with FakeRunPod(api_key=KEY, gpu_types=gpu_types) as server:
        yield provider_for(server)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("A100", ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]),
        ("A100-80GB", ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]),
        ("a100 80gb", ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]),
        ("A100-40GB", []),
        ("A100-SXM", ["NVIDIA A100-SXM4-80GB"]),
        ("A100 PCIe", ["NVIDIA A100 80GB PCIe"]),
        ("A10", []),
        ("H100", ["NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3"]),
        ("H100-SXM", ["NVIDIA H100 80GB HBM3"]),
        ("H100 NVL", ["NVIDIA H100 NVL"]),
        ("H100-94GB", ["NVIDIA H100 NVL"]),  # memoryInGb tells what the id does not
        ("H200", ["NVIDIA H200"]),
        ("RTX A6000", ["NVIDIA RTX A6000"]),
        ("RTX 6000 Ada", ["NVIDIA RTX 6000 Ada Generation"]),
        ("RTX4090", ["NVIDIA GeForce RTX 4090"]),
        ("L40", ["NVIDIA L40"]),
        ("L40S", ["NVIDIA L40S"]),
        ("L4", ["NVIDIA L4"]),
        ("MI300X", ["AMD Instinct MI300X OAM"]),  # no family we know: its display name
        ("B200", []),
        ("", []),  # nothing named, nothing rented
    ],
)
def test_offers_over_runpods_real_gpu_types(real_catalog, asked, expected):
    assert [o.gpu_type for o in real_catalog.offers(asked)] == expected


def test_offers_price_per_cloud_type(fake):
    secure = provider_for(fake, cloud_type="SECURE").offers("A100")
    assert [o.price_per_hour for o in secure] == [Decimal("1.89"), Decimal("2.29")]
    assert provider_for(fake, cloud_type="COMMUNITY").offers("A40") == []  # secure-only GPU
    assert provider_for(fake).offers("A40")[0].price_per_hour == Decimal("0.44")


# Lifecycle


def test_launch_boots_to_running_with_a_reachable_endpoint(fake, provider):
    instance = provider.launch(spec(env={"HF_TOKEN": "hf_x"}), A100_PCIE)
    assert instance.state is InstanceState.PENDING
    assert instance.name == "prism-dep1" and instance.deployment_id == "dep1"
    assert instance.price_per_hour == Decimal("1.64")
    assert instance.endpoint_url is None

    pod = fake.pods[instance.id]
    assert pod["gpuTypeId"] == "NVIDIA A100 80GB PCIe"
    assert (pod["ports"], pod["cloudType"], pod["containerDiskInGb"]) == ("8000/http", "ALL", 50)
    assert pod["env"] == {"HF_TOKEN": "hf_x"}

    running = wait_for(provider, instance.id, InstanceState.RUNNING)
    assert running.provider_status == "RUNNING"
    assert running.endpoint_url == fake.endpoint_template.format(id=instance.id, port=8000)
    answer = requests.get(f"{running.endpoint_url}/health", timeout=5)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "pod": instance.id}


def test_price_is_the_pods_cost_per_hour(provider):
    instance = provider.launch(spec(gpu_count=2), A100_PCIE)
    assert instance.price_per_hour == Decimal("3.28")
    assert provider.get(instance.id).price_per_hour == Decimal("3.28")


def test_a_pod_that_never_boots_stays_pending_and_its_proxy_answers_502(fake, provider):
    fake.never_boot.add("prism-slow")
    instance = provider.launch(spec("slow"), A100_PCIE)
    time.sleep(0.4)
    assert provider.get(instance.id).state is InstanceState.PENDING
    url = fake.endpoint_template.format(id=instance.id, port=8000)
    assert requests.get(f"{url}/health", timeout=5).status_code == 502


def test_an_unhealthy_pod_answers_500_through_the_proxy(fake, provider):
    instance = provider.launch(spec(), A100_PCIE)
    fake.unhealthy.add(instance.id)
    running = wait_for(provider, instance.id, InstanceState.RUNNING)
    assert requests.post(f"{running.endpoint_url}/v1/generate", timeout=5).status_code == 500
    assert requests.get(f"{fake.base_url}/proxy/nosuchpod-8000/", timeout=5).status_code == 404


@pytest.mark.parametrize("status", ["EXITED", "PAUSED"])
def test_a_stopped_pod_is_failed(fake, provider, status):
    instance = provider.launch(spec(), A100_PCIE)
    fake.pods[instance.id]["desiredStatus"] = status
    got = provider.get(instance.id)
    assert (got.state, got.provider_status, got.endpoint_url) == (
        InstanceState.FAILED,
        status,
        None,
    )


def test_terminate_is_idempotent_and_the_pod_is_gone(fake, provider):
    instance = provider.launch(spec(), A100_PCIE)
    provider.terminate(instance.id)
    assert provider.get(instance.id) is None
    provider.terminate(instance.id)  # "pod not found to terminate" is success
    provider.terminate("nosuchpod12345")
    assert fake.live_pods() == []


def test_a_terminated_pod_may_still_show_as_terminated(fake, provider):
    fake.terminated_visible_s = 60
    instance = provider.launch(spec(), A100_PCIE)
    provider.terminate(instance.id)
    got = provider.get(instance.id)
    assert (got.state, got.provider_status) == (InstanceState.TERMINATED, "TERMINATED")
    provider.terminate(instance.id)
    assert provider.list_owned() == []


def test_list_owned_returns_only_live_prism_pods(fake, provider):
    ours = provider.launch(spec("a"), A100_PCIE)
    gone = provider.launch(spec("b"), A100_PCIE)
    provider.terminate(gone.id)
    # Someone else's pod on the same account, deployed with inline literals as the SDK does.
    response = raw_graphql(
        fake,
        'mutation { podFindAndDeployOnDemand(input: {name: "notebook", imageName: "jupyter", '
        'gpuTypeId: "NVIDIA GeForce RTX 4090", gpuCount: 1, cloudType: SECURE, '
        'env: [{key: "A", value: "b\\"c"}]}) { id name pid: id } }',
    )
    theirs = response.json()["data"]["podFindAndDeployOnDemand"]
    assert theirs["name"] == "notebook" and theirs["pid"] == theirs["id"]
    assert fake.pods[theirs["id"]]["env"] == {"A": 'b"c'}

    owned = provider.list_owned()
    assert [(i.id, i.name) for i in owned] == [(ours.id, "prism-a")]


# Errors


def test_capacity_errors_are_capacity(fake, provider):
    fake.capacity_failures = 1
    with pytest.raises(CapacityError, match="no longer any instances available"):
        provider.launch(spec(), A100_PCIE)
    assert provider.launch(spec(), A100_PCIE).state is InstanceState.PENDING

    fake.capacity_gpu_types.add("NVIDIA H100 80GB HBM3")
    h100 = provider.offers("H100")[0]
    for _ in range(2):
        with pytest.raises(CapacityError):
            provider.launch(spec(), h100)


@pytest.mark.parametrize(
    "message",
    [
        "There are no longer any instances available with enough disk space.",
        "Not enough free GPUs on the host machine to start this pod.",
        "No GPUs available for this request.",
        "There are no available instances",
    ],
)
def test_capacity_message_variants(provider, message):
    assert isinstance(provider._graphql_error([{"message": message}]), CapacityError)


def test_rate_limit_is_rate_limited_with_retry_after(fake, provider):
    fake.rate_limit_next, fake.retry_after_s = 1, 2.5
    with pytest.raises(RateLimited) as caught:
        provider.offers("A100")
    assert caught.value.retry_after_s == 2.5 and caught.value.retryable
    assert provider.offers("A100")  # the next request goes through


def test_server_errors_and_network_faults_are_transient(fake, provider):
    fake.server_error_next = 1
    with pytest.raises(TransientError):
        provider.list_owned()

    instance = provider.launch(spec(), A100_PCIE)
    fake.terminate_failures = 1
    with pytest.raises(TransientError) as caught:
        provider.terminate(instance.id)
    assert caught.value.retryable
    assert [p["id"] for p in fake.live_pods()] == [instance.id]  # still billed
    provider.terminate(instance.id)
    assert fake.live_pods() == []


def test_unreachable_and_silent_apis_are_transient():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/graphql"
        with pytest.raises(TransientError, match="did not answer"):
            RunPodProvider(KEY, api_url=url, timeout_s=0.2).offers("A100")
    with pytest.raises(TransientError, match="cannot reach"):
        RunPodProvider(KEY, api_url=url, timeout_s=0.2).offers("A100")


def test_a_bad_key_is_an_auth_error(fake):
    with pytest.raises(AuthError) as caught:
        provider_for(fake, api_key="rp_wrong_key_9").offers("A100")
    assert "rp_wrong_key_9" not in str(caught.value)


def test_invalid_requests_are_invalid_with_the_providers_message(provider):
    with pytest.raises(InvalidRequest, match="gpuTypeId"):
        provider.launch(spec(), Offer("NVIDIA B200", None, Decimal(5)))
    with pytest.raises(InvalidRequest, match="gpuCount"):
        provider.launch(spec(gpu_count=0), A100_PCIE)
    with pytest.raises(InvalidRequest, match="image"):
        provider.launch(spec(image=None), A100_PCIE)


def test_the_fake_refuses_unknown_operations_and_fields(fake):
    unknown = raw_graphql(fake, "query { balance }")
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["message"] == 'Cannot query field "balance" on type "Query".'
    assert raw_graphql(fake, "query { pod(input: {podId: 1}) { id bogus } }").status_code == 400
    assert raw_graphql(fake, "subscription { pods }").status_code == 400
    assert raw_graphql(fake, "{ gpuTypes { id } }", key="nope").status_code == 401


# Values and secrets


def test_hostile_env_values_and_names_survive_the_round_trip(fake, provider):
    env = {
        "QUOTES": "say \"hi\" and 'bye'",
        "LINES": "one\ntwo\r\nthree",
        "BACKSLASH": "C:\\path\\n\\u0041 \\",
        "INJECT": '"}]) { id } } mutation { podTerminate(input: {podId: "x"}) } #',
        "UNICODE": "naïve ✓ \u0000",
    }
    instance = provider.launch(spec('d"e}\n'), A100_PCIE)
    assert fake.pods[instance.id]["name"] == 'prism-d"e}\n'
    with_env = provider.launch(spec(env=env), A100_PCIE)
    assert fake.pods[with_env.id]["env"] == env
    assert fake.requests.count("podTerminate") == 0
    assert len(fake.live_pods()) == 2


def test_the_key_never_appears_in_errors(fake, provider):
    def raised(call) -> ProviderError:
        with pytest.raises(ProviderError) as caught:
            call()
        return caught.value

    errors = []
    fake.rate_limit_next = 1
    errors.append(raised(lambda: provider.offers("A100")))
    fake.server_error_next = 1
    errors.append(raised(lambda: provider.offers("A100")))
    fake.capacity_failures = 1
    errors.append(raised(lambda: provider.launch(spec(), A100_PCIE)))
    # The provider echoes what it was sent: the key comes back scrubbed.
    errors.append(raised(lambda: provider.launch(spec(), Offer(KEY, None, Decimal(1)))))
    assert "***" in str(errors[-1])
    errors.append(raised(lambda: provider_for(fake, api_key=KEY + "x").offers("A100")))
    for error in errors:
        assert KEY not in str(error) and KEY not in repr(error)
    assert KEY not in repr(provider)


# Billing


def test_bill_is_price_times_billed_duration(fake, provider):
    instance = provider.launch(spec(), A100_PCIE)
    pod = fake.pods[instance.id]
    assert fake.bill(instance.id, now=pod["created_at"] + 3600) == Decimal("1.64")
    assert fake.bill(instance.id, now=pod["created_at"] + 900) == Decimal("0.41")

    time.sleep(0.05)
    provider.terminate(instance.id)
    billed = fake.bill(instance.id)
    seconds = Decimal(str(pod["terminated_at"] - pod["created_at"]))
    assert billed == Decimal("1.64") * seconds / 3600 > 0
    time.sleep(0.05)
    assert fake.bill(instance.id) == billed  # billing stopped at termination

    other = provider.launch(spec("b"), A100_PCIE)
    provider.terminate(other.id)
    assert fake.total_bill() == billed + fake.bill(other.id)


def test_env_values_quoted_back_in_a_graphql_error_never_reach_the_message(fake, provider):
    """RunPod may echo variables in errors; env values are secrets."""
    spec = LaunchSpec("dep1", "acme/llm:1", 8000, env={"HF_TOKEN": "hf_supersecret"})
    fake.capacity_failures = 0
    bogus = Offer(gpu_type="NVIDIA Nonexistent hf_supersecret", region=None, price_per_hour=1)
    with pytest.raises(ProviderError) as failure:
        provider.launch(spec, bogus)
    assert "hf_supersecret" not in str(failure.value)
