#!/usr/bin/env bash
# Benchmarks (see bench/README.md):
#   bench/run.sh                      both benches in sequence, default settings
#   bench/run.sh emulator [args]      bench/emulator_bench.py: the emulator vs the loopback ceiling
#   bench/run.sh transfer [args]      bench/transfer_bench.py: the hook vs databricks-sdk FilesExt
#   bench/run.sh checkpoint [args]    bench/checkpoint_bench.py: cost of chunk durability and checkpoint writes
#   bench/run.sh azure [args]         bench/azure_bench.py: Azure Blob through the engine vs azure-storage-blob
#   bench/run.sh zerobus [args]       bench/zerobus_bench.py: Zerobus ingest through the engine vs the SDK
#   bench/run.sh sync [args]          bench/sync_bench.py: Volume sync of 20,000 small files vs the SDK
# Extra args go to the chosen script (each has --help).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
case "${1:-}" in
    "")
        "$py" bench/emulator_bench.py
        exec "$py" bench/transfer_bench.py
        ;;
    emulator)
        shift
        exec "$py" bench/emulator_bench.py "$@"
        ;;
    transfer)
        shift
        exec "$py" bench/transfer_bench.py "$@"
        ;;
    checkpoint)
        shift
        exec "$py" bench/checkpoint_bench.py "$@"
        ;;
    azure)
        shift
        exec "$py" bench/azure_bench.py "$@"
        ;;
    zerobus)
        shift
        exec "$py" bench/zerobus_bench.py "$@"
        ;;
    sync)
        shift
        exec "$py" bench/sync_bench.py "$@"
        ;;
    -h | --help | help)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        echo "usage: bench/run.sh [emulator|transfer|checkpoint|azure|zerobus|sync] [args...]  (bench/run.sh --help)" >&2
        exit 2
        ;;
esac
