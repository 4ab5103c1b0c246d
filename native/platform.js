// Which prebuilt addon this machine needs, and what to tell the user when there is none.
// Shared by the loader (index.js) and the from-source fallback (install.js); plain CommonJS so
// it runs before anything is built.
'use strict';

const path = require('node:path');

const BINARY_NAME = 'matrix-crypto-node';
// matrix-sdk-crypto 0.19 declares rust-version 1.96; it builds on 1.95 (the newest toolchain CI
// has) when cargo is told --ignore-rust-version, which every build path passes. 1.95 is the
// oldest toolchain it has been built and tested with.
const RUST_MIN = '1.95';

function isMusl() {
  if (process.platform !== 'linux') return false;
  const report = process.report && typeof process.report.getReport === 'function' ? process.report.getReport() : null;
  return !(report && report.header && report.header.glibcVersionRuntime);
}

/** napi-rs's platform tag, e.g. `linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`. */
function platformTag() {
  const { platform, arch } = process;
  if (platform === 'linux') return `linux-${arch}-${isMusl() ? 'musl' : 'gnu'}`;
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

/** Where a source build puts the addon: the generated loader looks here before the packages. */
function localAddonPath() {
  return path.join(__dirname, `${BINARY_NAME}.${platformTag()}.node`);
}

/** The one error for "no addon and no way to build one". */
function missingAddonMessage(reason) {
  const tag = platformTag();
  return [
    `matrix-crypto-node: no native addon for ${tag} (Node ${process.version}).`,
    `  ${reason}`,
    `  The prebuilt addon comes from the optional dependency ${BINARY_NAME}-${tag}. Without it`,
    `  (no such platform package, or optional dependencies omitted) build the addon from source:`,
    `  install a Rust toolchain >= ${RUST_MIN} (cargo, from https://rustup.rs) and a C compiler`,
    '  (cc / build-essential), then run: npx matrix-crypto-node-build',
  ].join('\n');
}

module.exports = { BINARY_NAME, RUST_MIN, platformTag, localAddonPath, missingAddonMessage };
