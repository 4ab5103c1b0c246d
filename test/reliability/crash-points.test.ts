/**
 * The send path stopped at each point between sharing a room key and handing out the
 * encrypted message (issue 14, point 11): the machine is closed there and opened again from
 * its SQLite store, as a SIGKILL would leave it (the engine writes every change through before
 * the call returns; close() writes only sessions that encrypted messages since they were last
 * saved whole, and at these points, before the message, there is none), then the bot's loop goes on
 * (share, send what the share returns, encrypt). The peer must decrypt the message.
 *
 * This pins the behaviour the crash suite relies on: an outbound session whose key requests
 * were created but never marked as sent comes back from the store with those same requests
 * (same transaction id), and the next share hands them out again; once marked as sent, they
 * are not sent again.
 */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const ROOM = '!r:example.org';

type Point = 'after the share' | 'after sending its requests' | 'after marking them sent';

async function restartAt(point: Point) {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-crash-point-'));
  const store = { kind: 'sqlite' as const, path: join(dir, 'alice') };
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE', store);
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  await alice.machine.updateTrackedUsers([BOB]);
  await alice.flush();
  const claim = await alice.machine.getMissingSessions([BOB]);
  if (claim) await alice.send(claim);

  const first = await alice.machine.shareRoomKey(ROOM, [BOB]);
  expect(first.sharedWith).toEqual([{ userId: BOB, deviceId: 'BOB' }]);
  if (point !== 'after the share') for (const r of first.requests) hs.handle(ALICE, 'ALICE', r);
  if (point === 'after marking them sent') for (const r of first.requests) await alice.machine.markRequestAsSent(r, '{}');

  await alice.machine.close();
  alice.machine = await OlmMachine.open({ userId: ALICE, deviceId: 'ALICE', store });
  await alice.flush();
  const again = await alice.machine.shareRoomKey(ROOM, [BOB]);
  for (const r of again.requests) await alice.send(r);
  const event = await alice.encrypt(ROOM, { msgtype: 'm.text', body: 'after the restart' });
  await bob.sync();
  const decrypted = await bob.machine.decryptRoomEvent(event, ROOM);
  await alice.machine.close();
  rmSync(dir, { recursive: true, force: true });
  return { first, again, decrypted, toBob: hs.sentTo(BOB, 'BOB', 'm.room.encrypted').length };
}

describe('the send path restarted between share and encrypt (SQLite)', () => {
  it('after the share, before its requests are sent: the restarted share hands out the same requests', async () => {
    const r = await restartAt('after the share');
    expect(r.again.requests.map((q) => q.id)).toEqual(r.first.requests.map((q) => q.id));
    expect(r.toBob).toBe(1);
    expect(r.decrypted.event.content).toMatchObject({ body: 'after the restart' });
  });

  it('after sending them, before marking them sent: they are handed out (and delivered) again', async () => {
    const r = await restartAt('after sending its requests');
    expect(r.again.requests.map((q) => q.id)).toEqual(r.first.requests.map((q) => q.id));
    expect(r.toBob).toBe(2);
    expect(r.decrypted.event.content).toMatchObject({ body: 'after the restart' });
  });

  it('after marking them sent: nothing is sent again', async () => {
    const r = await restartAt('after marking them sent');
    expect(r.again.requests).toEqual([]);
    expect(r.toBob).toBe(1);
    expect(r.decrypted.event.content).toMatchObject({ body: 'after the restart' });
  });
});
