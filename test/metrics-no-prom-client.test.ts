// prom-client is an optional peer dependency: without it, the library loads, records and
// snapshots its metrics, and a registry option says that prom-client is missing. Run in a child
// process where resolving `prom-client` fails, as in a project that never installed it.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const HIDE = `
const Module = require('node:module');
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === 'prom-client' || request.startsWith('prom-client/')) {
    throw Object.assign(new Error("Cannot find module 'prom-client'"), { code: 'MODULE_NOT_FOUND' });
  }
  return resolveFilename.call(this, request, ...rest);
};
`;

const PROGRAM = (src: string) => `
const { OlmMachine } = require(${JSON.stringify(src)});
const { TestDevice, TestHomeserver } = require(${JSON.stringify(join(src, 'testing'))});
(async () => {
  let promClient = 'installed';
  try { require('prom-client'); } catch { promClient = 'missing'; }
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'A');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'B');
  const event = await alice.sendMessage('!r:example.org', ['@alice:example.org', '@bob:example.org']);
  await bob.sync();
  await bob.machine.decryptRoomEvent(event, '!r:example.org');
  const m = bob.machine.metrics();
  const err = await OlmMachine.open({ userId: '@c:example.org', deviceId: 'C', store: { kind: 'memory' },
    metrics: { registry: { registerMetric() {}, getSingleMetric() {}, metrics() {}, getMetricsAsJSON() {} } } }).catch((e) => e);
  console.log(JSON.stringify({
    promClient,
    decrypted: m.matrix_crypto_decryptions_total.samples,
    toDevice: m.matrix_crypto_to_device_events_total.samples,
    error: { code: err.code, field: err.field, message: err.message },
  }));
  await alice.machine.close();
  await bob.machine.close();
})();
`;

it('records and snapshots metrics without prom-client installed; a registry option says it is missing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mcn-noprom-'));
  try {
    await writeFile(join(dir, 'hide-prom-client.cjs'), HIDE);
    await writeFile(join(dir, 'program.cts'), PROGRAM(resolve(__dirname, '../src')));
    const { stdout } = await promisify(execFile)(process.execPath, ['--require', join(dir, 'hide-prom-client.cjs'), '--import', 'tsx', join(dir, 'program.cts')], {
      cwd: resolve(__dirname, '..'),
    });
    expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toEqual({
      promClient: 'missing',
      decrypted: [{ labels: { outcome: 'decrypted' }, value: 1 }],
      toDevice: [{ labels: { outcome: 'decrypted' }, value: 1 }],
      error: { code: 'InvalidArgument', field: 'metrics.registry', message: 'metrics.registry: prom-client is not installed; npm install prom-client' },
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
