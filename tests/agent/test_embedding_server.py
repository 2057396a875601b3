"""The built-in CPU embedding server as the agent runs it: `python -m node_agent.embedding_server`
as a real process, on a real tiny model built by prism.dev.tiny_embedder. Every vector is checked
against onnxruntime run here, one sentence at a time (no padding), pooled with numpy here: the
server's own pooling and batching are what is under test, never the source of the expectation.
"""

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from node_agent.ports import free_port
from prism.dev.tiny_embedder import write_tiny_embedder

REPO = Path(__file__).resolve().parents[2]
DIMENSIONS, MAX_TOKENS = 32, 128
TEXTS = ["Hello world!", "The cat sat on the mat.", "embedding server, fast and small", "x"]


class Reference:
    """The model run directly: tokenizer.json + the ONNX graph, pooled here with numpy."""

    def __init__(self, directory: Path, pooling: str, normalize: bool):
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.session = ort.InferenceSession(str(directory / "onnx" / "model.onnx"))
        self.pooling, self.normalize = pooling, normalize

    def tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text).ids)

    def vector(self, text: str, normalize: bool | None = None) -> np.ndarray:
        encoding = self.tokenizer.encode(text)
        feed = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(encoding.ids)), dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        hidden = self.session.run(None, feed)[0][0].astype(np.float64)  # [seq, dim]
        vector = hidden[0] if self.pooling == "cls" else hidden.mean(axis=0)
        normalize = self.normalize if normalize is None else normalize
        return vector / np.linalg.norm(vector) if normalize else vector


class Server:
    def __init__(self, directory: Path, log: Path):
        self.port = free_port()
        self.log, self.log_file = log, log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node_agent.embedding_server", "--weights", str(directory)]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}: {self.log.read_text()}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"server not ready in {timeout}s: {self.log.read_text()}")

    def request(self, method: str, path: str, body=None, connection=None):
        """(status, decoded JSON) on a fresh connection, or on `connection` (keep-alive)."""
        conn = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        if connection is None:
            conn.close()
        return response.status, payload

    def embeddings(self, texts, **fields) -> np.ndarray:
        status, body = self.request("POST", "/v1/embeddings", {"input": texts, **fields})
        assert status == 200, body
        return np.array([item["embedding"] for item in body["data"]])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log_file.close()


def start(tmp_path_factory, name: str, **model):
    directory = write_tiny_embedder(
        tmp_path_factory.mktemp(name) / name,
        dimensions=DIMENSIONS,
        max_seq_length=MAX_TOKENS,
        **model,
    )
    server = Server(directory, directory.parent / "server.log")
    reference = Reference(directory, model.get("pooling", "mean"), model.get("normalize", True))
    return server, reference


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server, reference = start(tmp_path_factory, "tiny-mean")
    yield server, reference
    server.stop()


def expected(reference: Reference, texts: list[str], normalize: bool | None = None):
    return np.array([reference.vector(text, normalize) for text in texts])


