// Repair for bridges, against the fake homeserver (test/appservice-fake.ts): discarding a room's
// outbound key across every bridged member, and giving up (once, reported) on room keys that
// never came, after a last attempt.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MatrixCryptoError, type AppserviceCryptoOptions, type KeyNeverCame } from '../src/index';
import { TestDevice } from '../src/testing';
import { appserviceRoot, FakeAppserviceHomeserver } from './appservice-fake';

const ROOM = '!room:example.org';
const OTHER = '!other:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const C = '@puppet_c:example.org';
const ALICE = '@alice:example.org';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function setup() {
  const fake = new FakeAppserviceHomeserver();
  const { open } = await appserviceRoot(fake, cleanup, { inboxDrain: false });
  const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
  return { fake, open, alice };
}

function member(userId: string, roomId = ROOM) {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: roomId, event_id: `$m-${userId}-${roomId}`, content: { membership: 'join' } };
}

describe('discardRoomKey', () => {
  it('rotates the room key of every bridged member of the room, and only theirs', async () => {
    const { fake, open } = await setup();
    const crypto = await open();
    fake.rooms.set(ROOM, [ALICE, A, B]);
    fake.rooms.set(OTHER, [ALICE, C]);
    await crypto.processTransaction('m', { events: [member(A), member(B), member(C, OTHER)] });
    const sessionOf = async (userId: string, roomId = ROOM) => {
      await crypto.sendEncrypted(userId, roomId, 'm.room.message', { msgtype: 'm.text', body: 'hi' });
      const sent = fake.sentEvents.filter((e) => e.userId === userId && e.roomId === roomId).at(-1)!;
      return sent.content.session_id as string;
    };
    const first = { a: await sessionOf(A), b: await sessionOf(B), c: await sessionOf(C, OTHER) };
    // Without a discard, the sessions stay.
    expect(await sessionOf(A)).toBe(first.a);
    expect(await sessionOf(B)).toBe(first.b);

    expect(await crypto.discardRoomKey(ROOM)).toEqual([A, B]);
    const a2 = await sessionOf(A);
    const b2 = await sessionOf(B);
    expect(a2).not.toBe(first.a);
    expect(b2).not.toBe(first.b);
    // The other room's puppet keeps its key.
    expect(await sessionOf(C, OTHER)).toBe(first.c);
    // Nothing to discard in a room without bridged members.
    expect(await crypto.discardRoomKey('!empty:example.org')).toEqual([]);
  });

  it('opens closed machines for the discard', async () => {
    const { fake, open } = await setup();
    const crypto = await open({ limits: { maxOpenMachines: 1 } });
    fake.rooms.set(ROOM, [ALICE, A, B]);
    await crypto.processTransaction('m', { events: [member(A), member(B)] });
    const sessionOf = async (userId: string) => {
      await crypto.sendEncrypted(userId, ROOM, 'm.room.message', { msgtype: 'm.text', body: 'hi' });
      return fake.sentEvents.filter((e) => e.userId === userId).at(-1)!.content.session_id as string;
    };
    const a1 = await sessionOf(A);
    const b1 = await sessionOf(B);
    expect(crypto.openMachineCount).toBe(1);
    expect(await crypto.discardRoomKey(ROOM)).toEqual([A, B]);
    expect(await sessionOf(A)).not.toBe(a1);
    expect(await sessionOf(B)).not.toBe(b1);
  });

  it('names roomId when it is bad', async () => {
    const { open } = await setup();
    const crypto = await open();
    for (const bad of ['', 42, undefined]) {
      const err = await crypto.discardRoomKey(bad as string).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MatrixCryptoError);
      expect(err).toMatchObject({ code: 'InvalidArgument', field: 'roomId' });
    }
  });
});

