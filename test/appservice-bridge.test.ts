// The matrix-appservice-bridge adapter (src/appservice-bridge/) without a homeserver: what it
// rejects (a Bridge it cannot hook, a bridge already listening, wrong options, an intent without
// the methods it wraps), and its AppService on a real port: transactions go through
// AppserviceCrypto before the 200, events and ephemeral events reach the listeners, bad tokens
// are refused. Decryption and encrypted sends against Synapse: test/e2e/appservice-bridge.e2e.test.ts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// First: stands in for the official bindings that matrix-appservice-bridge loads.
import './helpers/bridge-package';
import { Bridge } from 'matrix-appservice-bridge';
import { afterEach, describe, expect, it } from 'vitest';
import { BridgeEncryption, type HookableBridge } from '../src/appservice-bridge';
import { AppserviceCrypto, DecryptionError } from '../src/index';
import { TestDevice } from '../src/testing';
import { FakeAppserviceHomeserver, HS_TOKEN, registration } from './appservice-fake';


const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function openCrypto(fake = new FakeAppserviceHomeserver()): Promise<AppserviceCrypto> {
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

function realBridge(): Bridge {
  return new Bridge({
    homeserverUrl: 'http://hs.invalid',
    domain: 'example.org',
    registration: 'unused.yaml',
    controller: { onEvent: () => undefined },
  });
}

/** A stand-in for Bridge that captures the AppService the adapter passes to listen(). */
function capturingBridge(onIntentCreate: (userId: string) => unknown = (userId) => ({ userId })) {
  const captured: { appservice?: unknown } = {};
  const bridge: HookableBridge = {
    opts: { onIntentCreate },
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

type TestAppService = {
  listen(port: number, host: string): Promise<void>;
  close(): Promise<void>;
  on(name: string, f: (e: unknown) => void): void;
  server: { address(): { port: number } };
};

/** The adapter's AppService listening on a free port, with a PUT of a transaction. */
async function listening(bridge: HookableBridge, captured: { appservice?: unknown }) {
  await bridge.listen(0);
  const appservice = captured.appservice as TestAppService;
  await appservice.listen(0, '127.0.0.1');
  cleanup.push(() => appservice.close());
  const put = (txnId: string, body: unknown, token = HS_TOKEN) =>
    fetch(`http://127.0.0.1:${appservice.server.address().port}/_matrix/app/v1/transactions/${txnId}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  return { appservice, put };
}

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const ALICE = '@alice:example.org';
const member = (userId: string) => ({ type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}`, content: { membership: 'join' } });

describe('BridgeEncryption: events and intents', () => {
  it('hands onEvent decrypted events, and undecryptable ones as they came with their DecryptionError', async () => {
    const fake = new FakeAppserviceHomeserver();
    const crypto = await openCrypto(fake);
    const a = await crypto.deviceFor(A);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    fake.rooms.set(ROOM, [ALICE, A]);
    const { bridge, captured } = capturingBridge();
    const encryption = BridgeEncryption.attach(bridge, crypto);
    const { appservice, put } = await listening(bridge, captured);
    const events: Array<Record<string, unknown>> = [];
    appservice.on('event', (e) => events.push(e as Record<string, unknown>));

    const forA = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'for the puppet' });
    await alice.machine.discardRoomKey(ROOM);
    const notForA = await alice.sendMessage(ROOM, [ALICE], { msgtype: 'm.text', body: 'not for puppets' });
    expect((await put('e1', fake.transaction([a], [member(A), forA, notForA]))).status).toBe(200);

    expect(events.map((e) => [e.type, e.event_id])).toEqual([
      ['m.room.member', `$m-${A}`],
      ['m.room.message', forA.event_id],
      ['m.room.encrypted', notForA.event_id],
    ]);
    const [plain, clear, failed] = events as [Record<string, unknown>, Record<string, unknown>, Record<string, unknown>];
    expect(encryption.decryptionOf(plain)).toBeUndefined();
    expect(clear).toMatchObject({ room_id: ROOM, sender: ALICE, content: { msgtype: 'm.text', body: 'for the puppet' } });
    expect(encryption.decryptionOf(clear)).toMatchObject({ kind: 'decrypted', decryptedBy: A, encrypted: { event_id: forA.event_id, type: 'm.room.encrypted' } });
    expect(failed).toEqual(notForA);
    const why = encryption.decryptionOf(failed);
    expect(why).toMatchObject({ kind: 'undecryptable', decryptedBy: A, error: { code: 'MissingRoomKey' } });
    expect(why?.kind === 'undecryptable' && why.error).toBeInstanceOf(DecryptionError);
  });

  it("sends an intent's events into encrypted rooms encrypted by the intent's device, others as they were", async () => {
    const fake = new FakeAppserviceHomeserver();
    const crypto = await openCrypto(fake);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    fake.rooms.set(ROOM, [ALICE, A]);
    fake.rooms.set('!plain:example.org', [ALICE, A]);
    const plainSends: Array<[string, string]> = [];
    const joins: string[] = [];
    const intent = {
      userId: A,
      ensureRegistered: async () => undefined,
      _ensureJoined: async (roomId: string) => {
        joins.push(roomId);
        return roomId;
      },
      sendEvent: async (roomId: string, type: string) => {
        plainSends.push([roomId, type]);
        return { event_id: '$plain' };
      },
    };
    const { bridge, captured } = capturingBridge(() => intent);
    const encryption = BridgeEncryption.attach(bridge, crypto);
    expect(bridge.opts.onIntentCreate(A)).toBe(intent);
    // The device exists once the intent joins a room, before anyone shares a room key with it.
    expect(crypto.deviceIdOf(A)).toBeNull();
    await intent._ensureJoined(ROOM);
    expect(crypto.deviceIdOf(A)).toMatch(/^MCN/);

    // The room's m.room.encryption event arrives in a transaction: the room is encrypted.
    const { put } = await listening(bridge, captured);
    const encryptionEvent = { type: 'm.room.encryption', state_key: '', room_id: ROOM, sender: ALICE, event_id: '$enc', content: { algorithm: 'm.megolm.v1.aes-sha2' } };
    expect((await put('r1', { events: [member(A), encryptionEvent] })).status).toBe(200);
    expect(encryption.isRoomEncrypted(ROOM)).toBe(true);

    expect(await intent.sendEvent(ROOM, 'm.room.message', { msgtype: 'm.text', body: 'from the remote side' })).toEqual({ event_id: `$ev${fake.sentEvents.length}` });
    const sent = fake.sentEvents.at(-1)!;
    expect(sent).toMatchObject({ roomId: ROOM, userId: A, type: 'm.room.encrypted', content: { algorithm: 'm.megolm.v1.aes-sha2' } });
    expect(plainSends).toEqual([]);
    // alice decrypts it with the key A's device shared.
    await alice.sync();
    const clear = await alice.machine.decryptRoomEvent({ type: 'm.room.encrypted', content: sent.content, sender: A, event_id: '$x', origin_server_ts: 1, room_id: ROOM }, ROOM);
    expect(clear.event.content).toEqual({ msgtype: 'm.text', body: 'from the remote side' });

    // A room whose state has no m.room.encryption: the intent's own sendEvent, unchanged.
    expect(await intent.sendEvent('!plain:example.org', 'm.room.message', { body: 'plain' })).toEqual({ event_id: '$plain' });
    expect(plainSends).toEqual([['!plain:example.org', 'm.room.message']]);
    expect(encryption.isRoomEncrypted('!plain:example.org')).toBe(false);
  });
});

describe('BridgeEncryption: its AppService', () => {
  it('processes each transaction through AppserviceCrypto before answering, and emits its events to the bridge', async () => {
    const crypto = await openCrypto();
    const { bridge, captured } = capturingBridge();
    const errors: string[] = [];
    BridgeEncryption.attach(bridge, crypto, { onTransactionError: (_err, txnId) => errors.push(txnId) });
    const { appservice, put } = await listening(bridge, captured);
    const events: unknown[] = [];
    const typed: unknown[] = [];
    const ephemeral: unknown[] = [];
    appservice.on('event', (e) => events.push(e));
    appservice.on('type:m.room.message', (e) => typed.push(e));
    appservice.on('ephemeral', (e) => ephemeral.push(e));

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
