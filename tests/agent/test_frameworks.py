import pickle
import struct

import pytest

from node_agent.frameworks import (
    Detection,
    FrameworkError,
    detect_framework,
    fill_placeholders,
)
from tests.model_files import (
    transformers_dir,
    write_gguf,
    write_json,
    write_safetensors,
    write_torch_zip,
)

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


# --- placeholders ------------------------------------------------------------------------


def test_placeholders_in_a_given_command_are_the_weights_and_the_port(tmp_path):
    command = ["vllm", "serve", "{weights}", "--port", "{port}", "--tokenizer={weights}/tok"]
    assert fill_placeholders(command, tmp_path, 9123) == [
        "vllm",
        "serve",
        str(tmp_path),
        "--port",
        "9123",
        f"--tokenizer={tmp_path}/tok",
    ]
    assert fill_placeholders(["serve", "{weights}"], "/weights", 80) == ["serve", "/weights"]
    assert fill_placeholders(["python", "serve.py", "$PORT"], None, 1) == [
        "python",
        "serve.py",
        "$PORT",  # never shell-expanded: {port} is how a command names its port
    ]
    with pytest.raises(FrameworkError, match="uses {weights} but this deployment has no"):
        fill_placeholders(["serve", "{weights}"], None, 8000)
