#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite: unit tests, then integration tests
# on an embedded Kafka-compatible broker and redis-server that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
