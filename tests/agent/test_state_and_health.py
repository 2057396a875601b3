"""StateStore on a real directory, health probes against a real local HTTP server, HealthTracker
bookkeeping, and the GPU inventory (NVML) helpers."""

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.health_probe import ProbeResult, probe
from chalicelib.protocol import UNHEALTHY_AFTER, GpuInfo
from node_agent import gpus
from node_agent.health import HealthTracker
from node_agent.runtime.base import Handle
from node_agent.state import Record, StateStore

REPO = Path(__file__).resolve().parents[2]

# --- StateStore -----------------------------------------------------------------------------


def record(deployment_id: str, handle: bool = True, **overrides) -> Record:
    return Record(
        **{
            "deployment_id": deployment_id,
            "status": "running",
            "port": 9100,
            "health_path": "/healthz",
            "log_path": f"/var/lib/prism/logs/{deployment_id}.log",
            "handle": Handle(deployment_id, "process", "4242:987654", 9100) if handle else None,
            "endpoint_url": "http://10.0.0.5:9100",
            "framework": "transformers",
            "gpu_indices": [0, 2],
            **overrides,
        }
    )


@pytest.fixture
def store(tmp_path) -> StateStore:
    return StateStore(tmp_path / "state" / "state.json")


def test_a_missing_state_file_loads_as_nothing(store):
    assert store.load() == {}


def test_records_round_trip_with_and_without_a_handle(store):
    records = {
        "dep_a": record("dep_a"),
        "dep_b": record("dep_b", handle=False, status="pulling", endpoint_url=None, gpu_indices=[]),
        "dep_c": record("dep_c", status="unhealthy", stop_requested=True, framework=None),
    }

    store.save(records)
    loaded = store.load()

    assert loaded == records
    assert isinstance(loaded["dep_a"].handle, Handle)
    assert loaded["dep_b"].handle is None


def test_an_empty_state_round_trips(store):
    store.save({})

    assert store.load() == {}


def test_save_writes_valid_json_and_leaves_no_temp_file(store):
    store.save({"dep_a": record("dep_a")})

    data = json.loads(store.path.read_text())
    assert data["dep_a"]["handle"] == {
        "deployment_id": "dep_a",
        "runtime": "process",
        "ref": "4242:987654",
        "port": 9100,
    }
    assert [p.name for p in store.path.parent.iterdir()] == ["state.json"]


def test_a_save_that_fails_half_way_keeps_the_previous_state(store):
    good = {"dep_a": record("dep_a")}
    store.save(good)
    unserializable = record("dep_b", endpoint_url=object())

    with pytest.raises(TypeError):
        store.save({"dep_a": record("dep_a", status="unhealthy"), "dep_b": unserializable})

    assert store.load() == good
    json.loads(store.path.read_text())  # still valid JSON


def test_a_leftover_temp_file_never_replaces_good_state(store):
    good = {"dep_a": record("dep_a")}
    store.save(good)
    leftover = store.path.with_suffix(".tmp")
    leftover.write_text('{"dep_zombie": {"truncated')  # a save killed mid-write

    assert store.load() == good

    store.save(good)
    assert not leftover.exists()
    assert store.load() == good


@pytest.mark.parametrize(
    "content",
    [b'{"dep_a": {"deployment_id": "dep_a", "sta', b"", b"\x00\xff\xfe garbage \x80"],
    ids=["truncated", "empty", "binary"],
)
def test_a_corrupt_state_file_is_moved_aside_and_loads_as_nothing(store, content):
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(content)

    assert store.load() == {}

    assert not store.path.exists()
    assert store.path.with_suffix(".corrupt").read_bytes() == content  # kept for a human
    store.save({"dep_a": record("dep_a")})  # and the agent carries on
    assert list(store.load()) == ["dep_a"]


@pytest.mark.parametrize(
    "content",
    ["[]", "null", '"state"', '{"dep_a": {"deployment_id": "dep_a"}}', '{"dep_a": 1}'],
    ids=["list", "null", "string", "missing-fields", "record-not-an-object"],
)
def test_valid_json_of_the_wrong_shape_is_treated_as_corrupt(store, content):
    store.path.parent.mkdir(parents=True)
    store.path.write_text(content)

    assert store.load() == {}
    assert store.path.with_suffix(".corrupt").read_text() == content


def test_a_record_with_a_field_this_agent_does_not_know_still_loads(store):
    good = record("dep_a")
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({"dep_a": {**asdict(good), "added_by_a_newer_agent": 1}}))

    assert store.load() == {"dep_a": good}  # its model is re-adopted, not orphaned


