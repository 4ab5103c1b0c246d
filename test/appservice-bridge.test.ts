// The matrix-appservice-bridge adapter (src/appservice-bridge/) without a homeserver: what it
// rejects (a Bridge it cannot hook, a bridge already listening, wrong options, an intent without
// the methods it wraps), and its AppService on a real port: transactions go through
// AppserviceCrypto before the 200, events and ephemeral events reach the listeners, bad tokens
// are refused. Decryption and encrypted sends against Synapse: test/e2e/appservice-bridge.e2e.test.ts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BridgeEncryption, type HookableBridge } from '../src/appservice-bridge';
import { AppserviceCrypto } from '../src/index';
import { FakeAppserviceHomeserver, HS_TOKEN, registration } from './appservice-fake';
import { loadBridgePackage } from './helpers/bridge-package';

const { Bridge } = loadBridgePackage();

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function openCrypto(): Promise<AppserviceCrypto> {
  const fake = new FakeAppserviceHomeserver();
  const root = await mkdtemp(join(tmpdir(), 'mcn-asb-'));
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const crypto = await AppserviceCrypto.open({
    homeserverUrl: 'http://hs.invalid',
    registration,
    storeRoot: root,
    transport: { fetch: fake.fetch, maxRetries: 0 },
    inboxDrain: false,
  });
  cleanup.push(() => crypto.close());
  return crypto;
}

function realBridge(): InstanceType<typeof Bridge> {
  return new Bridge({
    homeserverUrl: 'http://hs.invalid',
    domain: 'example.org',
    registration: 'unused.yaml',
    controller: { onEvent: () => undefined },
  });
}

/** A stand-in for Bridge that captures the AppService the adapter passes to listen(). */
function capturingBridge() {
  const captured: { appservice?: unknown } = {};
  const bridge: HookableBridge = {
    opts: { onIntentCreate: (userId: string) => ({ userId }) },
    listen: async (_port, _host, _backlog, appservice) => {
      captured.appservice = appservice;
    },
  };
  return { bridge, captured };
}

const attachError = (bridge: unknown, crypto: unknown, options?: unknown): unknown => {
  try {
    BridgeEncryption.attach(bridge as HookableBridge, crypto as AppserviceCrypto, options as never);
  } catch (err) {
    return err;
  }
  throw new Error('attach did not throw');
};

describe('BridgeEncryption.attach: bad input', () => {
  it('names what a Bridge it cannot hook is missing', async () => {
    const crypto = await openCrypto();
    expect(attachError(null, crypto)).toMatchObject({ code: 'InvalidArgument', field: 'bridge' });
    expect(attachError({}, crypto)).toMatchObject({
      code: 'InvalidArgument',
      field: 'bridge.listen',
      message: expect.stringMatching(/^bridge\.listen: must be a function \(a matrix-appservice-bridge 11 Bridge\)/),
    });
    expect(attachError({ listen: async () => undefined }, crypto)).toMatchObject({ code: 'InvalidArgument', field: 'bridge.opts.onIntentCreate' });
    expect(attachError({ listen: async () => undefined, opts: { onIntentCreate: 'no' } }, crypto)).toMatchObject({ field: 'bridge.opts.onIntentCreate' });
    const listening = Object.assign(realBridge(), { appservice: {} });
    expect(attachError(listening, crypto)).toMatchObject({
      code: 'InvalidArgument',
      field: 'bridge',
      message: 'bridge: already listens: attach the adapter before bridge.run() / bridge.listen()',
    });
  });

  it('rejects a crypto that is not an open AppserviceCrypto, and options of the wrong type', async () => {
    const crypto = await openCrypto();
    expect(attachError(realBridge(), {})).toMatchObject({ code: 'InvalidArgument', field: 'crypto' });
    expect(attachError(realBridge(), crypto, 'x')).toMatchObject({ field: 'options' });
    expect(attachError(realBridge(), crypto, { onTransactionError: 1 })).toMatchObject({ field: 'options.onTransactionError' });
    expect(attachError(realBridge(), crypto, { appServiceClass: {} })).toMatchObject({ field: 'options.appServiceClass' });
    await crypto.close();
    expect(attachError(realBridge(), crypto)).toMatchObject({ field: 'crypto', message: 'crypto: is closed' });
  });

  it('accepts a matrix-appservice-bridge 11.2 Bridge and wraps its hooks', async () => {
    const crypto = await openCrypto();
    const bridge = realBridge() as unknown as HookableBridge;
    const { listen, opts } = bridge;
    const onIntentCreate = opts.onIntentCreate;
    expect(BridgeEncryption.attach(bridge, crypto)).toBeInstanceOf(BridgeEncryption);
    expect(bridge.listen).not.toBe(listen);
    expect(bridge.opts.onIntentCreate).not.toBe(onIntentCreate);
    // listen() with an AppService of one's own cannot be hooked: refused before anything listens.
    await expect(bridge.listen(0, '127.0.0.1', 10, {})).rejects.toMatchObject({ code: 'InvalidArgument', field: 'appServiceInstance' });
  });

  it('refuses an intent without the methods it wraps, naming the method', async () => {
    const crypto = await openCrypto();
    const { bridge } = capturingBridge();
    BridgeEncryption.attach(bridge, crypto);
    expect(() => bridge.opts.onIntentCreate('@puppet_a:example.org')).toThrow(
      expect.objectContaining({ code: 'InvalidArgument', field: 'intent.sendEvent' }),
    );
  });
});

