"""Network helpers shared by the tests."""
from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (kept bound together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port nobody listens on right now (the kernel's pick)."""
    return free_ports(1)[0]
