"""Ports on the node: whether one is free, a free one, and who listens on one.

The agent reserves each deployment's port under its own lock (node_agent.deploying), so two
deployments never get the same port; these helpers say what the rest of the machine is doing.
`listener_pids` reads Linux's /proc so a health probe counts only an answer from the
deployment's own processes, never from some other server that took the port.
"""

import os
import socket
from pathlib import Path

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def port_is_free(port: int) -> bool:
    """Nothing listens on, or holds, `port` on any interface (SO_REUSEADDR: a port whose
    last connections linger in TIME_WAIT is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def listener_inodes(port: int, proc: Path = Path("/proc")) -> set[str] | None:
    """The socket inodes listening on TCP `port` (IPv4 and IPv6); None where /proc cannot
    tell (not Linux)."""
    found, readable = set(), False
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                found.add(inode)
    return found if readable else None


def listener_pids(port: int, among: set[int], proc: Path = Path("/proc")) -> set[int] | None:
    """Which of the processes `among` hold a socket listening on `port`; None where /proc
    cannot tell. Reads only the file descriptors of `among`, not the whole machine's."""
    inodes = listener_inodes(port, proc)
    if inodes is None:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for pid in among:
        try:
            fds = os.listdir(proc / str(pid) / "fd")
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                if os.readlink(proc / str(pid) / "fd" / fd) in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def group_members(pgid: int, proc: Path = Path("/proc")) -> set[int]:
    """The live processes of process group `pgid` (a model and the workers it forked)."""
    members = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(entry.name))
    return members
