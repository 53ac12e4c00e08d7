"""What `liveroom serve` writes at INFO: refusals with code and reason, no line per static file."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from websockets.sync.client import connect


def test_info_log_has_refusal_reasons_and_no_static_file_lines() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        for path in ("/room.css", "/live.js", "/healthz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                assert r.status == 200
        with connect(f"ws://127.0.0.1:{port}/ws?token=not-a-token") as ws:
            ws.recv(timeout=30)  # the error frame; the server then closes with 4101
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    refused = [x for x in err.splitlines() if " refused " in f"{x} "]
    assert refused, err
    assert "code=4101" in refused[0] and "error=token_invalid" in refused[0] and "reason=" in refused[0]
    assert "HTTP response sent (200" not in err and "connection open" not in err, err
