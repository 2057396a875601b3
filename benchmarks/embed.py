"""The built-in CPU embedding server (node_agent.embedding_server) beside onnxruntime called
in-process on the same batches, same run, side by side; and its start-to-first-answer time.

  throughput  sentences/s: N keep-alive clients each posting batches of B sentences to
              /v1/embeddings, vs the same batches one after another through the very methods
              the server's engine runs (EmbeddingModel.tokenize + embed, then L2-normalize):
              same tokenization, padding, pooling, and the same session settings
              (make_session, PRISM_EMBED_THREADS passed to both). Model: tiny_embedder at
              MiniLM-like cost (384 dims, 3 blocks of 1536-wide MLPs). Rounds alternate
              (direct, server, ...) so both see the same machine noise; medians are printed.
  startup     from starting the server process to its first /v1/embeddings answer, tiny model;
              and from POST /deploy on a standalone node (the product's example body, no
              command, hf:// from a fake Hub) to the first answer through the node's proxy.
Goal: server >= 0.8x direct sentences/s.

The clients run in this process and share the machine's CPUs with the server (as a co-located
caller would); they send pre-encoded bodies and read the answers without decoding them.

    .venv/bin/python benchmarks/embed.py [--clients 4] [--batch 32] [--batches 48] [--rounds 5]
                                         [--threads N]
"""

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node_agent.embedding_model import THREADS_ENV, EmbeddingModel, l2_normalize  # noqa: E402
from node_agent.ports import free_port  # noqa: E402
from prism.dev.tiny_embedder import COMMON_WORDS, write_tiny_embedder  # noqa: E402

REALISTIC = {"dimensions": 384, "layers": 3, "mlp_width": 1536}
GOAL = 0.8


def sentences(count: int, seed: int = 0) -> list[str]:
    """Deterministic sentences of 6-40 words, a typical spread for embedding requests."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(COMMON_WORDS, k=rng.randint(6, 40))) for _ in range(count)]


def start_server(weights: Path, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "node_agent.embedding_server", "--weights", str(weights)]
    process = subprocess.Popen(
        [*command, "--port", str(port)], cwd=REPO, env=env, stderr=subprocess.DEVNULL
    )
    return process, port


def post(connection: http.client.HTTPConnection, body: bytes) -> bytes:
    connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"server answered {response.status}: {answer[:200]!r}")
    return answer


def wait_first_answer(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    body = json.dumps({"input": "hello"}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}")
        try:
            post(http.client.HTTPConnection("127.0.0.1", port, timeout=30), body)
            return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("server did not answer in time")


def direct_round(model: EmbeddingModel, batches: list[list[str]]) -> float:
    """Sentences/s of exactly the server engine's work, in-process, one batch at a time."""
    started = time.perf_counter()
    for batch in batches:
        rows = model.embed(model.tokenize(batch))
        if model.normalize:
            rows = l2_normalize(rows)
    return sum(map(len, batches)) / (time.perf_counter() - started)


def server_round(port: int, bodies: list[bytes], clients: int, batch: int) -> float:
    """Sentences/s with `clients` keep-alive connections taking bodies off one list."""
    pending, lock, failures = list(reversed(bodies)), threading.Lock(), []
    connections = [
        http.client.HTTPConnection("127.0.0.1", port, timeout=120) for _ in range(clients)
    ]
    for connection in connections:
        connection.connect()

    def client(connection: http.client.HTTPConnection) -> None:
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    body = pending.pop()
                post(connection, body)
        except Exception as exc:  # reported after the round
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in connections]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    if failures:
        raise failures[0]
    return len(bodies) * batch / elapsed


def check_same_vectors(model: EmbeddingModel, port: int, batch: list[str]) -> None:
    answer = json.loads(post(http.client.HTTPConnection("127.0.0.1", port), _body(batch)))
    served = np.array([item["embedding"] for item in answer["data"]])
    direct = l2_normalize(model.embed(model.tokenize(batch)))
    np.testing.assert_allclose(served, direct, atol=1e-5)


def _body(batch: list[str]) -> bytes:
    return json.dumps({"input": batch}).encode()


def throughput(args, workdir: Path, env: dict) -> None:
    weights = write_tiny_embedder(workdir / "realistic", **REALISTIC)
    batches = [sentences(args.batch, seed) for seed in range(args.batches)]
    bodies = [_body(batch) for batch in batches]
    model = EmbeddingModel.load(weights, args.threads)
    process, port = start_server(weights, env)
    try:
        wait_first_answer(port, process)
        check_same_vectors(model, port, batches[0])
        direct_round(model, batches[:2])  # warm both up
        server_round(port, bodies[:2], args.clients, args.batch)
        direct, served = [], []
        for number in range(1, args.rounds + 1):
            direct.append(direct_round(model, batches))
            served.append(server_round(port, bodies, args.clients, args.batch))
            print(f"  round {number}: direct {direct[-1]:8.1f}   server {served[-1]:8.1f}")
        health = json.loads(_get(port, "/health"))
    finally:
        process.terminate()
        process.wait()
    direct_median, served_median = statistics.median(direct), statistics.median(served)
    ratio = served_median / direct_median
    print(
        f"  median : direct {direct_median:8.1f}   server {served_median:8.1f}   ratio {ratio:.2f}x"
    )
    print(f"  server batches: {health['requests']} requests in {health['batches']} batches")
    print(f"goal server >= {GOAL}x direct: {'met' if ratio >= GOAL else 'NOT met'}")


