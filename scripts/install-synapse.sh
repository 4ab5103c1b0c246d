#!/usr/bin/env bash
# Install a pinned Synapse homeserver into a project-local virtualenv for the end-to-end tests.
#
# Idempotent: does nothing when .venv-synapse/ already holds the pinned version.
#
# Usage: scripts/install-synapse.sh
#   SYNAPSE_VENV  venv directory (default: <repo>/.venv-synapse)
#   PYTHON        interpreter used to create the venv (default: python3; needs >= 3.10)
set -euo pipefail

SYNAPSE_VERSION="1.163.2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SYNAPSE_VENV:-$ROOT/.venv-synapse}"
PYTHON="${PYTHON:-python3}"

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null || true
}

if [ -x "$VENV/bin/python" ] && [ "$(installed_version)" = "$SYNAPSE_VERSION" ]; then
  echo "install-synapse: matrix-synapse $SYNAPSE_VERSION already installed in $VENV"
  exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "install-synapse: $PYTHON is $("$PYTHON" --version 2>&1); Synapse $SYNAPSE_VERSION needs Python >= 3.10" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "install-synapse: creating venv $VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    # Debian's system python ships venv/ensurepip separately.
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get update -qq && apt-get install -y -qq "python${pyver}-venv" || apt-get install -y -qq python3-venv
      rm -rf "$VENV"
      "$PYTHON" -m venv "$VENV"
    else
      exit 1
    fi
  fi
fi

echo "install-synapse: installing matrix-synapse==$SYNAPSE_VERSION"
start=$(date +%s)
# A current pip resolves and installs Synapse's ~60 dependencies noticeably faster than Python 3.11's bundled one.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip || true
# Prefer wheels: building Synapse's Rust extension from source would need a Rust toolchain and minutes.
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" "matrix-synapse==$SYNAPSE_VERSION"
}
pip_install --only-binary=:all: || {
  echo "install-synapse: wheel-only install failed; retrying allowing source builds" >&2
  pip_install
}
echo "install-synapse: done in $(( $(date +%s) - start ))s ($(installed_version))"
