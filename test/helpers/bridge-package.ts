// matrix-appservice-bridge 11.2.0 loads @vector-im/matrix-bot-sdk, whose index requires
// @matrix-org/matrix-sdk-crypto-nodejs 0.4.0 at load time. That package downloads its binary
// from GitHub in a postinstall script, which this machine (registries only) cannot run. Importing
// this module puts matrix-crypto-node/compat in its place in Node's module cache, as the npm
// alias of docs/compat.md would on a user's machine; the adapter itself never uses the bindings.
// Import it before anything that imports matrix-appservice-bridge.
import { createRequire, Module } from 'node:module';
import { dirname, join } from 'node:path';
import * as compat from '../../src/compat';

const root = createRequire(join(process.cwd(), 'package.json'));
const botSdk = dirname(root.resolve('@vector-im/matrix-bot-sdk/package.json', { paths: [dirname(root.resolve('matrix-appservice-bridge'))] }));
const official = createRequire(join(botSdk, 'package.json')).resolve('@matrix-org/matrix-sdk-crypto-nodejs');
if (!root.cache[official]) {
  const stand = new Module(official);
  stand.exports = compat;
  stand.loaded = true;
  root.cache[official] = stand;
}
