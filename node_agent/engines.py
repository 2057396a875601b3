"""What serves weights when a deployment gives no command: the engine for the kind of model, on
this node, and why (`framework: "auto"`, or a framework that names an engine or a model type).

The kind of model comes from detection (node_agent.frameworks reads names, headers and small
configs, never the weights): text generation, embeddings, a reranker, GGUF or bare ONNX. Each
kind has engines in order of preference, with a GPU and without (TASK_ENGINES). An engine runs
as its official image where the node has the docker runtime (weights mounted read-only at
/weights, the GPUs passed through), else as its program where that is installed; PRISM's
built-in CPU embedding server (node_agent.embedding_server) is part of the agent and runs
wherever the model has an ONNX export and a tokenizer.json. The first engine that can run wins;
when none can, the error names what to install. ENGINES is the one table of images (pinned)
and command lines.
"""

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node_agent.frameworks import (
    CONTAINER_WEIGHTS,
    ONNX_EXPORTS,
    TOKENIZER,
    Detection,
    FrameworkError,
    detect_framework,
    is_gguf,
    no_server_error,
    read_json,
)
from node_agent.runtime.base import MODEL_HOST

EVERY_INTERFACE = "0.0.0.0"  # inside its container: published on the host's loopback only
BUILT_IN = "prism-embed"
GENERATION_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")

Arguments = Callable[[str, str, int, bool], list[str]]  # (model path, host, port, gpu) -> argv


@dataclass(frozen=True)
class Engine:
    name: str
    title: str
    program: tuple[str, ...]  # its argv's start, the first on PATH; empty: the agent's own
    gpu_image: str | None
    cpu_image: str | None
    container_port: int  # where its image listens
    arguments: Arguments  # after the program, or after the image's entrypoint


def _vllm(model: str, host: str, port: int, gpu: bool) -> list[str]:
    return [model, "--host", host, "--port", str(port)]  # after `vllm serve`, its entrypoint


def _hostname_style(model: str, host: str, port: int, gpu: bool) -> list[str]:
    return ["--model-id", model, "--hostname", host, "--port", str(port)]


def _llama_server(model: str, host: str, port: int, gpu: bool) -> list[str]:
    offload = ["--n-gpu-layers", "999"] if gpu else []  # every layer on the GPU when there is one
    return ["-m", model, "--host", host, "--port", str(port), *offload]


def _built_in(model: str, host: str, port: int, gpu: bool) -> list[str]:
    return ["--weights", model, "--host", host, "--port", str(port)]


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine(
            "vllm", "vLLM", ("vllm", "serve"), "vllm/vllm-openai:v0.11.0", None, 8000, _vllm,
        ),
        Engine(
            "tgi", "text-generation-inference", ("text-generation-launcher",),
            "ghcr.io/huggingface/text-generation-inference:3.3.5",
            "ghcr.io/huggingface/text-generation-inference:3.3.5-intel-cpu", 80, _hostname_style,
        ),
        Engine(
            "tei", "text-embeddings-inference", ("text-embeddings-router",),
            "ghcr.io/huggingface/text-embeddings-inference:1.8",
            "ghcr.io/huggingface/text-embeddings-inference:cpu-1.8", 80, _hostname_style,
        ),
        Engine(
            "llama.cpp", "llama.cpp's llama-server", ("llama-server",),
            "ghcr.io/ggml-org/llama.cpp:server-cuda-b6800",
            "ghcr.io/ggml-org/llama.cpp:server-b6800", 8080, _llama_server,
        ),
        Engine(BUILT_IN, "PRISM's built-in CPU embedding server", (), None, None, 0, _built_in),
    )
}  # fmt: skip

# kind of model -> engines to try, in order: (with a GPU, without one)
TASK_ENGINES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text-generation": (("vllm", "tgi"), ("tgi",)),
    "embedding": (("tei", BUILT_IN), (BUILT_IN, "tei")),
    "reranker": (("tei",), ("tei",)),
    "gguf": (("llama.cpp",), ("llama.cpp",)),
    "onnx": ((BUILT_IN,), (BUILT_IN,)),
}


@dataclass(frozen=True)
class NodeAbilities:
    """What the node offers a deployment."""

    gpu: bool  # GPUs are reserved for it
    docker: bool  # the docker runtime answers
    installed: Callable[[str], str | None] = shutil.which


@dataclass(frozen=True)
class EngineChoice:
    framework: str  # what the weights are
    engine: str
    reason: str  # why, in words a user reads on the detail
    runtime: str  # "docker" or "process"
    image: str | None
    command: list[str]  # a process's whole argv, or the arguments after an image's entrypoint
    container_port: int | None


