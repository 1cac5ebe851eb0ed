"""Picking a rendezvous port that stays free.

A port found by binding to port 0 comes from the kernel's ephemeral range — the same range
every outgoing connection (gloo opens many) takes its local port from, so by the time
torchrun binds it, another job's connection may hold it (EADDRINUSE). Ports are therefore
picked at random *below* the ephemeral range and checked by binding.
"""
from __future__ import annotations

import random
import socket


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            lo, hi = (int(x) for x in fh.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    lo, _ = ephemeral_range()
    floor = 10000 if lo > 12000 else 1024
    rng = random.SystemRandom()
    for _ in range(attempts):
        port = rng.randrange(floor, lo)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:   # fall back to the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]