# --- probe against a real HTTP server --------------------------------------------------------


class _Model(BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):  # noqa: N802 - the http.server API
        if self.path == "/slow":
            time.sleep(0.1)
        if self.path == "/hang":
            self.release.wait(3)
        if self.path == "/stream":  # a health path whose body never ends
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"x" * 1024)
            self.release.wait(3)
            return
        status = {"/broken": 500, "/missing": 404, "/empty": 204, "/moved": 301}.get(self.path, 200)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        if status == 301:
            self.send_header("Location", "/broken")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def model_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    _Model.release.clear()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Model.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=3)
    assert not thread.is_alive()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_200_is_healthy_with_a_measured_latency(model_url):
    result = probe(f"{model_url}/healthz")

    assert result.healthy
    assert result.detail is None
    assert 0 < result.latency_ms < 2_000
    assert round(result.latency_ms, 2) == result.latency_ms


def test_any_2xx_is_healthy(model_url):
    assert probe(f"{model_url}/empty").healthy


def test_a_redirect_is_an_answer_and_healthy_never_followed(model_url):
    # As Kubernetes' httpGet probe: 3xx is healthy; its target (here a 500) is never asked.
    assert probe(f"{model_url}/moved").healthy


def test_the_body_is_never_read_so_a_streaming_health_path_answers_at_once(model_url):
    began = time.monotonic()
    result = probe(f"{model_url}/stream", timeout_s=2.0)

    assert result.healthy  # reading the body would have ended in a ReadTimeout
    assert time.monotonic() - began < 1.5  # before the timeout: only the headers were awaited


def test_latency_covers_the_time_the_model_takes_to_answer(model_url):
    result = probe(f"{model_url}/slow")

    assert result.healthy
    assert result.latency_ms >= 100


@pytest.mark.parametrize("path, status", [("/broken", 500), ("/missing", 404)])
def test_an_error_status_is_unhealthy_with_the_status_as_detail(model_url, path, status):
    result = probe(f"{model_url}{path}")

    assert result == ProbeResult(False, result.latency_ms, f"HTTP {status}")
    assert result.latency_ms is not None and result.latency_ms > 0


def test_a_closed_port_is_unhealthy_without_a_latency():
    result = probe(f"http://127.0.0.1:{closed_port()}/healthz", timeout_s=1)

    assert result == ProbeResult(False, None, "ConnectionError")


def test_a_model_that_does_not_answer_in_time_is_unhealthy(model_url):
    began = time.monotonic()
    result = probe(f"{model_url}/hang", timeout_s=0.2)

    assert result == ProbeResult(False, None, "ReadTimeout")
    assert time.monotonic() - began < 1.5


# --- HealthTracker ---------------------------------------------------------------------------

OK = ProbeResult(True, 1.5)
FAIL = ProbeResult(False, None, "ConnectionError")


def test_plain_successes_are_not_reported():
    tracker = HealthTracker()

    assert [tracker.observe(OK) for _ in range(5)] == [False] * 5
    assert tracker.healthy
    assert tracker.consecutive_failures == 0


def test_three_consecutive_failures_make_it_unhealthy():
    tracker = HealthTracker()

    healthy_after_each = []
    for _ in range(4):
        tracker.observe(FAIL)
        healthy_after_each.append(tracker.healthy)

    assert UNHEALTHY_AFTER == 3
    assert healthy_after_each == [True, True, False, False]
    assert tracker.consecutive_failures == 4


def test_every_failure_up_to_the_third_is_reported_and_later_ones_are_not():
    tracker = HealthTracker()

    assert [tracker.observe(FAIL) for _ in range(6)] == [True, True, True, False, False, False]


def test_the_first_success_after_failures_is_reported_and_resets_the_count():
    tracker = HealthTracker()
    for _ in range(5):
        tracker.observe(FAIL)

    assert tracker.observe(OK) is True
    assert tracker.healthy
    assert tracker.consecutive_failures == 0
    assert tracker.observe(OK) is False  # only the first one
    assert tracker.observe(FAIL) is True  # a new run of failures is reported again
    assert tracker.healthy


def test_failures_that_are_not_consecutive_never_make_it_unhealthy():
    tracker = HealthTracker()

    for outcome in [FAIL, FAIL, OK, FAIL, FAIL, OK, FAIL, FAIL]:
        tracker.observe(outcome)
        assert tracker.healthy


