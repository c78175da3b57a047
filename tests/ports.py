"""Free TCP ports for servers that a test starts in another process.

A port taken from the kernel (bind to 0) lies in the ephemeral range, where any outgoing
connection made before the other process binds it may take it (a ZeroMQ connect, an HTTP scrape):
the server then fails to bind and the test waits in vain. Ports below that range are only ever
handed out on request, so a port picked there and found free stays free.
"""

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 20000  # above the well-known and most registered service ports
_handed_out: set[int] = set()  # a test may pick two ports before binding either


def _ephemeral_low() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port on host that nothing listens on, below the ephemeral range when there is room."""
    low = _ephemeral_low()
    candidates = random.sample(range(LOWEST, low), min(200, low - LOWEST)) if low - LOWEST > 0 else []
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]
