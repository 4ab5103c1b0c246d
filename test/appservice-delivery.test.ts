// AppserviceCrypto's delivery of to-device events against the fake homeserver
// (test/appservice-fake.ts, whose inboxes keep pushed events until a /sync acknowledges them, as
// Synapse's do): malformed transactions answered 200 with their bad parts reported, a device that
// keeps failing set aside and replayed, recipients outside the namespace reported and never
// stored, and the inbox drain (at start, after a failed transaction, duplicates, concurrency).
import { appendFile, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  defaultDeviceStore,
  OlmMachine,
  serveAppservice,
  type AppserviceCryptoOptions,
  type AppserviceTimelineEvent,
  type InboxDrainProgress,
  type TransactionResult,
} from '../src/index';
import { TestDevice } from '../src/testing';
import { appserviceRoot, FakeAppserviceHomeserver, HS_TOKEN } from './appservice-fake';

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const ALICE = '@alice:example.org';
const TD = 'de.sorunome.msc2409.to_device';
const OTK = 'org.matrix.msc3202.device_one_time_keys_count';
const LISTS = 'org.matrix.msc3202.device_lists';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function setup(limits: AppserviceCryptoOptions['limits'] = {}) {
  const fake = new FakeAppserviceHomeserver();
  const { root, open } = await appserviceRoot(fake, cleanup, { limits, inboxDrain: false });
  const crypto = await open();
  const a = await crypto.deviceFor(A);
  const b = await crypto.deviceFor(B);
  const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
  fake.rooms.set(ROOM, [ALICE, A, B]);
  return { fake, root, open, crypto, a, b, alice };
}

