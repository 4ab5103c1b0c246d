// Loads the native addon, in this order:
// 1. binding.js, napi-rs's generated loader: a local build (native/matrix-crypto-node.<platform>.node,
//    from `npm run build` or an earlier source build), then the platform package
//    (matrix-crypto-node-<platform>, an optional dependency);
// 2. if neither exists and cargo is installed, build from the shipped Rust sources, then load;
// 3. otherwise one error that says what to install.
// MATRIX_CRYPTO_NODE_NO_SOURCE_BUILD=1 skips step 2 (fail fast in production images).
'use strict';

const { missingAddonMessage } = require('./platform');

function noBinding(err) {
  return Boolean(err && /Cannot find native binding/.test(err.message));
}

function load() {
  try {
    return require('./binding.js');
  } catch (err) {
    if (err && err.code === 'MODULE_NOT_FOUND' && /binding\.js/.test(err.message)) {
      throw new Error(missingAddonMessage('This checkout was never built (native/binding.js is missing): run npm run build.'), { cause: err });
    }
    if (!noBinding(err)) throw err;
    if (process.env.MATRIX_CRYPTO_NODE_NO_SOURCE_BUILD === '1') {
      throw new Error(missingAddonMessage('No prebuilt addon or local build was found (source build disabled).'), { cause: err });
    }
    const { buildFromSource } = require('./build-from-source');
    try {
      buildFromSource();
    } catch (buildError) {
      buildError.cause = err;
      throw buildError;
    }
    delete require.cache[require.resolve('./binding.js')];
    return require('./binding.js');
  }
}

module.exports = load();
