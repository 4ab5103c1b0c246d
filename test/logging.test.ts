import { describe, it, expect, vi, afterEach } from 'vitest';
import { DecryptionError, flushLogs, formatLogRecord, setLogger, type LogRecord } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

/** An event Bob cannot decrypt (he never syncs the room key), and its session id. */
async function undecryptable(room: string) {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
  const event = await alice.sendMessage(room, [alice.userId, bob.userId]);
  const sessionId = (event.content as { session_id: string }).session_id;
  const fail = async () => {
    const err = await bob.machine.decryptRoomEvent(event, room).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecryptionError);
  };
  return { fail, sessionId };
}

const aboutRoom = (room: string) => (r: LogRecord) => r.spans.some((s) => s.fields.room_id?.includes(room));

afterEach(() => setLogger(null));

describe('setLogger', () => {
  it('delivers the decryption failure with its room and session, and honours the level', async () => {
    const records: LogRecord[] = [];
    const quiet = await undecryptable('!quiet:example.org');
    const loud = await undecryptable('!loud:example.org');

    setLogger((r) => records.push(r), { level: 'error' });
    await quiet.fail(); // logged at warn: filtered out
    setLogger((r) => records.push(r), { level: 'warn' });
    await loud.fail();

    await vi.waitFor(() => expect(records.some(aboutRoom('!loud:example.org'))).toBe(true));
    const failure = records.find(aboutRoom('!loud:example.org'))!;
    expect(failure.level).toBe('warn');
    expect(failure.target).toMatch(/^matrix_sdk_crypto/);
    expect(failure.message).toMatch(/Failed to decrypt a room event/);
    const span = failure.spans.find((s) => s.name === 'decrypt_room_event')!;
    expect(span.fields.session_id).toBe(loud.sessionId);
    expect(records.some(aboutRoom('!quiet:example.org'))).toBe(false);
    for (const r of records) expect(['error', 'warn']).toContain(r.level);
  });

  it('stops after setLogger(null)', async () => {
    const records: LogRecord[] = [];
    const before = await undecryptable('!before:example.org');
    const after = await undecryptable('!after:example.org');
    setLogger((r) => records.push(r), { level: 'warn' });
    await before.fail();
    await vi.waitFor(() => expect(records.some(aboutRoom('!before:example.org'))).toBe(true));
    setLogger(null);
    await after.fail();
    // Turn it back on and log something else: anything from while it was off would be ahead of it.
    const again = await undecryptable('!again:example.org');
    setLogger((r) => records.push(r), { level: 'warn' });
    await again.fail();
    await vi.waitFor(() => expect(records.some(aboutRoom('!again:example.org'))).toBe(true));
    expect(records.some(aboutRoom('!after:example.org'))).toBe(false);
  });

  it('passes formatted lines to an object logger such as console', async () => {
    const lines: string[] = [];
    const logger = { error: vi.fn(), warn: (l: string) => void lines.push(l), info: vi.fn(), debug: vi.fn() };
    const { fail, sessionId } = await undecryptable('!console:example.org');
    setLogger(logger, { level: 'warn' });
    await fail();
    await vi.waitFor(() => expect(lines.some((l) => l.includes(sessionId))).toBe(true));
    expect(lines.find((l) => l.includes(sessionId))).toMatch(
      /^matrix_sdk_crypto[\w:]*: Failed to decrypt a room event: .*\[.*decrypt_room_event\{.*room_id=.*!console:example\.org/,
    );
  });

  it('keeps delivering when the logger throws, and warns once', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    let calls = 0;
    setLogger(
      () => {
        calls++;
        throw new Error('logger broke');
      },
      { level: 'warn' },
    );
    await (await undecryptable('!t1:example.org')).fail();
    await (await undecryptable('!t2:example.org')).fail();
    await vi.waitFor(() => expect(calls).toBeGreaterThanOrEqual(2));
    await vi.waitFor(() => expect(warnings.filter((w) => w.includes('logger broke'))).toHaveLength(1));
    process.off('warning', onWarning);
  });

  it('rejects an unknown level and a logger without the level methods', () => {
    expect(() => setLogger(() => {}, { level: 'loud' as never })).toThrow(expect.objectContaining({ code: 'InvalidArgument', field: 'level' }));
    expect(() => setLogger({ warn() {} } as never)).toThrow(expect.objectContaining({ code: 'InvalidArgument', field: 'logger' }));
  });

  it('formats a record as one line', () => {
    expect(
      formatLogRecord({
        level: 'warn',
        target: 'matrix_sdk_crypto::machine',
        message: 'Failed',
        fields: { code: 'm.unverified' },
        spans: [{ name: 'outer', fields: {} }, { name: 'decrypt_room_event', fields: { room_id: '!r:x' } }],
        timestamp: 0,
      }),
    ).toBe('matrix_sdk_crypto::machine: Failed code=m.unverified [outer > decrypt_room_event{room_id=!r:x}]');
  });
  it('flushLogs resolves once every record logged before it has been delivered', async () => {
    const hs = new TestHomeserver();
    const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
    const records: LogRecord[] = [];
    setLogger((r) => records.push(r), { level: 'warn' });
    const garbage = Array.from({ length: 200 }, (_, i) => i);
    await bob.machine.receiveSyncChanges({ toDeviceEvents: garbage as never[] });
    await flushLogs();
    const skipped = records.filter((r) => r.target === 'matrix_crypto_node::sync');
    expect(skipped).toHaveLength(200);
    expect(skipped[199]!.message).toContain('toDeviceEvents[199]');
    expect(records.some((r) => r.target === 'matrix_crypto_node::flush')).toBe(false);
  });

  it('flushLogs resolves at once without a logger, and when logging is turned off', async () => {
    setLogger(null);
    await flushLogs();
    setLogger(() => {}, { level: 'warn' });
    const pending = flushLogs();
    setLogger(null);
    await pending;
  });
});
