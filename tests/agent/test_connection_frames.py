"""What the agent sends fits API Gateway's WebSocket limits: no frame over 32 KB (a larger one
closes the connection), a large message split into continuation frames that reassemble exactly.
The server side is websockets' sans-I/O protocol on a real socket, which shows every frame."""

import json
import socket
import threading

import websocket
from websockets.frames import Opcode
from websockets.server import ServerProtocol

from chalicelib.protocol import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, LogsResult
from node_agent.connection import send_in_frames


def frames_received(payloads: list[str]) -> list[list]:
    """Send each payload from a real websocket-client connection; the frames the server got,
    per message."""
    listener = socket.create_server(("127.0.0.1", 0))
    frames: list = []

    def serve() -> None:
        conn, _ = listener.accept()
        protocol = ServerProtocol()
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                protocol.receive_data(data)
                for event in protocol.events_received():
                    if hasattr(event, "opcode"):
                        frames.append(event)
                    else:  # the opening handshake
                        protocol.send_response(protocol.accept(event))
                for out in protocol.data_to_send():
                    conn.sendall(out)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = websocket.create_connection(f"ws://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
    for payload in payloads:
        send_in_frames(ws, payload)
    ws.close()
    thread.join(timeout=5)
    listener.close()
    messages, current = [], []
    for frame in frames:
        if frame.opcode in (Opcode.TEXT, Opcode.CONT):
            current.append(frame)
            if frame.fin:
                messages.append(current)
                current = []
    return messages


def test_a_large_message_goes_in_frames_of_at_most_32_kb_and_reassembles():
    logs = LogsResult(
        request_id="r1",
        deployment_id="dep_0123456789abcdef",
        lines=[f"{n:05d} é " + "x" * 190 for n in range(5000)],  # ~1 MB asked for
    ).to_json()
    assert MAX_FRAME_BYTES < len(logs.encode()) <= MAX_MESSAGE_BYTES  # bounded, and still big
    small = json.dumps({"type": "heartbeat", "id": "h1"})
    big, little = frames_received([logs, small])
    assert len(big) == -(-len(logs.encode()) // MAX_FRAME_BYTES) > 1
    assert all(len(frame.data) <= MAX_FRAME_BYTES for frame in big)
    assert [frame.opcode for frame in big] == [Opcode.TEXT] + [Opcode.CONT] * (len(big) - 1)
    assert b"".join(frame.data for frame in big).decode() == logs
    assert [frame.data.decode() for frame in little] == [small]  # one frame, as before
    lines = json.loads(logs)["lines"]
    assert lines[0].startswith("[... ") and "earlier lines cut" in lines[0]
    assert lines[-1].startswith("04999 ")  # the newest lines are the ones kept
