#!/usr/bin/env node
// Builds the addon from the Rust sources shipped in this package, with cargo (crates come from
// crates.io, pinned by Cargo.lock). index.js calls it when no prebuilt addon loads; run it
// ahead of time (e.g. in a Dockerfile) as `npx matrix-crypto-node-build`.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { RUST_MIN, localAddonPath, missingAddonMessage } = require('./platform');

const root = path.resolve(__dirname, '..');

function rustVersion() {
  const out = spawnSync('rustc', ['--version'], { encoding: 'utf8' });
  const m = out.status === 0 ? /rustc (\d+)\.(\d+)/.exec(out.stdout) : null;
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** Whether cargo can be run: the condition for building at all. */
function hasCargo() {
  const cargo = spawnSync('cargo', ['--version'], { encoding: 'utf8' });
  return !cargo.error && cargo.status === 0;
}

/**
 * The repository's workspace also lists crates that are not published (the benchmark's):
 * keep only the members this package ships, so cargo can load the workspace.
 */
function pruneWorkspaceMembers() {
  const manifestPath = path.join(root, 'Cargo.toml');
  const manifest = fs.readFileSync(manifestPath, 'utf8');
  const pruned = manifest.replace(/^members\s*=\s*\[([^\]]*)\]/m, (_, list) => {
    const members = [...list.matchAll(/"([^"]+)"/g)].map((m) => m[1]);
    const shipped = members.filter((m) => fs.existsSync(path.join(root, m, 'Cargo.toml')));
    return `members = [${shipped.map((m) => JSON.stringify(m)).join(', ')}]`;
  });
  if (pruned !== manifest) fs.writeFileSync(manifestPath, pruned);
}

/**
 * Build the release addon into native/ (where the generated loader looks first). Blocks for the
 * duration of the build; cargo's output goes to stderr. Throws the "what to install" error when
 * the toolchain is missing, too old, or the build fails.
 */
function buildFromSource() {
  if (!hasCargo()) throw new Error(missingAddonMessage('No prebuilt addon is installed for this platform, and cargo is not on PATH.'));
  const [minMajor, minMinor] = RUST_MIN.split('.').map(Number);
  const rust = rustVersion();
  if (rust && (rust[0] < minMajor || (rust[0] === minMajor && rust[1] < minMinor))) {
    throw new Error(missingAddonMessage(`rustc ${rust.join('.')} is too old to build it (run: rustup update).`));
  }
  process.stderr.write('matrix-crypto-node: no prebuilt addon for this platform; building it from source with cargo (several minutes, once)...\n');
  pruneWorkspaceMembers();
  // --ignore-rust-version: the matrix-sdk crates declare Rust 1.96 but build on RUST_MIN (1.95).
  const build = spawnSync(
    'cargo',
    ['build', '--release', '--locked', '--ignore-rust-version', '--manifest-path', path.join(root, 'Cargo.toml'), '-p', 'matrix-crypto-node'],
    { stdio: ['ignore', process.stderr, process.stderr] },
  );
  if (build.status !== 0) {
    throw new Error(missingAddonMessage(`cargo build failed (exit ${build.status}); its output is above.`));
  }
  const targetDir = process.env.CARGO_TARGET_DIR ? path.resolve(root, process.env.CARGO_TARGET_DIR) : path.join(root, 'target');
  const file =
    process.platform === 'win32'
      ? 'matrix_crypto_node.dll'
      : process.platform === 'darwin'
        ? 'libmatrix_crypto_node.dylib'
        : 'libmatrix_crypto_node.so';
  // Copy then rename: a process loading the addon concurrently never sees a half-written file.
  const dest = localAddonPath();
  const tmp = `${dest}.${process.pid}.tmp`;
  fs.copyFileSync(path.join(targetDir, 'release', file), tmp);
  fs.renameSync(tmp, dest);
  process.stderr.write(`matrix-crypto-node: built ${dest}\n`);
  return dest;
}

module.exports = { buildFromSource, hasCargo, pruneWorkspaceMembers };

if (require.main === module) {
  try {
    buildFromSource();
  } catch (err) {
    process.stderr.write(`\n${err.message}\n\n`);
    process.exit(1);
  }
}
