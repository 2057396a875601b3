"""A model server for the endpoint proxy tests (aiohttp), run by the agent as a process: listens
on $HOST:$PORT and records in $STATE what the proxy cannot show.

GET  /health, GET /echo      -> {"pid", "headers", "env", "path_qs", "peer_port"}
GET  /sse?n=5&gap=0.2        -> text/event-stream, an event every `gap` s, each with its sent_at
GET  /bytes?size=N           -> N bytes (a repeating pattern), chunked, 1 MiB at a time
POST /digest                 -> {"sha256", "length"} of the body, read as it streams in
GET  /slow                   -> chunks every 0.1 s for a minute; writes $STATE/<id>.gone when
                                its client (the proxy) goes away
GET  /redirect               -> 302 to /echo.   GET /gzip -> a gzip body, Content-Encoding: gzip
GET  /ws                     -> a WebSocket echo (text and binary)
"""

import asyncio
import gzip
import hashlib
import json
import os
import time
from pathlib import Path

from aiohttp import WSMsgType, web

STATE = Path(os.environ["STATE"])
PATTERN = bytes(range(256)) * 4096  # 1 MiB


async def echo(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "pid": os.getpid(),
            "headers": dict(request.headers),
            "env": dict(os.environ),
            "path_qs": request.raw_path,
            "peer_port": request.transport.get_extra_info("peername")[1],  # which connection
        }
    )


async def sse(request: web.Request) -> web.StreamResponse:
    count, gap = int(request.query.get("n", "5")), float(request.query.get("gap", "0.2"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(count):
        if i:
            await asyncio.sleep(gap)
        await response.write(f"data: {json.dumps({'i': i, 'sent_at': time.time()})}\n\n".encode())
    await response.write_eof()
    return response


async def many_bytes(request: web.Request) -> web.StreamResponse:
    left = int(request.query["size"])
    response = web.StreamResponse()
    await response.prepare(request)
    while left > 0:
        chunk = PATTERN[: min(left, len(PATTERN))]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


async def digest(request: web.Request) -> web.Response:
    sha, length = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():
        sha.update(chunk)
        length += len(chunk)
    return web.json_response({"sha256": sha.hexdigest(), "length": length})


async def slow(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        for i in range(600):
            await response.write(f"tick {i}\n".encode())
            await asyncio.sleep(0.1)
    except (ConnectionError, asyncio.CancelledError):
        (STATE / f"{request.query.get('id', 'slow')}.gone").touch()
        raise
    return response


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo")


async def gzipped(request: web.Request) -> web.Response:
    body = gzip.compress(b"squeezed " * 100)
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=("echo",))
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str("echo: " + message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


app = web.Application(client_max_size=0)
app.add_routes(
    [
        web.get("/health", echo),
        web.get("/echo", echo),
        web.get("/sse", sse),
        web.get("/bytes", many_bytes),
        web.post("/digest", digest),
        web.get("/slow", slow),
        web.get("/redirect", redirect),
        web.get("/gzip", gzipped),
        web.get("/ws", websocket),
    ]
)

if __name__ == "__main__":
    web.run_app(app, host=os.environ["HOST"], port=int(os.environ["PORT"]), print=None)
