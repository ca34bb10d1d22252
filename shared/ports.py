"""Free loopback ports for servers a process starts for itself (the demo's model server, the
benchmarks' stand-ins, the tests' child services)."""

from __future__ import annotations

import contextlib
import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. The sockets stay bound until all are chosen: bound and closed one at a
    time, the kernel may hand the same port out twice (CI once gave Jaeger's query API and another of
    its listeners one port)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]