@given(st.lists(st.booleans(), max_size=40))
def test_unhealthy_exactly_when_the_last_three_or_more_observations_failed(outcomes):
    tracker = HealthTracker()
    for i, ok in enumerate(outcomes):
        reported = tracker.observe(OK if ok else FAIL)

        seen = outcomes[: i + 1]
        trailing_failures = len(seen) - len("".join("x" if o else "-" for o in seen).rstrip("-"))
        assert tracker.healthy == (trailing_failures < 3)
        assert tracker.consecutive_failures == trailing_failures
        previous_failed = i > 0 and not outcomes[i - 1]
        assert reported == (previous_failed if ok else trailing_failures <= 3)


# --- GPU inventory ---------------------------------------------------------------------------

HAS_NVIDIA_DRIVER = Path("/dev/nvidiactl").exists()


class FakeNvml(SimpleNamespace):
    """Stands in for the pynvml module: `devices` as (name, uuid, total bytes)."""

    def __init__(self, devices=(), init_error=None, count_error=None):
        super().__init__(devices=list(devices), shutdowns=0)
        self.init_error = init_error
        self.count_error = count_error

    def nvmlInit(self):  # noqa: N802 - pynvml's names
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetCount(self):  # noqa: N802
        if self.count_error:
            raise self.count_error
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        return self.devices[index]

    def nvmlDeviceGetName(self, handle):  # noqa: N802
        return handle[0]

    def nvmlDeviceGetUUID(self, handle):  # noqa: N802
        return handle[1]

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        return SimpleNamespace(total=handle[2], free=handle[2], used=0)

    def nvmlShutdown(self):  # noqa: N802
        self.shutdowns += 1


@pytest.mark.skipif(HAS_NVIDIA_DRIVER, reason="this machine has an NVIDIA driver")
def test_inventory_without_a_gpu_is_empty():
    assert gpus.inventory() == []


@pytest.mark.skipif(HAS_NVIDIA_DRIVER, reason="this machine has an NVIDIA driver")
def test_the_gpus_command_prints_nothing_on_a_cpu_only_node():
    done = subprocess.run(
        [sys.executable, "-m", "node_agent.gpus"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.skipif(not HAS_NVIDIA_DRIVER, reason="needs an NVIDIA GPU and driver")
def test_inventory_lists_the_real_gpus():
    found = gpus.inventory()

    assert found, "a driver is present but no GPU was listed"
    assert [g.index for g in found] == list(range(len(found)))
    for gpu in found:
        assert isinstance(gpu.name, str) and gpu.name
        assert isinstance(gpu.uuid, str) and gpu.uuid.startswith("GPU-")
        assert gpu.memory_total_mb > 1024


def test_inventory_without_the_nvml_library_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError

    assert gpus.inventory() == []


def test_inventory_when_nvml_cannot_start_is_empty(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "pynvml", FakeNvml(init_error=OSError("NVML Shared Library Not Found"))
    )

    assert gpus.inventory() == []


def test_inventory_that_fails_half_way_is_empty_and_still_shuts_nvml_down(monkeypatch):
    nvml = FakeNvml(count_error=RuntimeError("GPU is lost"))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    assert gpus.inventory() == []
    assert nvml.shutdowns == 1


def test_inventory_decodes_what_nvml_reports(monkeypatch):
    nvml = FakeNvml(
        [
            (b"NVIDIA A100-SXM4-80GB", b"GPU-aaaa", 80 * 1024**3),
            ("NVIDIA H100 80GB HBM3", "GPU-bbbb", 80 * 1024**3 + 1),
        ]
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    assert gpus.inventory() == [
        GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB", uuid="GPU-aaaa", memory_total_mb=81920),
        GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", uuid="GPU-bbbb", memory_total_mb=81920),
    ]
    assert nvml.shutdowns == 1


NODE_GPUS = [
    GpuInfo(index=0, name="NVIDIA A100-SXM4-80GB"),
    GpuInfo(index=1, name="NVIDIA A100-SXM4-80GB"),
    GpuInfo(index=2, name="NVIDIA H100 80GB HBM3"),
    GpuInfo(index=3, name="Tesla T4"),
]


@pytest.mark.parametrize(
    "in_use, wanted, free",
    [
        (set(), None, [0, 1, 2, 3]),
        ({1, 3}, None, [0, 2]),
        (set(), "A100", [0, 1]),
        ({0}, "a100", [1]),
        (set(), "h100", [2]),
        (set(), "tesla-t4", [3]),
        ({2}, "H100", []),
        (set(), "V100", []),
    ],
)
def test_free_indices_skips_gpus_in_use_and_of_another_type(in_use, wanted, free):
    assert gpus.free_indices(NODE_GPUS, in_use, wanted) == free


def test_no_gpus_means_no_free_indices():
    assert gpus.free_indices([], set(), None) == []
