#!/usr/bin/env bash
# Install (venv + package) when needed and run one node (in-memory broker) with a test pattern
# streaming into room "demo" (--demo); prints the viewer page URL. Extra arguments go to
# `liveroom serve` (e.g. --port 8090 --http-port 8091).
# The install runs only when the venv or the `liveroom` command is missing or pyproject.toml
# changed since the last install (a stamp in .venv holds its hash): a restart starts at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.liveroom-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/liveroom ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing liveroom into .venv ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
  echo "$want" >"$stamp"
fi
exec .venv/bin/liveroom serve --demo "$@"
