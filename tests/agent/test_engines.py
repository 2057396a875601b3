"""Which engine serves weights given no command (node_agent.engines), for each kind of model and
node: pure choices over real on-disk model layouts, then the agent launching each engine's
official image through the real docker SDK against the fake Engine API (the image, the
read-only weights mount, the GPU request, the command line), and the no-docker paths (a
program on PATH, the built-in server, a clear error naming what to install)."""

import sys
import threading
import time
from pathlib import Path

import docker
import pytest

from chalicelib.protocol import DeployConfig, DeployModel, GpuInfo
from node_agent.agent import Agent, AgentSettings
from node_agent.engines import BUILT_IN, ENGINES, NodeAbilities, choose_engine, model_task
from node_agent.frameworks import FrameworkError, detect_framework
from node_agent.runtime.docker import DockerRuntime
from tests.fakes.docker_engine import FakeDockerEngine
from tests.model_files import write_gguf, write_json, write_safetensors

VLLM = "vllm/vllm-openai:v0.11.0"
TGI_CPU = "ghcr.io/huggingface/text-generation-inference:3.3.5-intel-cpu"
TEI_GPU = "ghcr.io/huggingface/text-embeddings-inference:1.8"
TEI_CPU = "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8"
LLAMA_CPU = "ghcr.io/ggml-org/llama.cpp:server-b6800"
LLAMA_GPU = "ghcr.io/ggml-org/llama.cpp:server-cuda-b6800"
CPU, GPU = NodeAbilities(gpu=False, docker=False), NodeAbilities(gpu=True, docker=False)
DOCKER_CPU, DOCKER_GPU = NodeAbilities(gpu=False, docker=True), NodeAbilities(gpu=True, docker=True)


def nothing_installed(program: str) -> None:
    return None


def installed(*programs: str):
    return lambda program: f"/usr/bin/{program}" if program in programs else None


def llama(root: Path, architecture="LlamaForCausalLM") -> Path:
    root.mkdir()
    write_json(root / "config.json", {"architectures": [architecture], "model_type": "llama"})
    write_safetensors(root / "model.safetensors")
    return root


def sentence_transformers(root: Path, onnx=True, tokenizer=True) -> Path:
    root.mkdir()
    write_json(root / "config.json", {"architectures": ["BertModel"], "model_type": "bert"})
    write_safetensors(root / "model.safetensors")
    write_json(root / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "x"}])
    if onnx:
        (root / "onnx").mkdir()
        (root / "onnx" / "model.onnx").write_bytes(b"\x08\x07")
    if tokenizer:
        write_json(root / "tokenizer.json", {"version": "1.0"})
    return root


def gguf(root: Path) -> Path:
    root.mkdir()
    write_gguf(root / "qwen-q4_k_m.gguf")
    return root


def with_(node: NodeAbilities, programs=()) -> NodeAbilities:
    return NodeAbilities(node.gpu, node.docker, installed(*programs))


# --- the kind of model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "task"),
    [
        ("LlamaForCausalLM", "text-generation"),
        ("GPT2LMHeadModel", "text-generation"),
        ("T5ForConditionalGeneration", "text-generation"),
        ("BertForSequenceClassification", "reranker"),
        ("XLMRobertaModel", "embedding"),
        ("BertForMaskedLM", "embedding"),
        ("BertForTokenClassification", None),  # no engine serves it unasked
    ],
)
def test_the_kind_of_a_transformers_model_is_its_head(tmp_path, architecture, task):
    weights = llama(tmp_path / "m", architecture)
    assert model_task(detect_framework(weights), weights) == task


# --- choices, pure -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "node", "engine", "runtime", "image"),
    [
        (llama, DOCKER_GPU, "vllm", "docker", VLLM),
        (
            llama,
            DOCKER_CPU,
            "tgi",
            "docker",
            "ghcr.io/huggingface/text-generation-inference:3.3.5-intel-cpu",
        ),
        (llama, with_(GPU, ["vllm"]), "vllm", "process", None),
        (llama, with_(GPU, ["text-generation-launcher"]), "tgi", "process", None),
        (llama, with_(CPU, ["text-generation-launcher"]), "tgi", "process", None),
        (
            sentence_transformers,
            DOCKER_GPU,
            "tei",
            "docker",
            "ghcr.io/huggingface/text-embeddings-inference:1.8",
        ),
        (sentence_transformers, DOCKER_CPU, BUILT_IN, "process", None),  # on CPU: the built-in
        (sentence_transformers, with_(CPU), BUILT_IN, "process", None),
        (sentence_transformers, with_(GPU), BUILT_IN, "process", None),  # no TEI here: built-in
        (gguf, DOCKER_GPU, "llama.cpp", "docker", LLAMA_GPU),
        (gguf, DOCKER_CPU, "llama.cpp", "docker", LLAMA_CPU),
        (gguf, with_(CPU, ["llama-server"]), "llama.cpp", "process", None),
    ],
)
def test_the_engine_for_each_kind_of_model_and_node(tmp_path, make, node, engine, runtime, image):
    if node.installed is NodeAbilities.installed:  # the defaults: nothing on PATH in tests
        node = NodeAbilities(node.gpu, node.docker, nothing_installed)
    choice = choose_engine("auto", make(tmp_path / "m"), node, 9100)
    assert (choice.engine, choice.runtime, choice.image) == (engine, runtime, image)
    assert ENGINES[engine].title in choice.reason and ("no GPU" in choice.reason) != node.gpu


