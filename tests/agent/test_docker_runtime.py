"""DockerRuntime through the real docker SDK, against a fake Engine API server over HTTP."""

import socket

import docker
import pytest

from node_agent.runtime.base import Handle, LaunchError, LaunchSpec
from node_agent.runtime.docker import DockerRuntime
from tests.fakes.docker_engine import FakeDockerEngine

IMAGE = "prism/echo:1"
PRIVATE_IMAGE = "private/secret:1"
MANAGED = {"prism.deployment_id": "d1", "prism.managed": "true"}


@pytest.fixture
def engine():
    with FakeDockerEngine(images=[IMAGE], unpullable=[PRIVATE_IMAGE]) as engine:
        yield engine


@pytest.fixture
def client(engine):
    client = docker.DockerClient(base_url=engine.url, version=engine.api_version)
    yield client
    client.close()


@pytest.fixture
def runtime(client):
    return DockerRuntime(client)


def spec(**overrides) -> LaunchSpec:
    return LaunchSpec(**{"deployment_id": "d1", "port": 9100, "image": IMAGE, **overrides})


def created(engine, handle: Handle) -> dict:
    """The body the SDK sent to POST /containers/create for this handle's container."""
    return engine.container(handle.ref).body


# --- start: what the container is created with ----------------------------------------------


def test_start_names_labels_and_runs_the_container(runtime, engine):
    handle = runtime.start(spec(command=["python", "serve.py"]))

    container = engine.container(handle.ref)
    assert handle == Handle("d1", "docker", container.id, 9100)
    assert container.name == "prism-d1"
    assert container.status == "running"
    assert container.body["Image"] == IMAGE
    assert container.body["Cmd"] == ["python", "serve.py"]
    assert container.body["Labels"] == MANAGED
    assert container.body["HostConfig"]["RestartPolicy"] == {"Name": "no"}


def test_an_empty_command_keeps_the_image_default(runtime, engine):
    assert "Cmd" not in created(engine, runtime.start(spec(command=[])))


def test_the_host_port_is_bound_on_loopback_only(runtime, engine):
    handle = runtime.start(spec(port=9100, container_port=8000))

    body = created(engine, handle)
    assert body["HostConfig"]["PortBindings"] == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9100"}]
    }
    assert "PORT=8000" in body["Env"]


def test_the_container_port_defaults_to_the_host_port(runtime, engine):
    body = created(engine, runtime.start(spec(port=9100)))

    assert body["HostConfig"]["PortBindings"] == {
        "9100/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9100"}]
    }
    assert "PORT=9100" in body["Env"]


def test_user_env_is_passed_but_port_is_ours(runtime, engine):
    body = created(engine, runtime.start(spec(env={"HF_HOME": "/cache", "PORT": "1"})))

    assert sorted(body["Env"]) == ["HF_HOME=/cache", "PORT=9100", "PRISM_DEPLOYMENT_ID=d1"]


def test_weights_are_mounted_read_only_at_weights(runtime, engine, tmp_path):
    body = created(engine, runtime.start(spec(weights_dir=tmp_path)))

    assert "PRISM_WEIGHTS_DIR=/weights" in body["Env"]
    assert body["HostConfig"]["Mounts"] == [
        {"Target": "/weights", "Source": str(tmp_path), "Type": "bind", "ReadOnly": True}
    ]


def test_without_weights_nothing_is_mounted(runtime, engine):
    body = created(engine, runtime.start(spec()))

    assert not any(var.startswith("PRISM_WEIGHTS_DIR=") for var in body["Env"])
    assert not body["HostConfig"].get("Mounts")
    assert not body["HostConfig"].get("Binds")


