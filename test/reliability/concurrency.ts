/**
 * Many overlapping calls on one machine (SQLite store): shares in different rooms, decryptions,
 * sync processing and outgoing-request rounds all in flight at once. Every call must settle
 * (no deadlock: a watchdog fails the run instead of hanging) and the results must agree with a
 * sequential run: every room's message decrypts for every recipient, every received message
 * decrypts to its own text, and no request is handed out twice as two different ids for the
 * same work.
 *
 * Shared by the vitest suite (small) and `npm run reliability` (large).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';

export interface ConcurrencyFigures {
  /** Calls started at once on the machine under test. */
  callsInFlight: number;
  rooms: number;
  decryptions: number;
  /** Calls that rejected (each would be a bug: all inputs are valid). */
  failedCalls: number;
  /** Messages a recipient could not decrypt, or decrypted to the wrong text. */
  inconsistent: number;
  /** True when the watchdog fired before every call settled. */
  deadlock: boolean;
  failures: string[];
}

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const CAROL = '@carol:example.org';

export async function runConcurrency(rooms: number, incoming: number, watchdogMs: number): Promise<ConcurrencyFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-concurrency-'));
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE', { kind: 'sqlite', path: join(dir, 'alice') });
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const carol = await TestDevice.create(hs, CAROL, 'CAROL');
  const members = [ALICE, BOB, CAROL];
  const figures: ConcurrencyFigures = { callsInFlight: 0, rooms, decryptions: 0, failedCalls: 0, inconsistent: 0, deadlock: false, failures: [] };

  // Messages for alice to decrypt, already received; more arrive while she is busy.
  const received: { event: MatrixEvent; room: string; body: string }[] = [];
  for (let i = 0; i < incoming; i++) {
    const room = `!in${i % 5}:example.org`;
    const body = `from bob ${i}`;
    received.push({ event: await bob.sendMessage(room, members, { msgtype: 'm.text', body }), room, body });
  }
  await alice.sync();
  const late: MatrixEvent[] = [];
  for (let i = 0; i < 5; i++) late.push(await carol.sendMessage(`!late${i}:example.org`, members, { msgtype: 'm.text', body: `late ${i}` }));
  await alice.machine.updateTrackedUsers(members);

  // Requests handed out by concurrent `outgoingRequests()` calls may overlap: send each id once.
  const sentIds = new Set<string>();
  const sendOnce = async (r: Parameters<TestDevice['send']>[0]) => {
    if (sentIds.has(r.id)) return;
    sentIds.add(r.id);
    await alice.send(r);
  };
  const tracked = <T>(label: string, p: Promise<T>) => {
    figures.callsInFlight++;
    return p.catch((err: Error) => {
      figures.failedCalls++;
      figures.failures.push(`${label}: ${err.message}`);
      return undefined;
    });
  };

  const shares = Array.from({ length: rooms }, (_, i) =>
    tracked(`share ${i}`, (async () => {
      const room = `!out${i}:example.org`;
      const claim = await alice.machine.getMissingSessions(members);
      if (claim) await sendOnce(claim).catch(() => undefined);
      const { requests } = await alice.machine.shareRoomKey(room, members);
      for (const r of requests) await sendOnce(r);
      return { room, body: `to room ${i}`, event: await alice.encrypt(room, { msgtype: 'm.text', body: `to room ${i}` }) };
    })()),
  );
  const decrypts = received.map(({ event, room, body }, i) =>
    tracked(`decrypt ${i}`, alice.machine.decryptRoomEvent(event, room).then((d) => {
      figures.decryptions++;
      if ((d.event.content as { body?: string }).body !== body) {
        figures.inconsistent++;
        figures.failures.push(`decrypt ${i}: wrong text`);
      }
    })),
  );
  const syncs = Array.from({ length: 4 }, (_, i) => tracked(`sync ${i}`, alice.machine.receiveSyncChanges(hs.syncFor(ALICE, 'ALICE'))));
  const rounds = Array.from({ length: 4 }, (_, i) =>
    tracked(`outgoing ${i}`, alice.machine.outgoingRequests().then(async (list) => {
      for (const r of list) if (r.type !== 'keys_claim') await sendOnce(r).catch(() => undefined);
    })),
  );

  let timer: NodeJS.Timeout | undefined;
  const watchdog = new Promise<'deadlock'>((r) => (timer = setTimeout(() => r('deadlock'), watchdogMs)));
  const all = Promise.all([Promise.all(shares), Promise.all(decrypts), Promise.all(syncs), Promise.all(rounds)]);
  const settled = await Promise.race([all, watchdog]);
  clearTimeout(timer);
  if (settled === 'deadlock') {
    figures.deadlock = true;
    return figures;
  }
  const [sent] = settled;

  await alice.flush();
  await alice.sync();
  for (const e of late) await alice.machine.decryptRoomEvent(e, String(e.room_id)).catch(() => figures.inconsistent++);
  for (const d of [bob, carol]) await d.sync();
  for (const s of sent) {
    if (!s) continue;
    for (const d of [bob, carol]) {
      const text = await d.machine.decryptRoomEvent(s.event, s.room).then((x) => (x.event.content as { body?: string }).body, () => undefined);
      if (text !== s.body) {
        figures.inconsistent++;
        figures.failures.push(`${d.userId} could not read ${s.room}`);
      }
    }
  }
  await alice.machine.close();
  rmSync(dir, { recursive: true, force: true });
  return figures;
}
