#!/usr/bin/env bash
# The main job on a fresh machine: installs what it needs, then migrates a synthetic archive
# into a local receiver and prints the summary. Extra arguments go to scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