def _get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    return connection.getresponse().read()


def startup(workdir: Path, env: dict, runs: int) -> None:
    weights = write_tiny_embedder(workdir / "tiny")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        process, port = start_server(weights, env)
        try:
            wait_first_answer(port, process)
            times.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait()
    listed = ", ".join(f"{t:.2f}" for t in times)
    print(f"startup (process start -> first /v1/embeddings answer, tiny model): "
          f"median {statistics.median(times):.2f} s ({listed})")  # fmt: skip


def deploy_to_answer(workdir: Path, runs: int) -> None:
    """POST /deploy on a standalone node (the product's example body, no command: the node
    pulls hf:// from a fake Hub, picks the built-in server, starts it) -> first answer."""
    from prism.dev.fakes.hf_hub import FakeHfHub
    from prism.dev.tiny_embedder import tiny_embedder_files

    with FakeHfHub() as hub:
        hub.add_commit("sentence-transformers/paraphrase-MiniLM-L3-v2", tiny_embedder_files())
        node, base, headers = start_standalone_node(workdir / "node", hub.url)
        try:
            times = [deployed_and_answered(base, headers, f"bench-{i}") for i in range(runs)]
        finally:
            node.terminate()
            node.wait(timeout=30)
    listed = ", ".join(f"{t:.2f}" for t in times)
    print(f"POST /deploy -> first /v1/embeddings answer through the node (pull, engine choice, "
          f"start, ready, proxy; the first pulls, the others hit the cache): "
          f"median {statistics.median(times):.2f} s ({listed})")  # fmt: skip


def start_standalone_node(state: Path, hub_url: str) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    command = [sys.executable, "-m", "prism", "node", "up", "--standalone", "--state-dir",
               str(state), "--local-api-port", str(port)]  # fmt: skip
    env = os.environ | {"HF_ENDPOINT": hub_url}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    node = subprocess.Popen(command, cwd=REPO, env=env, **quiet)
    deadline = time.monotonic() + 60
    while not (state / "local-token").exists() or not _answers(port):
        if time.monotonic() > deadline or node.poll() is not None:
            raise SystemExit("the standalone node did not start")
        time.sleep(0.05)
    token = (state / "local-token").read_text().strip()
    return node, f"127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}


def _answers(port: int) -> bool:
    try:
        _get(port, "/health")
        return True
    except OSError:
        return False


def deployed_and_answered(base: str, headers: dict, name: str) -> float:
    body = {"deployment_id": name, "weights_source": "hf://sentence-transformers/"
            "paraphrase-MiniLM-L3-v2", "framework": "auto", "gpu": False}  # fmt: skip
    started = time.perf_counter()
    accepted = _call(base, "POST", "/deploy", headers, body)
    while (found := _call(base, "GET", f"/deployments/{name}", headers))["status"] != "running":
        if found["status"] not in ("pulling", "starting"):
            raise SystemExit(f"{name} ended {found}")
        time.sleep(0.01)
    endpoint = found["endpoint_url"].removeprefix("http://")
    key = {"Authorization": f"Bearer {accepted['endpoint_key']}"}
    _call(endpoint, "POST", "/v1/embeddings", key, {"input": "hello world"})
    elapsed = time.perf_counter() - started
    _call(base, "DELETE", f"/deployments/{name}", headers)
    return elapsed


def _call(base: str, method: str, path: str, headers: dict, body=None) -> dict:
    connection = http.client.HTTPConnection(base, timeout=60)
    data = None if body is None else json.dumps(body)
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {answer}")
    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="sentences per request")
    parser.add_argument("--batches", type=int, default=48, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help=f"onnxruntime threads ({THREADS_ENV})")
    parser.add_argument("--startups", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    if args.threads:
        env[THREADS_ENV] = str(args.threads)
    threads = args.threads or "onnxruntime's default"
    print(f"cpu count: {os.cpu_count()}; onnxruntime intra-op threads: {threads} (both sides)")
    print(f"throughput, sentences/s: {args.clients} clients x batches of {args.batch}, "
          f"{args.batches} batches a round; model {REALISTIC}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="prism-embed-bench-") as workdir:
        throughput(args, Path(workdir), env)
        startup(Path(workdir), env, args.startups)
        deploy_to_answer(Path(workdir), args.startups)


if __name__ == "__main__":
    main()
