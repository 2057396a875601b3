"""`prism dev up --fake-hub`: the local node pulls hf:// weights from a fake Hugging Face Hub
through the real huggingface_hub, and serves them: with a command, and with none (the product's
`framework: "auto"` example: a sentence-transformers model served by the built-in server)."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import pytest
import requests
from tokenizers import Tokenizer

from prism.dev.tiny_embedder import tiny_embedder_files
from tests.e2e.conftest import free_port, start_platform, stop_platform

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    started = start_platform(
        root,
        tick=1,
        args=("--fake-hub", "--hub-port", str(free_port()), "--state-dir", str(root / "state")),
    )
    yield started
    stop_platform(started)


def test_an_hf_model_from_the_fake_hub_runs_on_the_local_node(platform):
    created = json.loads(
        platform.cli(
            "deploy", "create", "--name", "hub-model", "--weights", "hf://prism/tiny-regressor@v1",
            "--gpu", "none", "--port", str(free_port()), "--wait", "--json",
            "--", "python3", "serve.py",
            check=True,
        ).stdout
    )  # fmt: skip
    assert created["status"] == "running" and len(created["weights_revision"]) == 40
    answer = requests.post(
        created["endpoint_url"] + "/predict",
        json={"inputs": [[1, 2, 3, 4]]},
        headers={"Authorization": f"Bearer {created['endpoint_key']}"},
        timeout=10,
    )
    assert answer.status_code == 200 and "outputs" in answer.json()
    platform.cli("deploy", "stop", created["id"], check=True)


def reference_embeddings(texts: list[str], root) -> np.ndarray:
    """onnxruntime run directly on the same model files (the fake Hub's, rebuilt: they are
    deterministic), mean-pooled over the real tokens and L2-normalized, as its config says."""
    files = tiny_embedder_files()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    session = onnxruntime.InferenceSession(str(root / "onnx" / "model.onnx"))
    tokens = session.run(
        None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )[0]
    pooled = (tokens * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_the_products_auto_example_serves_embeddings_with_no_command(platform, tmp_path):
    created = json.loads(
        platform.cli(
            "deploy", "create", "--name", "embedder",
            "--weights", "hf://sentence-transformers/paraphrase-MiniLM-L3-v2",
            "--target", "local", "--gpu", "none", "--wait", "--json",
            check=True,
        ).stdout
    )  # fmt: skip
    assert created["status"] == "running"
    detail = json.loads(platform.cli("deploy", "status", created["id"], "--json").stdout)
    assert (detail["framework"], detail["engine"]) == ("sentence-transformers", "prism-embed")
    assert "modules.json" in detail["engine_reason"] and "no GPU" in detail["engine_reason"]
    shown = platform.cli("deploy", "status", created["id"]).stdout
    assert "prism-embed: sentence-transformers embedding model" in shown
    url = created["endpoint_url"] + "/v1/embeddings"
    headers = {"Authorization": f"Bearer {created['endpoint_key']}"}
    texts = ["the cat sat on the mat", "fast vector search", "a"]
    answer = requests.post(url, json={"input": texts, "model": "m"}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    vectors = np.array([row["embedding"] for row in answer.json()["data"]])
    expected = reference_embeddings(texts, tmp_path)
    assert vectors.shape == expected.shape == (3, 32)
    assert np.abs(vectors - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    def one(i: int):
        body = {"input": f"sentence number {i}"}
        return requests.post(url, json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(one, range(64)))
    assert [a.status_code for a in answers] == [200] * 64
    assert len({tuple(a.json()["data"][0]["embedding"]) for a in answers}) == 64
    platform.cli("deploy", "stop", created["id"], check=True)
