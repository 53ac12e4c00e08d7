"""A real nginx caching reverse proxy in front of a node's media port (no mocks).

Started on a free loopback port like tests/redis_fixtures.py starts redis-server, with the
configuration docs/API.md "HLS behind a CDN" documents: the cache key is the URL without the
viewer's token, `proxy_cache_lock on` collapses concurrent misses into one origin request.
The config and the cache live in the test's tmp_path. scripts/test.sh installs nginx.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.redis_fixtures import poll

requires_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")


def config_text(listen: int, origin: int, home: Path) -> str:
    """The nginx.conf: the `location` block is the one docs/API.md shows."""
    # as root the master drops its workers to `nobody`, who could not write the cache in tmp_path
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {home}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    log_format cache '$upstream_cache_status $status $request_uri';
    access_log {home}/access.log cache;
    proxy_cache_path {home}/cache keys_zone=hls:10m max_size=200m inactive=60s;
    upstream media_nodes {{
        server 127.0.0.1:{origin};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen};
        location ~ ^/hls/(?<room>[^/]+)/(?<tok>[^/]+)/(?<rest>.+)$ {{
            proxy_pass http://media_nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;           # a name the node answers to
            proxy_cache hls;
            proxy_cache_key "$room/$rest$is_args$arg__HLS_msn.$arg__HLS_part";
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            proxy_read_timeout 10s;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
        location /hls/ {{                              # the token endpoint: never cached
            proxy_pass http://media_nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


class NginxCache:
    """nginx as a child process in the foreground (`daemon off`), stopped with the test."""

    def __init__(self, home: Path, origin: int) -> None:
        self.home = home
        self.port = free_port()
        self.origin = origin
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        conf = self.home / "nginx.conf"
        conf.write_text(config_text(self.port, self.origin, self.home))
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.home), "-c", str(conf), "-e", str(self.home / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        poll(self._answers, what=f"nginx to listen (see {self.home}/error.log)")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {(self.home / 'error.log').read_text()}")
        try:
            urllib.request.urlopen(f"{self.base}/nothing", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # nginx's own 404: it is up
        except OSError:
            return False
        return True

    def cache_statuses(self) -> list[str]:
        """`<cache status> <status> <uri>` per request, from the access log (for failure messages)."""
        log = self.home / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown, workers included
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None