function member(userId: string) {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}`, content: { membership: 'join' } };
}

function deep(levels: number): Record<string, unknown> {
  let v: Record<string, unknown> = { end: true };
  for (let i = 0; i < levels; i++) v = { v };
  return v;
}

async function until<T>(what: string, check: () => T | undefined | Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every file under `dir`, concatenated (to show that something was never written). */
async function everything(dir: string): Promise<string> {
  let out = '';
  for (const name of await readdir(dir)) {
    const p = join(dir, name);
    out += (await stat(p)).isDirectory() ? await everything(p) : (await readFile(p)).toString('latin1');
  }
  return out;
}

describe('no poison transaction', () => {
  it('answers every malformed body 200, reports its bad parts, and processes the rest', async () => {
    const { crypto, a } = await setup();
    const results = new Map<string, TransactionResult>();
    const server = await serveAppservice(crypto, { port: 0, onEvents: (r) => void results.set(r.txnId, r) });
    cleanup.push(() => server.close());
    const plain = { type: 'm.room.message', room_id: ROOM, sender: ALICE, event_id: '$plain', content: { body: 'fine' } };
    const bodies: Array<[string, unknown, Array<{ field: string }>, number]> = [
      ['array', [], [{ field: 'body' }], 0],
      ['null', null, [{ field: 'body' }], 0],
      ['events-string', { events: 'x' }, [{ field: 'body.events' }], 0],
      ['events-numbers', { events: [1, 2, plain, 3] }, [{ field: 'body.events[0]' }, { field: 'body.events[1]' }, { field: 'body.events[3]' }], 1],
      ['no-type', { events: [{ room_id: ROOM, content: {} }, plain] }, [{ field: 'body.events[0]' }], 1],
      ['to-device-string', { events: [plain], [TD]: 'x' }, [{ field: `body["${TD}"]` }], 1],
      ['to-device-numbers', { [TD]: [1, 2] }, [{ field: `body["${TD}"][0]` }, { field: `body["${TD}"][1]` }], 0],
      ['counts', { [OTK]: { [A]: { [a.deviceId]: { signed_curve25519: 'many' } }, [B]: 'x' } }, [{ field: `body["${OTK}"]["${A}"]["${a.deviceId}"]` }, { field: `body["${OTK}"]["${B}"]` }], 0],
      ['lists', { [LISTS]: { changed: 'x', left: [ALICE, 1] } }, [{ field: `body["${LISTS}"].changed` }, { field: `body["${LISTS}"].left[1]` }], 0],
      ['lists-number', { [LISTS]: 5 }, [{ field: `body["${LISTS}"]` }], 0],
      ['deep-event', { events: [{ type: 'm.room.message', room_id: ROOM, content: deep(5000) }, plain] }, [{ field: 'body.events[0]' }], 1],
      ['deep-to-device', { [TD]: [{ type: 'm.dummy', sender: ALICE, to_user_id: A, to_device_id: a.deviceId, content: deep(5000) }] }, [{ field: `body["${TD}"][0]` }], 0],
    ];
    for (const [txnId, body, fields, events] of bodies) {
      const res = await fetch(`http://127.0.0.1:${server.port}/_matrix/app/v1/transactions/${txnId}`, {
        method: 'PUT',
        headers: { Authorization: `Bearer ${HS_TOKEN}`, 'Content-Type': 'application/json' },
        body: serialise(body),
      });
      expect({ txnId, status: res.status }).toEqual({ txnId, status: 200 });
      const result = results.get(txnId)!;
      expect(result.malformed.map((m) => ({ field: m.field }))).toEqual(fields);
      expect(result.events).toHaveLength(events);
      // Recorded: the homeserver's retry of the same id is a duplicate.
      expect((await crypto.processTransaction(txnId, body)).duplicate).toBe(true);
    }
    expect(crypto.deliveryCounters.malformedParts).toBe(bodies.reduce((n, [, , f]) => n + f.length, 0));
  });

  it('a room key beside garbage still arrives, and decrypts the event beside garbage', async () => {
    const { fake, crypto, a, alice } = await setup();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'among garbage' });
    const body = fake.transaction([a], [member(A), event]) as Record<string, unknown>;
    const toDevice = body[TD] as unknown[];
    toDevice.unshift(7, 'x', null, { type: 'm.dummy', to_user_id: A });
    body.events = [1, ...(body.events as unknown[]), { content: {} }];
    body[OTK] = { [A]: { [a.deviceId]: { signed_curve25519: 50 }, BAD: -1 } };
    const result = await crypto.processTransaction('g1', body);
    expect(result.malformed.map((m) => m.field)).toEqual([
      'body.events[0]',
      'body.events[3]',
      `body["${TD}"][0]`,
      `body["${TD}"][1]`,
      `body["${TD}"][2]`,
      `body["${TD}"][3].to_device_id`,
      `body["${OTK}"]["${A}"]["BAD"]`,
    ]);
    expect(result.devices.map((d) => [d.userId, d.result.roomKeyUpdates.length])).toEqual([[A, 1]]);
    expect(result.events.map((e) => e.kind)).toEqual(['plaintext', 'decrypted']);
  });

  it('reports, and never stores, to-device events for users outside the namespace or unknown devices', async () => {
    const { fake, crypto, root, a, b, alice } = await setup();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B]);
    const body = fake.transaction([a, b], [event]) as Record<string, unknown>;
    const marker = 'never-stored-3f9c';
    (body[TD] as unknown[]).push(
      { type: 'm.dummy', sender: ALICE, content: { marker }, to_user_id: ALICE, to_device_id: 'ALICE' },
      { type: 'm.dummy', sender: ALICE, content: { marker }, to_user_id: A, to_device_id: 'NOPE' },
      { type: 'm.dummy', sender: ALICE, content: { marker }, to_user_id: A, to_device_id: 'NOPE' },
    );
    // B's part fails, so the transaction's shares are held in the state for the retry: the
    // unrouted events must not be among them.
    body[OTK] = { [B]: { [b.deviceId]: { signed_curve25519: 2 } } };
    fake.failNext = (c) => c.userId === B && c.path.endsWith('/keys/upload');
    await expect(crypto.processTransaction('n1', body)).rejects.toMatchObject({ code: 'TransactionFailed' });
    const result = await crypto.processTransaction('n1', body);
    expect(result.unrouted).toEqual([
      { userId: ALICE, deviceId: 'ALICE', count: 1, reason: 'not-in-namespace' },
      { userId: A, deviceId: 'NOPE', count: 2, reason: 'unknown-device' },
    ]);
    expect(result.unroutedToDeviceEvents).toBe(3);
    await crypto.close();
    expect(await everything(root)).not.toContain(marker);
  });

  it('sets a device that fails on every attempt aside after the bound; the others move on; its share is replayed when it recovers', async () => {
    const { fake, root, open, crypto, a, b, alice } = await setup({ maxOpenMachines: 1 });
    await crypto.close();
    // B's store cannot be opened: every part of B fails, as with a corrupt store.
    const notADir = join(root, 'not-a-folder');
    await appendFile(notADir, '');
    let broken = true;
    const deviceStore = (u: string, d: string) => (broken && u === B ? { kind: 'sqlite' as const, path: join(notADir, 'store') } : defaultDeviceStore(root, u, d));
    const first = await open({ deviceStore });
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'set aside' });
    const body = fake.transaction([a, b], [member(A), member(B), event]);
    for (let attempt = 1; attempt < 3; attempt++) {
      await expect(first.processTransaction('p1', body)).rejects.toMatchObject({ code: 'TransactionFailed' });
    }
    const third = await first.processTransaction('p1', { events: body.events });
    expect(third.setAside.map((d) => [d.userId, d.deviceId])).toEqual([[B, b.deviceId]]);
    expect(third.events.at(-1)).toMatchObject({ kind: 'decrypted', decryptedBy: A });
    expect(first.deliveryCounters.setAsideShares).toBe(1);
    // The next transactions are not held back by B.
    await alice.machine.discardRoomKey(ROOM);
    const next = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'next' });
    const body2 = fake.transaction([a], [next]);
    expect((await first.processTransaction('p2', body2)).events[0]).toMatchObject({ kind: 'decrypted', decryptedBy: A });
    await first.close();

    // B recovers (after a restart: the set-aside share is persisted), and its next share
    // (here only a key count) replays the set-aside one first.
    broken = false;
    const second = await open({ deviceStore });
    const recovered = await second.processTransaction('p3', { events: [], [OTK]: { [B]: { [b.deviceId]: { signed_curve25519: 50 } } } });
    expect(recovered.devices.map((d) => [d.userId, d.result.roomKeyUpdates.length])).toEqual([[B, 1]]);
    expect(second.deliveryCounters.replayedShares).toBe(1);
    expect(await second.decryptRoomEvent(B, ROOM, event)).toMatchObject({ kind: 'decrypted', decrypted: { event: { content: { body: 'set aside' } } } });
    // Replayed once.
    const after = await second.processTransaction('p4', { events: [], [OTK]: { [B]: { [b.deviceId]: { signed_curve25519: 50 } } } });
    expect(after.devices.flatMap((d) => d.result.roomKeyUpdates)).toEqual([]);
    expect(second.deliveryCounters.replayedShares).toBe(1);
  });

  it('never sets aside a failure a retry fixes (another process holds the device store)', async () => {
    const { fake, root, open, crypto, a, b, alice } = await setup({ maxOpenMachines: 1 });
    await crypto.close();
    const holder = await OlmMachine.open({ userId: B, deviceId: b.deviceId, store: defaultDeviceStore(root, B, b.deviceId) });
    const c = await open();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B]);
    const body = fake.transaction([a, b], [event]);
    for (let attempt = 1; attempt <= 4; attempt++) {
      await expect(c.processTransaction('l1', body)).rejects.toMatchObject({ code: 'TransactionFailed', cause: { code: 'StoreLocked' } });
    }
    await holder.close();
    const done = await c.processTransaction('l1', { events: body.events });
    expect(done.setAside).toEqual([]);
    expect(done.devices.map((d) => [d.userId, d.result.roomKeyUpdates.length])).toEqual([[B, 1]]);
  });
});

