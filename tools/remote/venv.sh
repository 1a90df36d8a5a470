#!/usr/bin/env bash
# tools/remote/venv.sh: build BuildGrid's own venv (Python >= 3.13) from
# tools/remote/requirements_buildgrid.txt and print its path.
#
# BuildGrid 0.9.1 needs Python 3.13; the lab's venv is 3.11, so the server and
# our bot get a venv of their own. It is rebuilt only when the lock changes
# (the lock's sha256 is stamped inside the venv).
#
#   tools/remote/venv.sh [VENV_DIR]      # default: $LAB_REMOTE_HOME/venv
#   BUILDGRID_PYTHON=/path/to/python3.13 tools/remote/venv.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${LAB_REMOTE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/lab-remote}"
venv="${1:-$home/venv}"
lock="$here/requirements_buildgrid.txt"

find_python() {
  local candidate
  for candidate in "${BUILDGRID_PYTHON:-}" python3.13 /root/.pyenv/versions/3.13.*/bin/python \
      "$HOME"/.pyenv/versions/3.13.*/bin/python python3; do
    [[ -n "$candidate" ]] || continue
    candidate="$(command -v "$candidate" 2>/dev/null || true)"
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [[ -x "$venv/bin/bgd" && "$(cat "$venv/.lock-sha256" 2>/dev/null)" == "$want" ]]; then
  echo "$venv"
  exit 0
fi

python="$(find_python)"
if [[ -z "$python" ]]; then
  echo "tools/remote/venv.sh: BuildGrid 0.9.1 needs Python >= 3.13 and none was found." >&2
  echo "  Install one (pyenv install 3.13.0) or set BUILDGRID_PYTHON=/path/to/python3.13." >&2
  exit 1
fi

echo "tools/remote/venv.sh: building $venv with $python from $lock" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$lock" >&2
"$venv/bin/python" -c 'import buildgrid.server.version as v; assert v.__version__ == "0.9.1", v.__version__'
echo "$want" >"$venv/.lock-sha256"
echo "$venv"