def test_each_engine_gets_its_own_command_line(tmp_path):
    weights = llama(tmp_path / "llama")
    vllm = choose_engine("auto", weights, NodeAbilities(True, True, nothing_installed), 9100)
    assert vllm.command == ["/weights", "--host", "0.0.0.0", "--port", "8000"]
    assert vllm.container_port == 8000
    local_vllm = choose_engine("auto", weights, with_(GPU, ["vllm"]), 9100)
    assert local_vllm.command == [
        "vllm", "serve", str(weights), "--host", "127.0.0.1", "--port", "9100",
    ]  # fmt: skip
    tgi = choose_engine("auto", weights, with_(GPU, ["text-generation-launcher"]), 9100)
    assert tgi.command == [
        "text-generation-launcher", "--model-id", str(weights),
        "--hostname", "127.0.0.1", "--port", "9100",
    ]  # fmt: skip
    models = gguf(tmp_path / "gguf")
    cuda = choose_engine("auto", models, NodeAbilities(True, True, nothing_installed), 9100)
    assert cuda.command == [
        "-m", "/weights/qwen-q4_k_m.gguf", "--host", "0.0.0.0", "--port", "8080",
        "--n-gpu-layers", "999",
    ]  # fmt: skip
    local = choose_engine("auto", models, with_(CPU, ["llama-server"]), 9100)
    assert local.command == [
        "llama-server", "-m", f"{models}/qwen-q4_k_m.gguf", "--host", "127.0.0.1", "--port",
        "9100",
    ]  # fmt: skip
    embed = choose_engine("auto", sentence_transformers(tmp_path / "st"), with_(CPU), 9100)
    assert embed.command == [
        sys.executable, "-m", "node_agent.embedding_server", "--weights",
        str(tmp_path / "st"), "--host", "127.0.0.1", "--port", "9100",
    ]  # fmt: skip


def test_an_engine_named_as_framework_overrides_the_choice(tmp_path):
    weights = sentence_transformers(tmp_path / "st")
    choice = choose_engine("tei", weights, NodeAbilities(False, True, nothing_installed), 9100)
    assert (choice.engine, choice.image) == (
        "tei",
        "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8",
    )
    assert choice.reason.startswith("framework 'tei' was asked for")


def test_the_reason_names_the_kind_the_evidence_and_the_engine(tmp_path):
    choice = choose_engine("auto", sentence_transformers(tmp_path / "st"), with_(CPU), 9100)
    assert choice.framework == "sentence-transformers"
    assert choice.reason == (
        "sentence-transformers embedding model (modules.json); no GPU; PRISM's built-in CPU "
        f"embedding server as {sys.executable}"
    )


@pytest.mark.parametrize(
    ("make", "node", "says"),
    [
        (
            lambda root: sentence_transformers(root, onnx=False),
            with_(CPU),
            [
                "PRISM's built-in CPU embedding server needs an ONNX export (onnx/model.onnx or "
                "model.onnx)",
                f"text-embeddings-inference needs docker (it runs {TEI_CPU}) or "
                "text-embeddings-router on PATH",
                "or pass command",
            ],
        ),
        (
            lambda root: sentence_transformers(root, tokenizer=False),
            with_(CPU),
            ["needs tokenizer.json"],
        ),
        (
            llama,
            with_(GPU),
            ["vLLM needs docker (it runs vllm/vllm-openai:v0.11.0) or vllm on PATH"],
        ),
        (gguf, with_(CPU), ["llama.cpp's llama-server needs docker", "llama-server on PATH"]),
    ],
)
def test_nothing_that_can_run_is_an_error_naming_what_to_install(tmp_path, make, node, says):
    with pytest.raises(FrameworkError) as error:
        choose_engine("auto", make(tmp_path / "m"), node, 9100)
    for words in says:
        assert words in str(error.value)


def test_kinds_no_engine_serves_keep_their_advice(tmp_path):
    weights = tmp_path / "m"
    weights.mkdir()
    write_safetensors(weights / "model.safetensors")
    with pytest.raises(FrameworkError, match=r'"--weights", "\{weights\}/model.safetensors"'):
        choose_engine("auto", weights, with_(GPU, ["vllm"]), 9100)
    with pytest.raises(FrameworkError, match="has none; pass weights_source, or a command"):
        choose_engine("vllm", None, with_(GPU, ["vllm"]), 9100)


