#!/usr/bin/env bash
# Emulator throughput bench; extra args go to bench/emulator_bench.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/emulator_bench.py "$@"