def choose_engine(
    framework: str, weights_dir: Path | None, node: NodeAbilities, model_port: int
) -> EngineChoice:
    """The engine for these weights on this node; FrameworkError saying what to install or
    pass when none can serve them."""
    if weights_dir is None:
        raise FrameworkError(
            f"framework '{framework}' serves weights but this deployment has none; "
            "pass weights_source, or a command"
        )
    detection = _detection(framework, weights_dir)
    if framework in ENGINES:
        candidates, kind = (framework,), f"framework '{framework}' was asked for"
    else:
        task = model_task(detection, weights_dir)
        if task is None:
            raise no_server_error(detection.framework, weights_dir)
        with_gpu, without = TASK_ENGINES[task]
        candidates = with_gpu if node.gpu else without
        kind = f"{detection.framework} {task} model ({detection.evidence})"
    refusals = []
    for name in candidates:
        choice = _run_as(ENGINES[name], weights_dir, node, model_port)
        if isinstance(choice, str):
            refusals.append(choice)
            continue
        runtime, image, command, port = choice
        where = f"as {image}" if image else f"as {command[0]}"
        reason = f"{kind}; {'GPU' if node.gpu else 'no GPU'}; {ENGINES[name].title} {where}"
        return EngineChoice(detection.framework, name, reason, runtime, image, command, port)
    raise FrameworkError(
        f"{kind} but nothing on this node can serve it without a command: {'; '.join(refusals)}"
        "; or pass command"
    )


def _detection(framework: str, weights_dir: Path) -> Detection:
    detected = detect_framework(weights_dir)
    if framework in ("auto", *ENGINES) or framework == detected.framework:
        return detected
    return Detection(framework, "as asked")  # a model type named by the user


def _run_as(
    engine: Engine, weights_dir: Path, node: NodeAbilities, port: int
) -> tuple[str, str | None, list[str], int | None] | str:
    """(runtime, image, command, container port) for this engine here, or why it cannot run."""
    if not engine.program:
        missing = built_in_missing(weights_dir)
        if missing:
            return f"{engine.title} needs {missing}"
        model = str(weights_dir)
        argv = [sys.executable, "-m", "node_agent.embedding_server"]
        return "process", None, argv + engine.arguments(model, MODEL_HOST, port, False), None
    if engine.name == "llama.cpp" and _gguf_file(weights_dir) is None:
        return f"{engine.title} needs a .gguf file, and there is none in {weights_dir.name}"
    image = engine.gpu_image if node.gpu else engine.cpu_image
    if node.docker and image:
        model = _model_path(engine, weights_dir, CONTAINER_WEIGHTS)
        arguments = engine.arguments(model, EVERY_INTERFACE, engine.container_port, node.gpu)
        return "docker", image, arguments, engine.container_port
    if node.installed(engine.program[0]):
        model = _model_path(engine, weights_dir, str(weights_dir))
        arguments = engine.arguments(model, MODEL_HOST, port, node.gpu)
        return "process", None, [*engine.program, *arguments], None
    docker = f"docker (it runs {image})" if image else "a GPU"
    return f"{engine.title} needs {docker} or {engine.program[0]} on PATH"


def _model_path(engine: Engine, weights_dir: Path, weights: str) -> str:
    """llama.cpp takes the .gguf file itself; the others take the model directory (both as
    the runtime sees them: `weights` is the host's path or /weights)."""
    if engine.name != "llama.cpp" or weights_dir.is_file():
        return weights
    return f"{weights}/{_gguf_file(weights_dir).name}"


def built_in_missing(weights_dir: Path) -> str | None:
    """What the built-in server lacks to serve these weights (None: it can)."""
    if not weights_dir.is_dir():
        return "a model directory"
    needs = []
    if not any((weights_dir / path).is_file() for path in ONNX_EXPORTS):
        needs.append(f"an ONNX export ({' or '.join(ONNX_EXPORTS)})")
    if not (weights_dir / TOKENIZER).is_file():
        needs.append(TOKENIZER)
    return " and ".join(needs) or None


def model_task(detection: Detection, weights_dir: Path) -> str | None:
    """The kind of model: what decides its engine (None: no engine serves it unasked)."""
    if detection.framework in ("gguf", "onnx"):
        return detection.framework
    if detection.framework not in ("transformers", "sentence-transformers"):
        return None
    architectures = _architectures(weights_dir)
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "reranker"
    if detection.framework == "sentence-transformers":
        return "embedding"
    if any(name.endswith(GENERATION_HEADS) for name in architectures):
        return "text-generation"
    if any(name.endswith(("Model", "ForMaskedLM")) for name in architectures):
        return "embedding"  # an encoder without a task head: what embedding servers load
    return None


def _architectures(weights_dir: Path) -> list[str]:
    config = read_json(weights_dir / "config.json") if weights_dir.is_dir() else None
    names = config.get("architectures") if isinstance(config, dict) else None
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def _gguf_file(weights_dir: Path) -> Path | None:
    """What llama-server loads: the weights file itself, or the first GGUF file in the dir."""
    if weights_dir.is_file():
        return weights_dir if is_gguf(weights_dir) else None
    found = sorted(p for p in weights_dir.glob("*.gguf") if p.is_file() and is_gguf(p))
    return found[0] if found else None
