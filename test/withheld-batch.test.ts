// One bad entry in a to-device batch must not cost the rest of the batch: the homeserver never
// delivers a batch again once the client advanced its sync token.
import { describe, expect, it } from 'vitest';
import { EncryptedClient, HomeserverTransport, OlmMachine, type MatrixEvent } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const ROOM = '!batch:example.org';

/** Alice shares a room key with Bob and encrypts a message; Bob has not synced yet. */
async function keyInFlight() {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE');
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const event = await alice.sendMessage(ROOM, [ALICE, BOB], { msgtype: 'm.text', body: 'beside garbage' });
  const changes = hs.syncFor(BOB, 'BOB');
  expect(changes.toDeviceEvents.map((e) => (e as MatrixEvent).type)).toEqual(['m.room.encrypted']);
  return { hs, alice, bob, event, changes };
}

const GARBAGE: unknown[] = [42, 'not an event', null, [1, 2], true];

describe('a to-device batch with entries that are not events', () => {
  for (const where of ['start', 'middle', 'end'] as const) {
    it(`processes the room key when the garbage is at the ${where}`, async () => {
      const { bob, event, changes } = await keyInFlight();
      const key = changes.toDeviceEvents[0];
      const events =
        where === 'start' ? [...GARBAGE, key] : where === 'middle' ? [GARBAGE[0], GARBAGE[1], key, ...GARBAGE.slice(2)] : [key, ...GARBAGE];
      const result = await bob.machine.receiveSyncChanges({ ...changes, toDeviceEvents: events as MatrixEvent[] });
      const keyAt = events.indexOf(key);
      const garbageAt = events.map((_, i) => i).filter((i) => i !== keyAt);
      expect(result.skippedToDeviceEvents.map((s) => s.index)).toEqual(garbageAt);
      expect(result.skippedToDeviceEvents[0]!.reason).toMatch(/^toDeviceEvents\[\d+\]: must be an event object, got /);
      expect(result.roomKeyUpdates).toEqual([expect.objectContaining({ roomId: ROOM })]);
      expect(result.toDeviceEvents).toHaveLength(1);
      expect(bob.machine.withheldMetrics().skippedToDeviceEvents).toBe(GARBAGE.length);
      const decrypted = await bob.machine.decryptRoomEvent(event, ROOM);
      expect(decrypted.event.content).toMatchObject({ body: 'beside garbage' });
    });
  }

  it('names what each skipped entry was', async () => {
    const { bob, changes } = await keyInFlight();
    const result = await bob.machine.receiveSyncChanges({ ...changes, toDeviceEvents: [...GARBAGE, ...changes.toDeviceEvents] as MatrixEvent[] });
    expect(result.skippedToDeviceEvents.map((s) => s.reason)).toEqual([
      'toDeviceEvents[0]: must be an event object, got a number',
      'toDeviceEvents[1]: must be an event object, got a string',
      'toDeviceEvents[2]: must be an event object, got null',
      'toDeviceEvents[3]: must be an event object, got an array',
      'toDeviceEvents[4]: must be an event object, got a boolean',
    ]);
  });

  it('logs each skipped entry', async () => {
    const { bob, changes } = await keyInFlight();
    const { flushLogs, setLogger } = await import('../src/index');
    const records: Array<{ level: string; target: string; message: string }> = [];
    setLogger((r) => records.push(r), { level: 'warn' });
    try {
      await bob.machine.receiveSyncChanges({ ...changes, toDeviceEvents: [7, ...changes.toDeviceEvents] as MatrixEvent[] });
      await flushLogs();
    } finally {
      setLogger(null);
    }
    expect(records).toContainEqual(
      expect.objectContaining({ level: 'warn', target: 'matrix_crypto_node::sync', message: expect.stringContaining('toDeviceEvents[0]: must be an event object') }),
    );
  });

  it('EncryptedClient.syncOnce decrypts the message whose key came beside garbage, and advances its token', async () => {
    const { bob, event, changes } = await keyInFlight();
    const sync = {
      next_batch: 's2',
      to_device: { events: [null, ...changes.toDeviceEvents, 'junk'] },
      rooms: { join: { [ROOM]: { timeline: { events: [event] } } } },
    };
    const fetchImpl: typeof fetch = async (input) => {
      const path = new URL(String(input)).pathname;
      const body = path.endsWith('/sync')
        ? sync
        : path.endsWith('/keys/query')
          ? { device_keys: {}, failures: {} }
          : path.endsWith('/keys/upload')
            ? { one_time_key_counts: { signed_curve25519: 50 } }
            : {};
      return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json' } });
    };
    const transport = new HomeserverTransport({ baseUrl: 'https://hs.example.org', accessToken: 't', fetch: fetchImpl, maxRetries: 0 });
    const client = new EncryptedClient({ machine: bob.machine, transport });
    const { changes: result, timeline } = await client.syncOnce({ timeoutMs: 0 });
    expect(result.skippedToDeviceEvents.map((s) => s.index)).toEqual([0, 2]);
    expect(timeline).toEqual([expect.objectContaining({ decrypted: expect.objectContaining({ event: expect.objectContaining({ content: expect.objectContaining({ body: 'beside garbage' }) }) }) })]);
    expect(client.syncToken).toBe('s2');
  });

  it('still rejects a batch that is not an array', async () => {
    const machine = await OlmMachine.open({ userId: BOB, deviceId: 'BOB', store: { kind: 'memory' } });
    await expect(machine.receiveSyncChanges({ toDeviceEvents: 'x' as unknown as MatrixEvent[] })).rejects.toMatchObject({ code: 'InvalidArgument' });
  });
});
