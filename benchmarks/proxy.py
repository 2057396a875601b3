"""The node agent's endpoint proxy beside direct access to the same model server, and beside a
bare byte relay, same run, on loopback, side by side.

  small JSON   requests/s with N concurrent keep-alive clients (aiohttp, identical each way)
               and p50/p99 latency of one client at a time (what a request alone pays)
  streaming    bytes/s of a 10 MB chunked response, read as it arrives
  CPU          what the model's process and the one in between spent per small request
               (/proc): where throughput goes when clients, proxy and model share few cores

The model server is aiohttp (fast, so the proxy's own cost shows), in its own process; the
proxy (node_agent.proxy, auth "key", exactly as the agent runs it) in another; the clients
here. The bare relay (uvloop, copies bytes both ways and reads none of them) is the floor any
proxy in its own process pays on this machine: one more hop, each byte copied twice more. Rounds
alternate the three so all see the same machine noise; medians are printed.
Goals: >= 0.8x the direct throughput, <= 1 ms added p50, streaming >= 0.9x direct bytes/s.

    .venv/bin/python benchmarks/proxy.py [--concurrency 16] [--seconds 3] [--rounds 3]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prism.dev.processes import free_port  # noqa: E402

KEY = "prismep_benchmark"
STREAM_BYTES = 10 * 1024 * 1024
CHUNK = 64 * 1024
PAYLOAD = {"inputs": [[1.0, 2.0, 3.0, 4.0]], "parameters": {"temperature": 0.7}}


# -- the two servers, each in a process of its own -------------------------------------------


def serve_model(port: int) -> None:
    from aiohttp import web

    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"outputs": [sum(row) for row in body["inputs"]]})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        block = b"x" * CHUNK
        for _ in range(STREAM_BYTES // CHUNK):
            await response.write(block)
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.post("/predict", predict), web.get("/stream", stream)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_proxy(port: int, model_port: int) -> None:
    from chalicelib.protocol import hash_endpoint_key
    from node_agent.proxy import EndpointProxy

    proxy = EndpointProxy()
    proxy.open("dep_0000000000000001", "127.0.0.1", port, model_port, "key", [
        hash_endpoint_key(KEY)
    ])  # fmt: skip
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def serve_relay(port: int, model_port: int) -> None:
    import uvloop

    class Side(asyncio.Protocol):
        def __init__(self, other=None):
            self.other, self.transport, self.waiting = other, None, []

        def connection_made(self, transport):
            self.transport = transport
            if self.other is None:  # a client: connect its own way to the model
                self.other = Side(self)
                loop = asyncio.get_running_loop()
                loop.create_task(
                    loop.create_connection(lambda: self.other, "127.0.0.1", model_port)
                )
            else:
                for data in self.other.waiting:
                    transport.write(data)

        def data_received(self, data):
            if self.other.transport is None:
                self.waiting.append(data)
            else:
                self.other.transport.write(data)

        def connection_lost(self, exc):
            if self.other is not None and self.other.transport is not None:
                self.other.transport.close()

    async def relay():
        await asyncio.get_running_loop().create_server(Side, "127.0.0.1", port)
        await asyncio.Event().wait()

    uvloop.run(relay())


# -- the clients ------------------------------------------------------------------------------


async def throughput(url: str, concurrency: int, seconds: float) -> float:
    import aiohttp

    done = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url + "/predict", json=PAYLOAD) as response:
                    await response.read()
                    assert response.status == 200, response.status
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


async def latencies(url: str, count: int) -> list[float]:
    import aiohttp

    seen = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url + "/predict", json=PAYLOAD) as response:
                await response.read()
            seen.append((time.perf_counter() - started) * 1000)
    return seen


async def streaming(url: str, repeats: int) -> float:
    import aiohttp

    received = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        started = time.perf_counter()
        for _ in range(repeats):
            async with session.get(url + "/stream") as response:
                async for chunk in response.content.iter_any():
                    received += len(chunk)
        seconds = time.perf_counter() - started
    assert received == repeats * STREAM_BYTES, received
    return received / seconds


# -- the run ----------------------------------------------------------------------------------


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(urls: dict, pids: dict, args) -> dict:
    """Per side (direct, relay, proxy) the medians; `between_us` is the CPU per small request of
    the process between the clients and the model (none when direct)."""
    keys = ("rps", "p50", "p99", "bps", "model_us", "between_us")
    results = {side: {k: [] for k in keys} for side in urls}
    for _ in range(args.rounds):
        for side, url in urls.items():  # alternating: all see the same noise
            watched = {"model": pids["model"], "between": pids.get(side)}
            before = {name: cpu_seconds(pid) for name, pid in watched.items() if pid}
            started = time.perf_counter()
            rps = asyncio.run(throughput(url, args.concurrency, args.seconds))
            count = rps * (time.perf_counter() - started)
            for name, pid in watched.items():
                spent = cpu_seconds(pid) - before[name] if pid else 0.0
                results[side][f"{name}_us"].append(spent / count * 1e6)
            results[side]["rps"].append(rps)
            alone = sorted(asyncio.run(latencies(url, args.latency_requests)))
            results[side]["p50"].append(alone[len(alone) // 2])
            results[side]["p99"].append(alone[int(len(alone) * 0.99) - 1])
            results[side]["bps"].append(asyncio.run(streaming(url, args.stream_repeats)))
    return {side: {k: statistics.median(v) for k, v in r.items()} for side, r in results.items()}


ROWS = [
    ("small JSON req/s (x{concurrency})", "rps", "{:,.0f}"),
    ("small JSON p50 ms (alone)", "p50", "{:.3f}"),
    ("small JSON p99 ms (alone)", "p99", "{:.3f}"),
    ("10 MB stream MB/s", "bps", "{:,.0f}"),
    ("model CPU us / small request", "model_us", "{:.0f}"),
    ("in-between CPU us / small request", "between_us", "{:.0f}"),
]


def report(figures: dict, args) -> None:
    direct, relay, proxied = figures["direct"], figures["relay"], figures["proxy"]
    print(f"{'':36} {'direct':>9} {'relay':>9} {'proxy':>9} {'proxy/direct':>13} {'/relay':>7}")
    for label, key, shape in ROWS:
        scale = 1e-6 if key == "bps" else 1
        a, r, b = (side[key] * scale for side in (direct, relay, proxied))
        ratios = f"{b / a:>12.2f}x {b / r:>6.2f}x" if a else f"{'':>13} {b / r:>6.2f}x"
        cells = "".join(f" {shape.format(v):>9}" for v in (a, r, b))
        print(f"{label.format(concurrency=args.concurrency):36}{cells} {ratios}")
    checks = [
        ("throughput >= 0.8x direct", proxied["rps"] / direct["rps"] >= 0.8),
        (
            f"added p50 <= 1 ms (+{proxied['p50'] - direct['p50']:.3f} ms)",
            proxied["p50"] - direct["p50"] <= 1.0,
        ),
        ("streaming >= 0.9x direct", proxied["bps"] / direct["bps"] >= 0.9),
    ]
    for goal, met in checks:
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    print(
        f"floor on this machine (a relay that reads nothing): {relay['rps'] / direct['rps']:.2f}x "
        f"direct throughput, {relay['bps'] / direct['bps']:.2f}x direct streaming"
    )
    print(json.dumps({"cpus": os.cpu_count(), **{k: v for k, v in vars(args).items()}}))


def main() -> None:
    servers = {"--model": serve_model, "--proxy": serve_proxy, "--relay": serve_relay}
    if sys.argv[1:2] and sys.argv[1] in servers:
        return servers[sys.argv[1]](*map(int, sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=2000)
    parser.add_argument("--stream-repeats", type=int, default=30)
    args = parser.parse_args()
    ports = {side: free_port() for side in ("direct", "relay", "proxy")}
    model = ports["direct"]
    children = {
        "model": start("--model", str(model)),
        "relay": start("--relay", str(ports["relay"]), str(model)),
        "proxy": start("--proxy", str(ports["proxy"]), str(model)),
    }
    try:
        for port in ports.values():
            wait_listening(port)
        urls = {side: f"http://127.0.0.1:{port}" for side, port in ports.items()}
        report(measure(urls, {name: c.pid for name, c in children.items()}, args), args)
    finally:
        for child in children.values():
            child.terminate()
            child.wait(timeout=10)


if __name__ == "__main__":
    main()
