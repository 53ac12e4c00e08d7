"""Ports for the servers the tests start (nodes, redis-server, nginx, coturn), below Linux's
ephemeral range (32768 and up).

A port found free by `bind(0)` is in that range, and between the check and the server's own
bind any process's outgoing connection or `bind(0)` (a node, a browser, another suite on the
machine) may take it; a server restarted in place on its port can lose it the same way. Below
the range only another listener can, and each port is checked free when it is picked.
"""

from __future__ import annotations

import random
import socket

SINGLE = (5000, 10000)  # free_port(): below the cluster ports
CLUSTER = (10000, 22000)  # cluster_ports(): their bus ports (+10000) are 20000-31999


def free_port() -> int:
    """A loopback TCP port that nothing listens on, below the ephemeral range."""
    while True:
        port = random.randrange(*SINGLE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def cluster_ports(count: int) -> list[int]:
    """`count` distinct ports whose cluster bus port (+10000) is free too, both below the
    ephemeral range (a fresh-clone run once timed out on a node at 30630, whose bus port 40630
    is in that range)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            port = random.randrange(*CLUSTER)
            pair = [socket.socket(), socket.socket()]
            try:
                pair[0].bind(("127.0.0.1", port))
                pair[1].bind(("127.0.0.1", port + 10000))
            except OSError:
                for sock in pair:
                    sock.close()
                continue
            socks += pair
            ports.append(port)
        return ports
    finally:
        for sock in socks:
            sock.close()
