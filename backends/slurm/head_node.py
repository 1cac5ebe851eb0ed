"""Run on the batch host (the first node of the allocation): print "<head ip> <port>".

``python3 head_node.py PORT`` -- PORT 0 picks a free one. The batch script runs the source
of this file with ``python3 -c`` outside any container, so it uses the standard library only
and works on any Python 3 (the runner need not be installed on the nodes).

The address is that of the hostname unless it is a loopback one (Debian maps the hostname
to 127.0.1.1), then the address of the interface with a route out (a UDP connect sends
nothing), then loopback (one-host clusters).
"""
import random
import socket
import sys


def head_ip():
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def free_port():
    """A port below the ephemeral range, so no outgoing connection takes it before torchrun binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            lo = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    for _ in range(200):
        port = random.SystemRandom().randrange(10000 if lo > 12000 else 1024, lo)
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def main(argv):
    port = int(argv[1]) if len(argv) > 1 else 0
    print(head_ip(), port or free_port())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
