#!/usr/bin/env bash
# Idempotent set-up on a fresh machine with Python 3.10+ and Node.js 20+/npm: a virtualenv with
# this package and its test tools, plus databricks-sdk 0.156.0 and 0.162.0 side-installed for the protocol tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Both protocol generations of the official client, side-installed for the emulator's fidelity tests.
SDK_VERSIONS="0.156.0 0.162.0"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
# The main environment resolves databricks-sdk within pyproject's range: 0.162.0 on today's index,
# which has the certifi>=2026.10.19 that 0.157+ need (only an index without it settles on 0.156.x).
.venv/bin/uv pip install --quiet --python .venv/bin/python -e '.[test]'
# Both are also installed without deps beside the venv (one pinned version each, whatever the main
# environment resolved); a test puts one first on PYTHONPATH (its own deps, requests/google-auth/protobuf, are already in the venv).
for v in $SDK_VERSIONS; do
  if [ ! -f ".sdk/databricks-sdk-$v/databricks/sdk/version.py" ]; then
    .venv/bin/uv pip install --quiet --python .venv/bin/python --no-deps \
      --target ".sdk/databricks-sdk-$v" "databricks-sdk==$v"
  fi
done
# Azurite (the Azure Storage emulator the Azure tests start) is the npm package pinned in package.json.
# Install it when missing or when package-lock.json is newer than the installed tree; without npm, say so
# and go on: the Azure tests then fail with the same hint instead of skipping.
if command -v npm >/dev/null 2>&1; then
  if [ ! -x node_modules/.bin/azurite-blob ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "bootstrap: installing Azurite (npm ci)"
    npm ci --no-audit --no-fund --prefer-offline
  fi
else
  echo "bootstrap: npm is missing; install Node.js 20+ with npm, then run 'npm ci' here (Azure tests need Azurite)" >&2
fi
# tests/airflow/test_ui_browser.py drives Debian's chromium through Playwright (Playwright's own browser
# download is not used). CI runs as root on Debian: install it once; later runs find it and skip apt.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "bootstrap: chromium is missing; install it (apt-get install chromium) for the browser test" >&2
  fi
fi
