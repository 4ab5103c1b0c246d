// matrix-appservice-bridge 11.2.0 loads @vector-im/matrix-bot-sdk, whose index requires
// @matrix-org/matrix-sdk-crypto-nodejs 0.4.0 at load time. That package downloads its binary
// from GitHub in a postinstall script, which this machine (registries only) cannot run. The
// tests put matrix-crypto-node/compat in its place in Node's module cache, as the npm alias of
// docs/compat.md would on a user's machine; the adapter itself never touches the bindings.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as compat from '../../src/compat';

const root = createRequire(join(process.cwd(), 'package.json'));

/** `require('matrix-appservice-bridge')`, with the official bindings answered by compat. */
export function loadBridgePackage(): typeof import('matrix-appservice-bridge') {
  const botSdk = dirname(root.resolve('@vector-im/matrix-bot-sdk/package.json', { paths: [dirname(root.resolve('matrix-appservice-bridge'))] }));
  const official = createRequire(join(botSdk, 'package.json')).resolve('@matrix-org/matrix-sdk-crypto-nodejs');
  if (!root.cache[official]) {
    const module = new (require('node:module') as { Module: new (id: string) => NodeJS.Module }).Module(official);
    module.exports = compat;
    module.loaded = true;
    root.cache[official] = module;
  }
  return root('matrix-appservice-bridge') as typeof import('matrix-appservice-bridge');
}