describe('keys that never came', () => {
  async function waiting(extra: Partial<AppserviceCryptoOptions> = {}) {
    const s = await setup();
    let clock = 1_000_000;
    const reported: KeyNeverCame[][] = [];
    const crypto = await s.open({
      keyWait: { giveUpAfterMs: 60_000 },
      now: () => clock,
      onKeyNeverCame: (events) => void reported.push(events),
      ...extra,
    });
    const a = await crypto.deviceFor(A);
    s.fake.rooms.set(ROOM, [ALICE, A]);
    // Sent to Alice's own devices only: the puppet never gets the key.
    const event = await s.alice.sendMessage(ROOM, [ALICE], { msgtype: 'm.text', body: 'not for puppets' });
    const first = await crypto.processTransaction('t1', s.fake.transaction([], [member(A), event]));
    expect(first.events[1]).toMatchObject({ kind: 'undecryptable', error: { code: 'MissingRoomKey' } });
    return { ...s, crypto, a, event, reported, advance: (ms: number) => (clock += ms) };
  }

  it('are dropped from the waiting list after keyWait.giveUpAfterMs and reported once', async () => {
    const { crypto, event, reported, advance } = await waiting();
    advance(59_999);
    await crypto.processTransaction('t2', { events: [] });
    expect(reported).toEqual([]);
    advance(1);
    await crypto.processTransaction('t3', { events: [] });
    expect(reported).toHaveLength(1);
    expect(reported[0]).toEqual([{ roomId: ROOM, sessionId: event.content.session_id, event, waitedMs: 60_000 }]);
    expect(crypto.deliveryCounters.keysNeverCame).toBe(1);
    advance(120_000);
    await crypto.processTransaction('t4', { events: [] });
    expect(reported).toHaveLength(1);
  });

  it('stay dropped after a restart', async () => {
    const { crypto, open, reported, advance } = await waiting();
    advance(60_000);
    await crypto.processTransaction('t2', { events: [] });
    expect(reported).toHaveLength(1);
    await crypto.close();
    const again: KeyNeverCame[][] = [];
    let clock = 5_000_000;
    const second = await open({ keyWait: { giveUpAfterMs: 60_000 }, now: () => clock, onKeyNeverCame: (e) => void again.push(e) });
    await second.processTransaction('t3', { events: [] });
    clock += 60_000;
    await second.processTransaction('t4', { events: [] });
    expect(again).toEqual([]);
  });

  it('are tried once more before giving up: a key that came another way is handed over late', async () => {
    const { crypto, alice, reported, advance } = await waiting();
    // The key reaches the puppet without a to-device event naming it (an import).
    const keys = await alice.machine.exportRoomKeys();
    await crypto.withMachine(A, (m) => m.importRoomKeys(keys));
    advance(60_000);
    await crypto.processTransaction('t2', { events: [] });
    expect(reported).toEqual([]);
    expect(crypto.deliveryCounters.keysNeverCame).toBe(0);
    const next = await crypto.processTransaction('t3', { events: [] });
    expect(next.lateDecryptions).toHaveLength(1);
    expect(next.lateDecryptions[0]).toMatchObject({ kind: 'decrypted', decryptedBy: A, decrypted: { event: { content: { body: 'not for puppets' } } } });
  });

  it('are not given up on when the key comes in time', async () => {
    const { fake, open, alice } = await setup();
    let clock = 0;
    const reported: KeyNeverCame[][] = [];
    const crypto = await open({ keyWait: { giveUpAfterMs: 60_000 }, now: () => clock, onKeyNeverCame: (e) => void reported.push(e) });
    const a = await crypto.deviceFor(A);
    const event = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'key comes later' });
    await crypto.processTransaction('t1', fake.transaction([], [member(A), event]));
    clock += 30_000;
    const later = await crypto.processTransaction('t2', fake.transaction([a]));
    expect(later.lateDecryptions).toHaveLength(1);
    clock += 60_000;
    await crypto.processTransaction('t3', { events: [] });
    expect(reported).toEqual([]);
    expect(crypto.deliveryCounters.keysNeverCame).toBe(0);
  });

  it('are checked on a timer too (every minute, or every giveUpAfterMs when shorter)', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      const { crypto, reported, advance } = await waiting({ keyWait: { giveUpAfterMs: 600_000 } });
      advance(600_000);
      // No transaction comes: the timer's tick finds the expired key.
      vi.advanceTimersByTime(60_000);
      await vi.waitFor(() => expect(reported).toHaveLength(1));
      expect(crypto.deliveryCounters.keysNeverCame).toBe(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('reject a bad keyWait option, naming it', async () => {
    const { open } = await setup();
    await expect(open({ keyWait: { giveUpAfterMs: 0 } })).rejects.toMatchObject({ code: 'InvalidArgument', field: 'options.keyWait.giveUpAfterMs' });
    await expect(open({ keyWait: 5 as never })).rejects.toMatchObject({ code: 'InvalidArgument', field: 'options.keyWait' });
    await expect(open({ onKeyNeverCame: 'x' as never })).rejects.toMatchObject({ code: 'InvalidArgument', field: 'options.onKeyNeverCame' });
  });
});

describe('a device whose keys are gone from the server', () => {
  it('is replaced on its first open in a process: a new device, uploaded and cross-signed; logged and counted', async () => {
    const { fake, open, alice } = await setup();
    const first = await open();
    const old = await first.deviceFor(A);
    await first.deviceFor(B);
    await first.close();
    // The server lost A's device keys (e.g. the device was deleted there).
    fake.hs.deviceKeys.get(A)!.delete(old.deviceId);

    const warnings: string[] = [];
    const logger = { error: () => undefined, warn: (m: string) => void warnings.push(m), info: () => undefined, debug: () => undefined };
    const crypto = await open({ logger });
    const now = await crypto.deviceFor(A);
    expect(now.deviceId).not.toBe(old.deviceId);
    expect(crypto.deviceIdOf(A)).toBe(now.deviceId);
    expect(crypto.deviceResets).toBe(1);
    expect(warnings.filter((w) => w.includes(`replaced the device ${old.deviceId} of ${A} with ${now.deviceId}`))).toHaveLength(1);
    expect(fake.calls).toContainEqual({ method: 'DELETE', path: `/_matrix/client/v3/devices/${old.deviceId}`, userId: A, deviceId: null });
    expect(fake.hs.deviceKeys.get(A)?.has(now.deviceId)).toBe(true);
    // The old identity's private keys went with the old store: a new identity signs the device.
    expect(crypto.crossSigningResets).toBe(1);
    await alice.machine.updateTrackedUsers([A]);
    await alice.sync();
    expect(await alice.machine.getDevice(A, now.deviceId)).toMatchObject({ isCrossSignedByOwner: true });
    // B's device, still listed, is kept.
    const b = await crypto.deviceFor(B);
    expect(crypto.deviceResets).toBe(1);
    expect(fake.hs.deviceKeys.get(B)?.has(b.deviceId)).toBe(true);

    // The new device is kept by the next process.
    await crypto.close();
    const again = await open();
    expect((await again.deviceFor(A)).deviceId).toBe(now.deviceId);
    expect(again.deviceResets).toBe(0);
  });
});