def test_health_describes_the_model(served):
    server, _ = served
    status, body = server.request("GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert (body["model"], body["dimensions"], body["max_tokens"]) == ("tiny-mean", 32, 128)


def test_openai_embeddings_match_onnxruntime_and_are_normalized(served):
    server, reference = served
    status, body = server.request("POST", "/v1/embeddings", {"input": TEXTS, "model": "mine"})
    assert status == 200
    assert body["object"] == "list" and body["model"] == "mine"
    assert [item["index"] for item in body["data"]] == list(range(len(TEXTS)))
    assert all(item["object"] == "embedding" for item in body["data"])
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (len(TEXTS), DIMENSIONS)
    np.testing.assert_allclose(vectors, expected(reference, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    tokens = sum(reference.tokens(text) for text in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_a_single_string_gives_one_vector(served):
    server, reference = served
    vectors = server.embeddings("The cat sat on the mat.")
    np.testing.assert_allclose(vectors, expected(reference, [TEXTS[1]]), atol=1e-5)


def test_base64_decodes_to_the_same_floats(served):
    server, _ = served
    status, body = server.request(
        "POST", "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"}
    )
    assert status == 200
    decoded = [np.frombuffer(base64.b64decode(i["embedding"]), "<f4") for i in body["data"]]
    np.testing.assert_array_equal(np.array(decoded), server.embeddings(TEXTS).astype(np.float32))


def test_tei_embed_route(served):
    server, reference = served
    status, body = server.request("POST", "/embed", {"inputs": TEXTS})
    assert status == 200
    np.testing.assert_allclose(np.array(body), expected(reference, TEXTS), atol=1e-5)
    status, body = server.request("POST", "/embed", {"inputs": TEXTS[0], "normalize": False})
    assert status == 200
    np.testing.assert_allclose(np.array(body), expected(reference, TEXTS[:1], False), atol=1e-5)


def test_unnormalized_model_and_cls_pooling(tmp_path_factory):
    for name, model in (
        ("tiny-raw", {"normalize": False}),
        ("tiny-cls", {"pooling": "cls", "normalize": False}),
    ):
        server, reference = start(tmp_path_factory, name, **model)
        try:
            vectors = server.embeddings(TEXTS)
            np.testing.assert_allclose(vectors, expected(reference, TEXTS), atol=1e-5)
            assert np.all(np.abs(np.linalg.norm(vectors, axis=1) - 1) > 1e-3)
        finally:
            server.stop()


def test_concurrent_requests_are_batched_and_each_gets_its_own_vector(served):
    server, reference = served
    before = server.request("GET", "/health")[1]
    texts = [
        f"request number {i} asks about the {'cat' if i % 2 else 'dog'} {i * 7}" for i in range(64)
    ]
    results: dict[int, tuple[int, list]] = {}
    barrier = threading.Barrier(len(texts))

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.connect()
        barrier.wait()
        results[i] = server.request("POST", "/v1/embeddings", {"input": texts[i]}, connection)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(len(texts)))
    assert all(status == 200 for status, _ in results.values())
    vectors = np.array([results[i][1]["data"][0]["embedding"] for i in range(len(texts))])
    np.testing.assert_allclose(vectors, expected(reference, texts), atol=1e-5)
    after = server.request("GET", "/health")[1]
    requests, batches = (after[k] - before[k] for k in ("requests", "batches"))
    assert requests == len(texts)
    assert batches < requests  # some requests shared a session run


def test_long_input_is_truncated_unless_refused(served):
    server, reference = served
    long_text = "the quick embedding " * 2000
    status, body = server.request("POST", "/v1/embeddings", {"input": [long_text, "short"]})
    assert status == 200
    assert body["usage"]["prompt_tokens"] == MAX_TOKENS + reference.tokens("short")
    vectors = np.array([item["embedding"] for item in body["data"]])
    np.testing.assert_allclose(vectors, expected(reference, [long_text, "short"]), atol=1e-5)
    assert server.request("POST", "/embed", {"inputs": long_text})[0] == 200
    status, body = server.request("POST", "/embed", {"inputs": long_text, "truncate": False})
    assert status == 400 and "128" in body["error"]["message"]


def test_a_huge_input_is_cut_before_tokenizing(served):
    """15 MiB in one text: answered at once, as the first MAX_TOKENS tokens of it."""
    server, reference = served
    huge = "the quick embedding server " * 580_000
    started = time.monotonic()
    vectors = server.embeddings(huge)
    assert time.monotonic() - started < 5  # tokenizing all of it takes ~12 s and 2 GB
    np.testing.assert_allclose(vectors, expected(reference, [huge[:10_000]]), atol=1e-5)


BAD_REQUESTS = [
    ("POST", "/v1/embeddings", b"not json", 400),
    ("POST", "/v1/embeddings", b"\xff\xfe\x00", 400),
    ("POST", "/v1/embeddings", b"[" * 100_000, 400),
    ("POST", "/v1/embeddings", b'{"input": "\\ud800"}', 400),
    ("POST", "/v1/embeddings", [1, 2], 400),
    ("POST", "/v1/embeddings", "just a string", 400),
    ("POST", "/v1/embeddings", {}, 400),
    ("POST", "/v1/embeddings", None, 400),
    ("POST", "/v1/embeddings", {"input": ""}, 400),
    ("POST", "/v1/embeddings", {"input": []}, 400),
    ("POST", "/v1/embeddings", {"input": 7}, 400),
    ("POST", "/v1/embeddings", {"input": [101, 2023, 102]}, 400),
    ("POST", "/v1/embeddings", {"input": [[101, 2023]]}, 400),
    ("POST", "/v1/embeddings", {"input": ["fine", ""]}, 400),
    ("POST", "/v1/embeddings", {"input": ["fine", None]}, 400),
    ("POST", "/v1/embeddings", {"input": ["a"] * 2049}, 400),
    ("POST", "/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400),
    ("POST", "/v1/embeddings", {"input": "a", "model": 3}, 400),
    ("POST", "/embed", {"input": "wrong field name"}, 400),
    ("POST", "/embed", {"inputs": "a", "normalize": "yes"}, 400),
    ("POST", "/embed", {"inputs": "a", "truncate": 0}, 400),
    ("POST", "/embed", {"inputs": [{"text": "a"}]}, 400),
    ("GET", "/nowhere", None, 404),
    ("POST", "/nowhere", {"input": "a"}, 404),
    ("GET", "/v1/embeddings", None, 405),
    ("GET", "/embed", None, 405),
    ("DELETE", "/health", None, 405),
    ("POST", "/v1/embeddings", b"x" * (16 * 1024 * 1024 + 1), 413),
]


@pytest.mark.parametrize("method, path, body, status", BAD_REQUESTS, ids=range(len(BAD_REQUESTS)))
def test_bad_requests_get_a_json_error_and_the_server_goes_on(served, method, path, body, status):
    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    got, payload = server.request(method, path, body, connection)
    assert got == status, payload
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
    assert payload["error"]["message"]
    if status == 400:
        assert payload["error"]["code"] == "bad_request"
    assert server.request("GET", "/health", connection=connection)[0] == 200  # same connection
    connection.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=JSON, route=st.sampled_from([("/v1/embeddings", "input"), ("/embed", "inputs")]))
def test_any_json_input_is_answered_200_or_400(served, value, route):
    server, _ = served
    path, field = route
    valid = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and value and all(isinstance(item, str) and item for item in value)
    )
    status, payload = server.request("POST", path, {field: value})
    assert status == (200 if valid else 400), payload


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"onnx/model.onnx": None}, "no ONNX model"),
        ({"tokenizer.json": None}, "no tokenizer.json"),
        ({"modules.json": b"{not json"}, "modules.json"),
        ({"onnx/model.onnx": b"not a graph"}, "onnxruntime cannot load"),
    ],
)
def test_a_directory_it_cannot_serve_exits_2_saying_why(tmp_path, broken, message):
    directory = write_tiny_embedder(tmp_path / "model")
    for relative, content in broken.items():
        if content is None:
            (directory / relative).unlink()
        else:
            (directory / relative).write_bytes(content)
    command = [sys.executable, "-m", "node_agent.embedding_server", "--weights", str(directory)]
    result = subprocess.run(
        command + ["--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_an_internal_failure_answers_500_and_the_server_goes_on(tmp_path):
    """In-process, so onnxruntime can be made to fail on cue."""
    from node_agent.embedding_model import EmbeddingModel
    from node_agent.embedding_server import EmbeddingHTTPServer, EmbeddingService

    model = EmbeddingModel.load(write_tiny_embedder(tmp_path / "model"))
    session, failing = model.session, threading.Event()

    class FlakySession:
        def run(self, outputs, feeds):
            if failing.is_set():
                raise RuntimeError("onnxruntime: simulated failure")
            return session.run(outputs, feeds)

    model.session = FlakySession()
    httpd = EmbeddingHTTPServer(("127.0.0.1", 0), EmbeddingService(model, "model"))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=30)

        def post() -> tuple[int, dict]:
            connection.request("POST", "/v1/embeddings", body=b'{"input": "hello"}')
            response = connection.getresponse()
            return response.status, json.loads(response.read())

        failing.set()
        status, body = post()
        assert status == 500 and body["error"]["code"] == "internal_error"
        assert "simulated failure" in body["error"]["message"]
        failing.clear()
        assert post()[0] == 200
        connection.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


@given(st.lists(st.integers(min_value=1, max_value=600), max_size=300))
def test_length_groups_cover_every_text_once_and_stay_small(lengths):
    from node_agent.embedding_model import MAX_RUN_ROWS, length_groups

    groups = length_groups(lengths)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    assert all(0 < len(group) <= MAX_RUN_ROWS for group in groups)


def test_a_request_that_breaks_its_batch_fails_alone():
    from node_agent.embedding_model import Batcher, BatchFailed, TokenizedText

    release, runs = threading.Event(), []

    def embed(texts):
        runs.append(len(texts))
        if texts[0].ids == [0]:
            release.wait()  # holds the worker while the others queue up behind
        if any(text.ids == [666] for text in texts):
            raise RuntimeError("poisoned input")
        return np.array([[float(text.ids[0])] for text in texts])

    batcher, results = Batcher(embed), {}

    def request(token: int) -> None:
        with batcher.arrival() as submit:
            try:
                results[token] = submit([TokenizedText([token], [0], False)])
            except BatchFailed as exc:
                results[token] = exc

    first = threading.Thread(target=request, args=(0,))
    first.start()
    while not runs:
        time.sleep(0.001)
    others = [threading.Thread(target=request, args=(t,)) for t in (1, 666, 2, 3)]
    for thread in others:
        thread.start()
    while batcher._queued_texts < len(others):
        time.sleep(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join()
    assert runs == [1, 4, 1, 1, 1, 1]  # the four queued together, then one by one
    assert isinstance(results.pop(666), BatchFailed)
    assert {token: rows.tolist() for token, rows in results.items()} == {
        t: [[float(t)]] for t in (0, 1, 2, 3)
    }


@pytest.mark.parametrize("declared", ["\u00b2", "1" * 4301])
def test_a_content_length_that_is_not_ascii_digits_or_too_long_is_a_400(served, declared):
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400") and b"Connection: close" in answer
