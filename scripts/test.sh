#!/usr/bin/env bash
# `npm test`: every suite CI runs, in the order CI runs them, on a machine with Node, npm and a
# Rust toolchain. Installs what the suites need when it is missing (Debian's PostgreSQL through
# scripts/install-postgres.sh, Synapse into .venv-synapse/ through scripts/install-synapse.sh,
# Node 22 and 24 from npm into .node-versions/) and starts a throwaway PostgreSQL for the Rust
# store suites and the SIGKILL crash suite's PostgreSQL variant (scripts/postgres.sh).
#
#   1. the addon (debug) and the TypeScript          npm run build
#   2. the Rust unit tests, with the store's conformance suites on SQLite and PostgreSQL
#   3. the unit suite (vitest, test/) under this machine's Node
#   4. the benchmark at a tiny size                   npm run test:bench
#   5. the end-to-end suite against Synapse           npm run test:e2e
#   6. the unit suite under Node 22 and 24            scripts/test-node-versions.sh --other
#   7. the API reference (typedoc, warnings are errors)  npm run docs
#
# Usage: scripts/test.sh   (or npm test). Stops at the first suite that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "== npm test: $* ($(( $(date +%s) - start ))s)"; }

step "installing PostgreSQL when missing"
bash scripts/install-postgres.sh

step "build"
npm run build

step "Rust unit tests and the unit suite, with a throwaway PostgreSQL"
bash scripts/postgres.sh run bash -c 'npm run test:rust && npm run test:unit'

step "benchmark smoke test"
npm run test:bench

step "end-to-end suite"
npm run test:e2e

step "unit suite under Node 22 and 24"
bash scripts/test-node-versions.sh --other

step "API reference"
npm run docs

step "all suites passed"
