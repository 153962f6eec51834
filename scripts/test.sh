#!/usr/bin/env bash
# Set everything up, then lint, type-check and run every test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "== ruff"; .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
if [ "$#" -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
# Unit and integration tests on two workers (a file's tests stay together: they share its servers).
.venv/bin/python -m pytest -n 2 --dist loadfile tests/unit tests/integration
# The real-Airflow tests, two files at a time: each starts its own Airflow stack (free ports, its own
# AIRFLOW_HOME; the CeleryExecutor ones their own PostgreSQL database and Redis db), and most of their
# time is spent waiting on schedulers and paced transfers, not computing.
exec .venv/bin/python -m pytest -n 2 --dist loadfile tests/airflow
