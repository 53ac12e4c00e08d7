#!/usr/bin/env bash
# Install everything (venv, package with dev extras, system packages when missing) and run all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
sha256sum pyproject.toml | cut -d' ' -f1 >.venv/.liveroom-installed  # scripts/serve.sh: installed

# System packages the tests drive for real (Redis, Chromium): installed only when missing.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# screenshots of the browser tests show Chinese danmaku as text, not boxes
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
# tests/test_media_turn.py: a relay-only browser viewer gets video through a real TURN server
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
# tests/test_readme.py runs the README's `curl` lines
command -v curl >/dev/null 2>&1 || need+=(curl)
# tests/test_media_rtmp.py: --rtmp-port runs Debian's nginx with its RTMP module (server/edge/rtmp.py);
# tests/media/test_hls_cache.py, tests/test_browser_hls.py: nginx as the LL-HLS caching proxy
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q "$@"
