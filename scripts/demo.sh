#!/usr/bin/env bash
# Set up (if needed) and run the demo: embedded broker + Redis, the flows, generated traffic.
# Extra arguments go to `omnistream demo` (see `.venv/bin/omnistream demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/omnistream demo "$@"
