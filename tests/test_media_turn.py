"""A browser viewer that may only use TURN relay candidates gets the host's video through coturn.

Real parts only: Debian's `coturn` (turnserver) on loopback with the TURN REST shared
secret, `python -m server serve --ice-servers turn:... --turn-secret ...`, the Python host
publishing a test pattern, and headless Chromium opening the viewer page with `?ice=relay`
(iceTransportPolicy "relay"): the page takes the ICE servers and its time-limited TURN
credential from the join snapshot. The selected candidate pair proves the relay was used.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.ports import free_port
from tests.test_browser import (  # noqa: F401 - `browser` is a fixture
    ARTIFACTS,
    ROOT,
    Pages,
    ServerProcess,
    browser,
    wait_video_playing,
)

pytestmark = pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn not installed")
TURN_SECRET = "turn-shared-secret-for-tests"
WAIT = 30.0


def stun_answers(port: int) -> bool:
    """A STUN Binding request (RFC 5389) to the TURN port gets a Binding response."""
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(request, ("127.0.0.1", port))
        try:
            data = sock.recv(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == request[8:20]


@pytest.fixture
def turn_port() -> Iterator[int]:
    port = free_port()
    relay_low = 49160 + (port % 50) * 20  # a small relay range of our own
    log = open(ARTIFACTS / "turnserver.log", "w")  # noqa: SIM115 (closed below)
    args = [f"--listening-port={port}", f"--min-port={relay_low}", f"--max-port={relay_low + 19}"]
    args += ["--use-auth-secret", f"--static-auth-secret={TURN_SECRET}", "--realm=liveroom"]
    args += [
        "--allow-loopback-peers",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--fingerprint",
        "--log-file=stdout",
    ]
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", *args, "--simple-log"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + WAIT
        while not stun_answers(port):
            assert proc.poll() is None, "turnserver exited"
            assert time.monotonic() < deadline, "turnserver did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(WAIT)
        log.close()


@pytest.fixture
def turn_server_node(turn_port: int) -> Iterator[ServerProcess]:
    ARTIFACTS.mkdir(exist_ok=True)
    srv = ServerProcess(
        free_port(),
        "--tick-ms",
        "20",
        "--ice-servers",
        f"turn:127.0.0.1:{turn_port}?transport=udp",
        "--turn-secret",
        TURN_SECRET,
    )
    srv.start()
    args = ["--server", f"ws://127.0.0.1:{srv.port}", "--room", "turn", "--width", "320", "--height", "240"]
    host = subprocess.Popen(
        [sys.executable, "-m", "client_demo.host", *args, "--fps", "15", "--stats-interval", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield srv
    finally:
        host.kill()
        host.wait(WAIT)
        srv.stop()


SELECTED_PAIR = """async () => {
  const pc = window.liveroom.media.pc;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
  if (!pair) stats.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  return { type: local.candidateType, bytes: pair.bytesReceived };
}"""


def test_relay_only_browser_viewer_plays_through_coturn(
    browser,  # noqa: F811
    turn_port: int,
    turn_server_node: ServerProcess,
) -> None:
    pages = Pages(browser, turn_server_node.base)
    try:
        page = pages.open("/room/turn?user=natted&name=Natted&ice=relay")
        wait_video_playing(page)
        config = page.evaluate("window.liveroom.media.pc.getConfiguration()")
        assert config["iceTransportPolicy"] == "relay"
        (turn,) = config["iceServers"]  # from the snapshot, with a time-limited credential for this user
        assert turn["urls"] == [f"turn:127.0.0.1:{turn_port}?transport=udp"]
        expiry, user = turn["username"].split(":")
        assert user == "natted" and int(expiry) > time.time()
        pair = page.evaluate(SELECTED_PAIR)
        assert pair is not None and pair["type"] == "relay", pair
        assert pair["bytes"] > 0
        page.screenshot(path=str(ARTIFACTS / "turn-relay-viewer.png"))
    finally:
        pages.close()
    assert not pages.errors, pages.errors
