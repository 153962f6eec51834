#!/usr/bin/env bash
# Set everything up, then run the main job against the local emulators.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
