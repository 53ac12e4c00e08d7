#!/usr/bin/env bash
# Install (venv + package) and run one node (in-memory broker) with a test pattern streaming
# into room "demo" (--demo); prints the viewer page URL. Extra arguments go to `liveroom serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/liveroom serve --demo "$@"