describe('BridgeEncryption: its AppService', () => {
  it('processes each transaction through AppserviceCrypto before answering, and emits its events to the bridge', async () => {
    const crypto = await openCrypto();
    const { bridge, captured } = capturingBridge();
    const errors: string[] = [];
    BridgeEncryption.attach(bridge, crypto, { onTransactionError: (_err, txnId) => errors.push(txnId) });
    await bridge.listen(0);
    const appservice = captured.appservice as {
      listen(port: number, host: string): Promise<void>;
      close(): Promise<void>;
      on(name: string, f: (e: unknown) => void): void;
      server: { address(): { port: number } };
    };
    const events: unknown[] = [];
    const typed: unknown[] = [];
    const ephemeral: unknown[] = [];
    appservice.on('event', (e) => events.push(e));
    appservice.on('type:m.room.message', (e) => typed.push(e));
    appservice.on('ephemeral', (e) => ephemeral.push(e));
    await appservice.listen(0, '127.0.0.1');
    cleanup.push(() => appservice.close());
    const url = (txnId: string) => `http://127.0.0.1:${appservice.server.address().port}/_matrix/app/v1/transactions/${txnId}`;
    const put = (txnId: string, body: unknown, token = HS_TOKEN) =>
      fetch(url(txnId), { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });

    const message = { type: 'm.room.message', room_id: '!r:example.org', event_id: '$1', sender: '@alice:example.org', content: { body: 'hi' } };
    const typing = { type: 'm.typing', room_id: '!r:example.org', content: { user_ids: [] } };
    const transactions = (outcome: string) =>
      crypto.metrics().matrix_crypto_appservice_transactions_total.samples.find((x) => x.labels.outcome === outcome)?.value ?? 0;
    const processedBefore = transactions('processed');
    const first = await put('t1', { events: [message], 'de.sorunome.msc2409.ephemeral': [typing] });
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({});
    expect(events).toEqual([message]);
    expect(typed).toEqual([message]);
    expect(ephemeral).toEqual([typing]);
    expect(transactions('processed')).toBe(processedBefore + 1);

    // The same id again: AppserviceCrypto knows it; nothing is emitted twice.
    expect((await put('t1', { events: [message] })).status).toBe(200);
    expect(events).toHaveLength(1);
    expect(transactions('duplicate')).toBe(1);

    // A wrong hs_token: refused by the AppService, never processed.
    expect((await put('t2', { events: [message] }, 'wrong')).status).toBe(403);
    expect(events).toHaveLength(1);

    // A failed transaction (the manager is closed) is answered 500, so the homeserver retries.
    await crypto.close();
    const failed = await put('t3', { events: [message] });
    expect(failed.status).toBe(500);
    expect(await failed.json()).toMatchObject({ errcode: 'M_UNKNOWN' });
    expect(errors).toEqual(['t3']);
    expect(events).toHaveLength(1);
  });
});