describe('inbox drain', () => {
  it('drains on demand: feeds what no transaction brought, acknowledges it, hands over the events that waited', async () => {
    const { fake, crypto, a, b, alice } = await setup();
    fake.syncLimit = 1; // several batches per device
    await alice.machine.discardRoomKey(ROOM);
    const e1 = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'one' });
    await alice.machine.discardRoomKey(ROOM);
    const e2 = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'two' });
    // The room events come, their keys never do (as after downtime): undecryptable.
    const early = await crypto.processTransaction('w1', { events: [member(A), member(B), e1, e2] });
    expect(early.events.slice(2).map((e) => e.kind)).toEqual(['undecryptable', 'undecryptable']);
    const drained = await crypto.drainInboxes();
    expect(drained).toMatchObject({ devices: 2, toDeviceEvents: 4, duplicates: 0, malformed: 0, failed: [] });
    expect(drained.lateDecryptions.map((e) => e.kind === 'decrypted' && e.decrypted.event.content.body).sort()).toEqual(['one', 'two']);
    for (const [u, d] of [[A, a], [B, b]] as const) {
      expect(fake.inboxOf(u, d.deviceId)).toBe(0);
      for (const e of [e1, e2]) expect((await crypto.decryptRoomEvent(u, ROOM, e)).kind).toBe('decrypted');
    }
    // As the device, without rooms, without waiting; the next drain continues from the token.
    expect(fake.syncs[0]).toMatchObject({ userId: A, deviceId: a.deviceId, since: null, timeout: '0', filter: { room: { rooms: [] } } });
    const count = fake.syncs.length;
    expect(await crypto.drainInboxes([A])).toMatchObject({ devices: 1, toDeviceEvents: 0 });
    expect(fake.syncs.slice(count).map((s) => [s.userId, s.since])).toEqual([[A, fake.syncs[count - 1]!.since]]);
  });

  it('skips the duplicates of what transactions delivered, both ways round', async () => {
    const { fake, crypto, a, b, alice } = await setup();
    const e1 = await alice.sendMessage(ROOM, [ALICE, A, B]);
    const pushed = await crypto.processTransaction('d1', fake.transaction([a, b], [member(A), member(B), e1]));
    expect(pushed.devices).toHaveLength(2);
    // The pushed events are still in the inboxes; the drain recognises them.
    expect(await crypto.drainInboxes()).toMatchObject({ toDeviceEvents: 0, duplicates: 2 });
    expect(fake.inboxOf(A, a.deviceId) + fake.inboxOf(B, b.deviceId)).toBe(0);

    await alice.machine.discardRoomKey(ROOM);
    const e2 = await alice.sendMessage(ROOM, [ALICE, A, B]);
    const body = fake.transaction([a, b], [e2]); // built now, processed after the drain
    expect(await crypto.drainInboxes()).toMatchObject({ toDeviceEvents: 2, duplicates: 0 });
    const late = await crypto.processTransaction('d2', body);
    expect(late.duplicateToDeviceEvents).toBe(2);
    // The open machines see the transaction, but none is fed the events again.
    expect(late.devices.flatMap((d) => d.result.toDeviceEvents)).toEqual([]);
    expect(late.events[0]!.kind).toBe('decrypted');
    expect(crypto.deliveryCounters.duplicateToDeviceEvents).toBe(4);
  });

  it('drains every device at start, in the background, with progress; the waiting events come in the next transaction', async () => {
    const { fake, open, crypto, a, b, alice } = await setup();
    const e1 = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'sent while down' });
    await crypto.processTransaction('s0', { events: [member(A), member(B)] });
    await crypto.close();
    const progress: InboxDrainProgress[] = [];
    const restarted = await open({ inboxDrain: { onProgress: (p) => progress.push(p) } });
    await until('the start-up drain', () => (progress.at(-1)?.done === 2 ? true : undefined));
    expect(progress.map((p) => p.done)).toEqual([1, 2]);
    expect(progress.at(-1)).toMatchObject({ total: 2, toDeviceEvents: 2, duplicates: 0, failed: 0 });
    expect(fake.inboxOf(A, a.deviceId) + fake.inboxOf(B, b.deviceId)).toBe(0);
    expect((await restarted.processTransaction('s1', { events: [e1] })).events[0]).toMatchObject({
      kind: 'decrypted',
      decrypted: { event: { content: { body: 'sent while down' } } },
    });
  });

  it('drains after a failed transaction once the homeserver gets through again; late decryptions go to the callback', async () => {
    const { fake, open, crypto, a, b, alice } = await setup();
    await crypto.processTransaction('f0', { events: [member(A), member(B)] });
    await crypto.close();
    const late: AppserviceTimelineEvent[] = [];
    const drains: InboxDrainProgress[] = [];
    const c = await open({ inboxDrain: { atStart: false, onProgress: (p) => drains.push(p), onLateDecryptions: (e) => void late.push(...e) } });
    const e1 = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'first' });
    const body = fake.transaction([a, b], [e1]);
    body[OTK] = { [B]: { [b.deviceId]: { signed_curve25519: 1 } } };
    fake.failNext = (call) => call.userId === B && call.path.endsWith('/keys/upload');
    await expect(c.processTransaction('f1', body)).rejects.toMatchObject({ code: 'TransactionFailed' });
    // While Synapse retries, the user rotates: the new key is only in the inboxes, and the
    // event comes in a transaction without to-device events.
    await alice.machine.discardRoomKey(ROOM);
    const e2 = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'during the failure' });
    const retried = await c.processTransaction('f1', { events: [e1, e2] });
    expect(retried.events.map((e) => e.kind)).toEqual(['decrypted', 'undecryptable']);
    await until('the recovery drain', () => (late.length > 0 ? true : undefined));
    expect(late).toMatchObject([{ kind: 'decrypted', decrypted: { event: { content: { body: 'during the failure' } } } }]);
    expect(drains.at(-1)).toMatchObject({ total: 2, toDeviceEvents: 2 });
  });

  it('while recovering, a burst of successful transactions asks for one drain, not one each', async () => {
    const { fake, open, crypto } = await setup();
    await crypto.close();
    const drains: InboxDrainProgress[] = [];
    const c = await open({ inboxDrain: { atStart: false, intervalMs: 0, onProgress: (p) => drains.push(p) } });
    const before = fake.syncs.length;
    fake.delayMs = 20; // the first drain is still running when the other transactions succeed
    for (let i = 0; i < 5; i++) await c.processTransaction(`burst-${i}`, { events: [] });
    await until('the first recovery drain', () => (drains.some((p) => p.done === p.total) ? true : undefined));
    await new Promise((r) => setTimeout(r, 200));
    expect(drains.filter((p) => p.done === p.total)).toHaveLength(1);
    expect(fake.syncs.length - before).toBe(2);
  });

  it('drains at most transactionConcurrency devices and requestConcurrency requests at once', async () => {
    const { fake, crypto } = await setup({ requestConcurrency: 2, transactionConcurrency: 3 });
    const puppets = Array.from({ length: 10 }, (_, i) => `@puppet_${i}:example.org`);
    for (const p of puppets) await crypto.deviceFor(p);
    fake.delayMs = 5;
    fake.maxInFlight = 0;
    const before = fake.syncs.length;
    const result = await crypto.drainInboxes();
    expect(result.devices).toBe(12);
    expect(fake.syncs.length - before).toBe(12);
    expect(fake.maxInFlight).toBe(2);
  });

  it('names the bad drain option', async () => {
    const { open } = await setup();
    await expect(open({ inboxDrain: { intervalMs: -1 } })).rejects.toMatchObject({ code: 'InvalidArgument', field: 'options.inboxDrain.intervalMs' });
    await expect(open({ inboxDrain: 'yes' as never })).rejects.toMatchObject({ field: 'options.inboxDrain' });
    await expect(open({ limits: { deviceAttempts: 0 } })).rejects.toMatchObject({ field: 'options.limits.deviceAttempts' });
  });
});

/** JSON text of a body, with any depth of nesting (JSON.stringify overflows at a few thousand levels). */
function serialise(value: unknown): string {
  const out: string[] = [];
  const stack: Array<unknown> = [value];
  while (stack.length) {
    const v = stack.pop();
    if (typeof v === 'string' && v.startsWith('\u0000')) {
      out.push(v.slice(1));
      continue;
    }
    if (v === null || typeof v !== 'object') {
      out.push(JSON.stringify(v) ?? 'null');
      continue;
    }
    const entries = Array.isArray(v) ? v.map((x) => [null, x] as const) : Object.entries(v as object);
    const open = Array.isArray(v) ? '[' : '{';
    const close = Array.isArray(v) ? ']' : '}';
    const parts: unknown[] = [`\u0000${open}`];
    entries.forEach(([k, x], i) => {
      if (i > 0) parts.push('\u0000,');
      if (k !== null) parts.push(`\u0000${JSON.stringify(k)}:`);
      parts.push(x);
    });
    parts.push(`\u0000${close}`);
    for (let i = parts.length - 1; i >= 0; i--) stack.push(parts[i]);
  }
  return out.join('');
}
