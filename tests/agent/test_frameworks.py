import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest

from node_agent.frameworks import (
    Detection,
    FrameworkError,
    detect_framework,
    fill_placeholders,
    resolve_command,
)

# --- fixtures: small files in the real on-disk formats ------------------------------------


def write_safetensors(path: Path) -> Path:
    """A valid safetensors file: u64 little-endian header length, JSON header, tensor bytes."""
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {
        "__metadata__": {"format": "pt"},
        "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def write_gguf(path: Path, magic: bytes = b"GGUF") -> Path:
    # magic, version 3, tensor count 0, metadata key/value count 0
    path.write_bytes(magic + struct.pack("<IQQ", 3, 0, 0))
    return path


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_torch_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:  # torch.save's format since 1.6
        archive.writestr("archive/data.pkl", pickle.dumps({"weight": [1.0]}, protocol=2))
    return path


def transformers_dir(root: Path) -> Path:
    root.mkdir()
    write_json(root / "config.json", {"architectures": ["BertModel"], "model_type": "bert"})
    write_safetensors(root / "model.safetensors")
    return root


# --- detect_framework ---------------------------------------------------------------------


def test_transformers_dir_is_config_plus_weights(tmp_path):
    weights = transformers_dir(tmp_path / "bert")
    assert detect_framework(weights) == Detection("transformers", "config.json + model.safetensors")


@pytest.mark.parametrize(
    ("weights_file", "write"),
    [
        ("model.safetensors.index.json", lambda p: write_json(p, {"weight_map": {}})),
        ("pytorch_model-00001-of-00002.bin", lambda p: p.write_bytes(pickle.dumps({}, 2))),
    ],
)
def test_transformers_weights_may_be_sharded_or_pytorch_bin(tmp_path, weights_file, write):
    write_json(tmp_path / "config.json", {"model_type": "llama"})
    write(tmp_path / weights_file)
    assert detect_framework(tmp_path) == Detection("transformers", f"config.json + {weights_file}")


def test_sentence_transformers_wins_over_its_transformers_files(tmp_path):
    weights = transformers_dir(tmp_path / "minilm")
    write_json(weights / "modules.json", [{"idx": 0, "path": "", "type": "Transformer"}])
    assert detect_framework(weights) == Detection("sentence-transformers", "modules.json")


def test_sentence_transformers_by_its_own_config(tmp_path):
    write_json(tmp_path / "config_sentence_transformers.json", {"__version__": {}})
    assert detect_framework(tmp_path) == Detection(
        "sentence-transformers", "config_sentence_transformers.json"
    )


def test_gguf_by_its_magic(tmp_path):
    write_gguf(tmp_path / "model.Q4_K_M.gguf")
    assert detect_framework(tmp_path) == Detection("gguf", "model.Q4_K_M.gguf")


def test_a_gguf_name_with_the_wrong_magic_is_not_gguf(tmp_path):
    write_gguf(tmp_path / "model.gguf", magic=b"GGML")
    detection = detect_framework(tmp_path)
    assert detection.framework == "custom"
    assert "model.gguf" in detection.evidence


def test_onnx(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch")  # ir_version, producer
    assert detect_framework(tmp_path) == Detection("onnx", "model.onnx")


def test_bare_safetensors_without_a_transformers_config(tmp_path):
    write_safetensors(tmp_path / "unet.safetensors")
    write_json(tmp_path / "config.json", {"hidden": 4})  # not a transformers config
    assert detect_framework(tmp_path) == Detection("safetensors", "unet.safetensors")


@pytest.mark.parametrize(
    "content",
    [
        b"not safetensors at all",
        struct.pack("<Q", 1 << 40) + b"{}",  # header length far past any real header
        struct.pack("<Q", 2) + b"[]",  # JSON, but not an object
    ],
)
def test_safetensors_header_is_verified(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    assert detect_framework(tmp_path).framework == "custom"


def test_torch_checkpoint(tmp_path):
    write_torch_zip(tmp_path / "model.pt")
    assert detect_framework(tmp_path) == Detection("torch", "model.pt")


def test_legacy_pickled_torch_bin_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(pickle.dumps({"weight": [1.0]}, protocol=2))
    assert detect_framework(tmp_path) == Detection("torch", "weights.bin")


def test_custom_names_its_entry_point(tmp_path):
    (tmp_path / "serve.py").write_text("print('serving')\n")
    write_json(tmp_path / "model.json", {"weights": [1, 2], "bias": 0})
    assert detect_framework(tmp_path) == Detection("custom", "serve.py")


def test_custom_lists_what_it_saw_when_nothing_is_recognised(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert detect_framework(tmp_path) == Detection(
        "custom", "no recognised model files among: notes.txt"
    )


def test_empty_dir_is_custom(tmp_path):
    (tmp_path / "subdir").mkdir()  # only top-level files count
    assert detect_framework(tmp_path) == Detection("custom", "no files at the top level")


@pytest.mark.parametrize(
    ("name", "write", "framework"),
    [
        ("model.gguf", write_gguf, "gguf"),
        ("model.safetensors", write_safetensors, "safetensors"),
        ("model.pt", write_torch_zip, "torch"),
    ],
)
def test_a_single_file_path(tmp_path, name, write, framework):
    path = write(tmp_path / name)
    assert detect_framework(path) == Detection(framework, name)


def test_large_files_are_judged_by_their_header(tmp_path):
    path = write_gguf(tmp_path / "big.gguf")
    with path.open("r+b") as f:
        f.truncate(4 * 1024**3)  # sparse: 4 GiB on paper, nothing on disk
    assert detect_framework(tmp_path) == Detection("gguf", "big.gguf")


def test_an_oversized_config_is_not_read(tmp_path):
    write_safetensors(tmp_path / "model.safetensors")
    padding = " " * (9 * 1024 * 1024)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}' + padding)
    assert detect_framework(tmp_path).framework == "safetensors"


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(FrameworkError, match="does not exist"):
        detect_framework(tmp_path / "nope")


# --- resolve_command ----------------------------------------------------------------------


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """An otherwise empty PATH; `install(name)` puts a fake executable on it."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def install(bin_dir: Path, name: str) -> None:
    exe = bin_dir / name
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)


def test_the_requested_command_wins(tmp_path, bin_dir):
    install(bin_dir, "vllm")
    requested = ["python", "serve.py"]
    assert resolve_command("transformers", requested, tmp_path, 8000) == requested


@pytest.mark.parametrize("framework", ["vllm", "transformers"])
def test_vllm_serves_transformers_when_installed(tmp_path, bin_dir, framework):
    install(bin_dir, "vllm")
    weights = transformers_dir(tmp_path / "llama")
    assert resolve_command(framework, [], weights, 8000) == [
        "vllm",
        "serve",
        str(weights),
        "--host",
        "127.0.0.1",  # behind the agent's proxy: never on every interface
        "--port",
        "8000",
    ]


def test_tgi_when_installed(tmp_path, bin_dir):
    install(bin_dir, "text-generation-launcher")
    weights = transformers_dir(tmp_path / "llama")
    assert resolve_command("tgi", [], weights, 9000) == [
        "text-generation-launcher",
        "--model-id",
        str(weights),
        "--hostname",
        "127.0.0.1",
        "--port",
        "9000",
    ]


def test_auto_detects_before_resolving(tmp_path, bin_dir):
    install(bin_dir, "vllm")
    weights = transformers_dir(tmp_path / "llama")
    assert resolve_command("auto", [], weights, 8000)[:2] == ["vllm", "serve"]


def test_gguf_without_a_command_says_to_pass_llama_server(tmp_path, bin_dir):
    write_gguf(tmp_path / "model.gguf")
    with pytest.raises(FrameworkError) as error:
        resolve_command("gguf", [], tmp_path, 8000)
    assert str(error.value) == (
        "detected framework 'gguf' (model.gguf) but no command was given and no built-in server"
        " for gguf is installed on this node; pass command, e.g. "
        '["llama-server", "-m", "{weights}/model.gguf", "--port", "{port}"]'
        " (llama.cpp's llama-server)"
    )


def test_transformers_without_vllm_says_to_pass_vllm_serve(tmp_path, bin_dir):
    weights = transformers_dir(tmp_path / "bert")
    with pytest.raises(FrameworkError) as error:
        resolve_command("transformers", [], weights, 8000)
    message = str(error.value)
    assert "detected framework 'transformers' (config.json + model.safetensors)" in message
    assert 'pass command, e.g. ["vllm", "serve", "{weights}", "--port", "{port}"]' in message


def test_sentence_transformers_has_no_built_in_server_even_with_vllm(tmp_path, bin_dir):
    install(bin_dir, "vllm")
    write_json(tmp_path / "modules.json", [])
    with pytest.raises(FrameworkError, match="text-embeddings-router"):
        resolve_command("sentence-transformers", [], tmp_path, 8000)


@pytest.mark.parametrize(
    ("name", "content", "framework", "advice"),
    [
        ("model.onnx", b"\x08\x07", "onnx", '"--model", "{weights}/model.onnx"'),
        ("model.onnx", b"\x08\x07", "onnx", "onnxruntime"),
        ("model.pt", b"\x80\x02}.", "torch", '"--checkpoint", "{weights}/model.pt"'),
        ("app.py", b"pass", "custom", '["python", "{weights}/app.py"]'),
        ("app.py", b"pass", "custom", "pass the command that starts your server"),
        ("app.py", b"pass", "custom", "it must listen on {port}"),
    ],
)
def test_each_framework_gets_specific_advice(tmp_path, bin_dir, name, content, framework, advice):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FrameworkError) as error:
        resolve_command(framework, [], tmp_path, 8000)
    assert f"detected framework '{framework}' ({name})" in str(error.value)
    assert advice in str(error.value)


def test_an_explicit_framework_without_weights_still_says_what_to_pass(bin_dir):
    with pytest.raises(FrameworkError) as error:
        resolve_command("vllm", [], None, 8000)
    assert str(error.value).startswith("framework 'vllm' but no command was given")
    assert "pass command" in str(error.value)


def test_a_built_in_server_needs_weights(bin_dir):
    install(bin_dir, "vllm")
    with pytest.raises(FrameworkError, match="has none; pass weights_source, or a command"):
        resolve_command("vllm", [], None, 8000)


def test_placeholders_in_a_given_command_are_the_weights_and_the_port(tmp_path):
    command = ["vllm", "serve", "{weights}", "--port", "{port}", "--tokenizer={weights}/tok"]
    assert resolve_command("auto", command, tmp_path, 9123) == [
        "vllm",
        "serve",
        str(tmp_path),
        "--port",
        "9123",
        f"--tokenizer={tmp_path}/tok",
    ]
    assert fill_placeholders(["serve", "{weights}"], "/weights", 80) == ["serve", "/weights"]
    assert resolve_command("auto", ["python", "serve.py", "$PORT"], None, 1) == [
        "python",
        "serve.py",
        "$PORT",  # never shell-expanded: {port} is how a command names its port
    ]
    with pytest.raises(FrameworkError, match="uses {weights} but this deployment has no"):
        resolve_command("auto", ["serve", "{weights}"], None, 8000)
