/**
 * Megolm message indices across crashes: alice's device runs a message loop (megolm-child.ts)
 * on a persistent store (our engine on SQLite or PostgreSQL) and is killed with SIGKILL at
 * random points of it, again and again, with some lives ended by a clean close instead. The
 * parent plays the homeserver and bob, the recipient.
 *
 * The engine does not write the session's ratchet for every message (store/outbound.rs): the
 * first message after a full save leaves a marker, and a session behind a marker is not loaded
 * again, so the next share rotates the room key. What the recipient must see: no Megolm
 * (session id, message index) pair twice, every message alice handed out decrypts, and after
 * a clean close the same session goes on (no rotation).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StoreOptions } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';
import { ChildHomeserver, sleep } from '../helpers/child-bot';
import { ALICE, BOB, type MessageLoopToParent, type ToChild } from './crash-protocol';
import type { CrashBackend } from './crash';

export interface MessageLoopFigures {
  /** SIGKILLs sent, and lives ended by a clean close. */
  kills: number;
  cleanCloses: number;
  /** Messages alice handed out (reported before the kill). */
  sent: number;
  /** Of those, how many bob decrypted; why the others failed. */
  decrypted: number;
  decryptFailures: string[];
  /** (session, index) pairs seen more than once, with the messages that carried them. */
  reusedIndices: string[];
  /** Distinct room keys alice used. */
  sessions: number;
  /** Clean closes after which the next life's first message used another room key. */
  rotationsAfterCleanClose: number;
  /** Children that exited by themselves (with their stderr tail). */
  failures: string[];
}

/** The Megolm session id and message index of an encrypted room event (the ciphertext's first field). */
export function megolmIndex(event: MatrixEvent): [string, number] {
  const content = event.content as { session_id: string; ciphertext: string };
  const b = Buffer.from(content.ciphertext, 'base64');
  if (b[0] !== 3 || b[1] !== 0x08) throw new Error(`not a Megolm v1 message: ${content.ciphertext.slice(0, 12)}`);
  let index = 0, shift = 0, i = 2;
  for (;;) {
    const x = b[i++]!;
    index += (x & 0x7f) * 2 ** shift;
    shift += 7;
    if (!(x & 0x80)) break;
  }
  return [content.session_id, index];
}

/**
 * `lives` lives of alice: `'kill'` SIGKILLs it up to `maxKillDelayMs` after its first message,
 * `'close'` asks it to close cleanly after a few messages. A last life closes cleanly too.
 */
export async function runMessageLoop(
  lives: ('kill' | 'close')[],
  { maxKillDelayMs = 600, backend = { kind: 'sqlite' } as CrashBackend } = {},
): Promise<MessageLoopFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-megolm-'));
  const deviceId = backend.kind === 'sqlite' ? 'ALICE' : `ALICE${Date.now().toString(36).toUpperCase()}`;
  const store: StoreOptions = backend.kind === 'sqlite' ? { kind: 'sqlite', path: join(dir, 'alice') } : { kind: 'postgres', url: backend.url };
  const hs = new TestHomeserver();
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const figures: MessageLoopFigures = {
    kills: 0, cleanCloses: 0, sent: 0, decrypted: 0, decryptFailures: [], reusedIndices: [], sessions: 0, rotationsAfterCleanClose: 0, failures: [],
  };
  const events: MatrixEvent[] = [];
  /** The position in `events` of each life's first message. */
  const firstOfLife = new Map<number, number>();
  const homeserver = new ChildHomeserver(hs, ALICE, deviceId, () => []);

  async function life(n: number, end: 'kill' | 'close'): Promise<void> {
    let sentThisLife = 0;
    let closed = false;
    const child: ChildProcess = fork(join(__dirname, 'megolm-child.ts'), [JSON.stringify(store), deviceId, String(n)], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: { ...process.env, RUST_BACKTRACE: '0' },
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('message', (m: MessageLoopToParent) => {
      if (homeserver.answer(m, (r: ToChild) => child.connected && child.send(r))) return;
      if (m.type === 'sent') {
        if (sentThisLife++ === 0) firstOfLife.set(n, events.length);
        events.push(m.event);
      } else if (m.type === 'closed') closed = true;
    });
    let exitedYet = false;
    const exited = new Promise<NodeJS.Signals | number | null>((r) =>
      child.on('exit', (code, signal) => {
        exitedYet = true;
        r(signal ?? code);
      }),
    );
    while (sentThisLife === 0 && !exitedYet) await sleep(5);
    if (end === 'kill') {
      await Promise.race([sleep(Math.random() * maxKillDelayMs), exited]);
      child.kill('SIGKILL');
      figures.kills++;
    } else {
      while (sentThisLife < 5 && !exitedYet) await sleep(5);
      if (child.connected) child.send({ type: 'close' });
    }
    const how = await exited;
    if (end === 'close') {
      if (closed) figures.cleanCloses++;
      else figures.failures.push(`life ${n} did not close cleanly (${how}): ${stderr.slice(-500)}`);
    } else if (how !== 'SIGKILL') {
      figures.failures.push(`life ${n} exited by itself (${how}): ${stderr.slice(-500)}`);
    }
  }

  const ends = [...lives, 'close' as const];
  for (const [n, end] of ends.entries()) await life(n, end);

  // What bob sees: every message, its room key from the to-device messages alice sent.
  await bob.sync();
  const seen = new Map<string, string>();
  for (const e of events) {
    const [session, index] = megolmIndex(e);
    const pair = `${session}#${index}`;
    const earlier = seen.get(pair);
    if (earlier !== undefined) figures.reusedIndices.push(`${pair}: ${earlier} and ${e.event_id}`);
    else seen.set(pair, String(e.event_id));
    await bob.machine.decryptRoomEvent(e, String(e.room_id)).then(
      () => figures.decrypted++,
      (err: Error & { code?: string }) => figures.decryptFailures.push(`${e.event_id} (${pair}): ${err.code}: ${err.message}`),
    );
  }
  figures.sent = events.length;
  figures.sessions = new Set(events.map((e) => megolmIndex(e)[0])).size;
  // A clean close keeps the session: the next life's first message goes on with it, unless
  // the session had reached the crate's rotation period (100 messages).
  for (const [n, end] of ends.entries()) {
    const next = firstOfLife.get(n + 1);
    if (end !== 'close' || next === undefined || next === 0) continue;
    const [before, lastIndex] = megolmIndex(events[next - 1]!);
    if (before !== megolmIndex(events[next]!)[0] && lastIndex < 99) figures.rotationsAfterCleanClose++;
  }
  rmSync(dir, { recursive: true, force: true });
  return figures;
}