# --- the agent, against the fake Engine API --------------------------------------------------

IMAGES = [engine.gpu_image for engine in ENGINES.values() if engine.gpu_image] + [
    engine.cpu_image for engine in ENGINES.values() if engine.cpu_image
]


@pytest.fixture
def docker_node(tmp_path):
    with FakeDockerEngine(images=IMAGES) as engine:
        client = docker.DockerClient(base_url=engine.url, version=engine.api_version)
        sent = []
        agent = Agent(
            AgentSettings(node_id="n", state_dir=tmp_path / "state", liveness_interval_s=0.05),
            {"docker": DockerRuntime(client)},
            sent.append,
        )
        agent.gpus = [GpuInfo(index=i, name="NVIDIA H100 80GB HBM3") for i in range(2)]
        stop = threading.Event()
        threading.Thread(target=agent.supervise, args=(stop,), daemon=True).start()
        yield engine, agent
        stop.set()


def deploy_local_weights(agent: Agent, weights: Path, gpu: bool, deployment_id: str):
    agent.deploy(
        DeployModel(
            deployment_id=deployment_id,
            weights_source=str(weights),
            gpu=gpu,
            gpu_indices=[1] if gpu else [],
            deploy_config=DeployConfig(health_path="/health"),
        )
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = agent.records.get(deployment_id)
        if record is not None and record.handle is not None:
            return record
        time.sleep(0.02)
    raise AssertionError("never launched")


@pytest.mark.parametrize(
    ("make", "gpu", "image", "arguments"),
    [
        (llama, True, VLLM, ["/weights", "--host", "0.0.0.0", "--port", "8000"]),
        (
            llama, False, TGI_CPU,
            ["--model-id", "/weights", "--hostname", "0.0.0.0", "--port", "80"],
        ),
        (
            sentence_transformers, True, TEI_GPU,
            ["--model-id", "/weights", "--hostname", "0.0.0.0", "--port", "80"],
        ),
        (
            gguf, False, LLAMA_CPU,
            ["-m", "/weights/qwen-q4_k_m.gguf", "--host", "0.0.0.0", "--port", "8080"],
        ),
    ],
)  # fmt: skip
def test_the_agent_runs_the_engines_official_image(
    docker_node, tmp_path, make, gpu, image, arguments
):
    engine, agent = docker_node
    weights = make(tmp_path / "weights")
    record = deploy_local_weights(agent, weights, gpu, "dep_00000000000000f1")
    body = engine.container(record.handle.ref).body
    assert (body["Image"], body["Cmd"]) == (image, arguments)
    mount = body["HostConfig"]["Mounts"][0]
    assert (mount["Source"], mount["Target"], mount["ReadOnly"]) == (str(weights), "/weights", True)
    port = str(ENGINES[record.engine].container_port)
    assert body["HostConfig"]["PortBindings"][f"{port}/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(record.model_port)}
    ]
    requests = body["HostConfig"].get("DeviceRequests") or []
    assert [r["DeviceIDs"] for r in requests] == ([["1"]] if gpu else [])
    assert record.engine_reason.endswith(f"as {image}")


@pytest.mark.parametrize("architectures", [5, True, "LlamaForCausalLM", [3, None]])
def test_odd_architectures_never_raise_anything_but_a_framework_error(tmp_path, architectures):
    weights = tmp_path / "m"
    weights.mkdir()
    write_json(weights / "config.json", {"architectures": architectures, "model_type": "x"})
    write_safetensors(weights / "model.safetensors")
    write_json(weights / "modules.json", [])
    with pytest.raises(FrameworkError, match="needs an ONNX export"):  # read, then refused
        choose_engine("auto", weights, with_(CPU), 9100)
    deep = weights / "config.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FrameworkError):
        choose_engine("auto", weights, with_(CPU), 9100)  # modules.json: no ONNX export


def test_llama_cpp_is_given_the_gguf_file_whatever_the_framework_named(tmp_path):
    weights = llama(tmp_path / "mixed")  # config.json + safetensors: detected transformers
    write_gguf(weights / "model-q4.gguf")
    for framework in ("gguf", "llama.cpp"):
        choice = choose_engine(framework, weights, with_(CPU, ["llama-server"]), 9100)
        assert choice.command[:3] == ["llama-server", "-m", f"{weights}/model-q4.gguf"]
    none = llama(tmp_path / "no-gguf")
    with pytest.raises(FrameworkError, match="needs a .gguf file"):
        choose_engine("llama.cpp", none, with_(CPU, ["llama-server"]), 9100)