def test_assigned_gpus_are_requested_by_index(runtime, engine):
    body = created(engine, runtime.start(spec(gpu_indices=[2, 5])))

    [request] = body["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["2", "5"]
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0  # the listed devices only, not "all"


def test_no_device_request_without_gpus(runtime, engine):
    assert "DeviceRequests" not in created(engine, runtime.start(spec()))["HostConfig"]


# --- start: images ----------------------------------------------------------------------------


def test_a_local_image_is_not_pulled(runtime, engine):
    runtime.start(spec())

    assert engine.pulls == []


def test_a_missing_image_is_pulled_once(runtime, engine):
    runtime.start(spec(deployment_id="d1", image="prism/new:2"))
    runtime.start(spec(deployment_id="d2", image="prism/new:2", port=9101))

    assert engine.pulls == ["prism/new:2"]


def test_an_unpullable_image_fails_with_a_message_naming_it(runtime, engine):
    with pytest.raises(LaunchError, match=r"image private/secret:1 not found or not accessible"):
        runtime.start(spec(image=PRIVATE_IMAGE))

    assert engine.container("prism-d1") is None


def test_the_registry_reason_is_kept_in_the_message(runtime):
    with pytest.raises(LaunchError, match="pull access denied for private/secret"):
        runtime.start(spec(image=PRIVATE_IMAGE))


def test_a_spec_without_image_is_refused(runtime):
    with pytest.raises(LaunchError, match="no image"):
        runtime.start(spec(image=None))


# --- start: leftovers and failures ------------------------------------------------------------


def test_a_leftover_container_with_the_same_name_is_replaced(runtime, engine, client):
    leftover = client.containers.run(IMAGE, name="prism-d1", labels=MANAGED, detach=True)

    handle = runtime.start(spec())

    assert handle.ref != leftover.id
    assert engine.container(leftover.id) is None
    assert engine.container("prism-d1").id == handle.ref


def test_a_start_that_fails_says_why_and_leaves_no_container(runtime, engine, client):
    client.containers.run(
        IMAGE, name="squatter", ports={"80/tcp": ("127.0.0.1", 9100)}, detach=True
    )

    with pytest.raises(LaunchError, match="port is already allocated"):
        runtime.start(spec(port=9100))

    assert engine.container("prism-d1") is None


# --- watching: running, exit code, logs -------------------------------------------------------


def test_a_running_container_has_no_exit_code(runtime):
    handle = runtime.start(spec())

    assert runtime.is_running(handle)
    assert runtime.exit_code(handle) is None


def test_an_exited_container_reports_its_exit_code(runtime, engine):
    handle = runtime.start(spec())

    engine.exit(handle.ref, 3)

    assert not runtime.is_running(handle)
    assert runtime.exit_code(handle) == 3


def test_a_missing_container_is_not_running_and_has_no_exit_code(runtime):
    gone = Handle("d1", "docker", "0" * 64, 9100)

    assert not runtime.is_running(gone)
    assert runtime.exit_code(gone) is None


def test_logs_return_the_last_lines(runtime, engine):
    handle = runtime.start(spec())
    engine.set_logs(handle.ref, ["loading", "ready", "GET /health 200"])

    assert runtime.logs(handle, tail=2) == ["ready", "GET /health 200"]


def test_logs_include_stderr(runtime, engine):
    handle = runtime.start(spec())
    engine.set_logs(handle.ref, ["Traceback (most recent call last):"], stream="stderr")

    assert runtime.logs(handle, tail=10) == ["Traceback (most recent call last):"]


# --- stop -------------------------------------------------------------------------------------


def test_stop_gives_the_grace_period_then_removes_the_container(runtime, engine):
    handle = runtime.start(spec())

    assert runtime.stop(handle, grace_seconds=2.5) == 0

    assert engine.container(handle.ref) is None
    assert not runtime.is_running(handle)


def test_stop_rounds_the_grace_period_up_to_whole_seconds(runtime, engine):
    handle = runtime.start(spec())

    runtime.stop(handle, grace_seconds=2.5)

    assert f"POST /containers/{handle.ref}/stop?t=3" in engine.requests


def test_stop_returns_the_exit_code_of_a_container_that_already_exited(runtime, engine):
    handle = runtime.start(spec())
    engine.exit(handle.ref, 3)

    assert runtime.stop(handle, grace_seconds=5) == 3
    assert engine.container(handle.ref) is None


def test_stop_is_safe_to_repeat(runtime):
    handle = runtime.start(spec())
    runtime.stop(handle, grace_seconds=1)

    assert runtime.stop(handle, grace_seconds=1) is None


# --- adopt and list_managed: a restarted agent finds its containers ----------------------------


def test_adopt_accepts_our_running_container(runtime):
    handle = runtime.start(spec())

    assert runtime.adopt(handle)


def test_adopt_refuses_a_missing_container(runtime):
    assert not runtime.adopt(Handle("d1", "docker", "0" * 64, 9100))


def test_adopt_refuses_an_exited_container(runtime, engine):
    handle = runtime.start(spec())
    engine.exit(handle.ref, 0)

    assert not runtime.adopt(handle)


def test_adopt_refuses_a_container_labelled_for_another_deployment(runtime, client):
    labels = {**MANAGED, "prism.deployment_id": "d2"}
    other = client.containers.run(IMAGE, name="prism-d2", labels=labels, detach=True)

    assert not runtime.adopt(Handle("d1", "docker", other.id, 9100))


def test_list_managed_finds_running_and_stopped_containers_only_of_ours(runtime, engine, client):
    running = runtime.start(spec(deployment_id="d1", port=9100))
    exited = runtime.start(spec(deployment_id="d2", port=9101))
    engine.exit(exited.ref, 1)
    client.containers.run(IMAGE, name="someone-elses", detach=True)

    found = runtime.list_managed()

    assert sorted(found, key=lambda h: h.deployment_id) == [running, exited]


# --- the engine itself ------------------------------------------------------------------------


def test_constructing_the_default_runtime_needs_no_engine():
    assert DockerRuntime().name == "docker"


def test_an_unreachable_engine_is_a_runtime_error(monkeypatch):
    with socket.socket() as unlistened:  # bound but not listening: connections are refused
        unlistened.bind(("127.0.0.1", 0))
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{unlistened.getsockname()[1]}")

        with pytest.raises(LaunchError, match="could not connect to the Docker engine"):
            DockerRuntime().is_running(Handle("d1", "docker", "0" * 64, 9100))
