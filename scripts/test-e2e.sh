#!/usr/bin/env bash
# End-to-end tests against a real Synapse on loopback (test/e2e/). Installs Synapse into
# .venv-synapse/ first if it is missing (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-synapse.sh
npx vitest run -c test/e2e/vitest.config.ts "$@"
