/**
 * Crash safety: alice's device runs a bot's loops on a persistent store (our engine on SQLite or
 * on PostgreSQL) in a child process (crash-child.ts) and is killed with SIGKILL at random
 * points, again and again. The parent plays the homeserver and bob, who keeps sending alice
 * messages under new room keys.
 *
 * After every restart the child must open its store, and decrypt one message of every room key
 * it reported as received in any earlier life. The homeserver behaves like Synapse: a sync batch
 * is delivered again until the client acknowledges it (the next `since`), and a one-time key
 * uploaded again with the same id is accepted only if it is the same key. A key id re-used for a
 * different key is a conflict Synapse refuses, which would leave the device unable to upload.
 *
 * Shared by the vitest suite (a few kills) and `npm run reliability` (50+).
 *
 * With MCN_CRASH_TRACE=1 the figures also list every Olm message alice sent bob
 * (`olmToBob`): a ratchet key and chain index sent twice with different ciphertexts would be an
 * Olm session whose state went back across a restart (bob cannot decrypt the second one).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StoreOptions } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';
import type { OutgoingRequest } from '../../src/requests';
import { ChildHomeserver, sleep } from '../helpers/child-bot';
import { ALICE, BOB, type ToChild, type ToParent } from './crash-protocol';

/** The store alice's device runs on: our engine on SQLite, or on the PostgreSQL server at `url`. */
export type CrashBackend = { kind: 'sqlite' } | { kind: 'postgres'; url: string };

export interface CrashFigures {
  /** The store kind. */
  store: CrashBackend['kind'];
  /** SIGKILLs sent. */
  kills: number;
  /** Restarts after a kill that opened the store and finished checking every reported key. */
  verifiedRestarts: number;
  /** Room keys the child reported as received (distinct sessions). */
  keysReported: number;
  /** Decryptions checked across all restarts. */
  decryptionsChecked: number;
  /** Reported room keys whose message no longer decrypted after a restart. */
  keysLost: number;
  /** Restarts whose store did not open (the child died before `ready` without being killed). */
  openFailures: number;
  /** Restarts that found the account locked and waited (PostgreSQL: the killed holder's lease). */
  lockWaits: number;
  /** One-time key ids uploaded again with a different key (Synapse refuses these). */
  oneTimeKeyConflicts: number;
  /** One-time keys uploaded again unchanged, after a kill between the upload and its acknowledgement. */
  oneTimeKeyRetries: number;
  /** Identity key changes across restarts (the account was lost). */
  identityChanges: number;
  /** Messages bob sent alice. */
  bobSent: number;
  /** Messages alice encrypted (and reported before a kill), how many bob decrypted, and why the others failed. */
  aliceSent: number;
  aliceDecryptedByBob: number;
  bobFailures: Record<string, number>;
  /**
   * Each message bob could not decrypt: which life sent it, its session, the error, and each
   * message of that session with what the share before it gave bob's device.
   */
  bobFailureDetails: string[];
  /** With MCN_CRASH_TRACE=1: `life N <type> olm type <0|1> [base <key>] ratchet <key> chain <index> body <tail>` per Olm message to bob. */
  olmToBob?: string[];
  failures: string[];
}

/** What the parent knows of the child's current life. */
interface LifeState {
  /** When the child last started opening the store, unless that attempt was refused. */
  openingAt?: number;
  /** It found the store locked at least once. */
  waited: boolean;
  ready: boolean;
  verified: boolean;
  looping: boolean;
}


/** A protobuf varint of an Olm message at `at`: its value and the position after it. */
function varint(b: Buffer, at: number): [number, number] {
  let v = 0, shift = 0, i = at;
  for (;;) { const x = b[i++]; v += (x & 0x7f) * 2 ** shift; shift += 7; if (!(x & 0x80)) break; }
  return [v, i];
}
/** The ratchet key (prefix) and chain index of an Olm message, and the session's base key (prefix) for pre-key messages. */
function olmIndex(type: number, body: string): string {
  let b = Buffer.from(body, 'base64');
  let prefix = '';
  if (type === 0) {
    let i = 1;
    while (i < b.length) {
      const tag = b[i++];
      const [len, j] = varint(b, i);
      const field = b.subarray(j, j + len);
      if (tag === 0x12) prefix += `base ${field.toString('base64').slice(0, 8)} `;
      if (tag === 0x22) { b = Buffer.from(field); break; }
      i = j + len;
    }
  }
  let i = 1, ratchet = '', chain = -1;
  while (i < b.length) {
    const tag = b[i++];
    if (tag === 0x10) { const [v, j] = varint(b, i); chain = v; i = j; continue; }
    const [len, j] = varint(b, i);
    if (tag === 0x0a) ratchet = b.subarray(j, j + len).toString('base64').slice(0, 8);
    if (tag === 0x22) break;
    i = j + len;
  }
  return `${prefix}ratchet ${ratchet} chain ${chain}`;
}


export async function runCrashSafety(
  kills: number,
  { maxKillDelayMs = 1500, backend = { kind: 'sqlite' } as CrashBackend } = {},
): Promise<CrashFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-crash-'));
  // A PostgreSQL database may outlive the run (MCN_TEST_POSTGRES): a device of its own per run.
  const deviceId = backend.kind === 'sqlite' ? 'ALICE' : `ALICE${Date.now().toString(36).toUpperCase()}`;
  const store: StoreOptions = backend.kind === 'sqlite' ? { kind: 'sqlite', path: join(dir, 'alice') } : { kind: 'postgres', url: backend.url };
  const hs = new TestHomeserver();
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const figures: CrashFigures = {
    store: backend.kind, kills: 0, verifiedRestarts: 0, keysReported: 0, decryptionsChecked: 0, keysLost: 0, openFailures: 0, lockWaits: 0,
    oneTimeKeyConflicts: 0, oneTimeKeyRetries: 0, identityChanges: 0, bobSent: 0, aliceSent: 0, aliceDecryptedByBob: 0, bobFailures: {}, bobFailureDetails: [], failures: [],
  };
  const trace = process.env.MCN_CRASH_TRACE === '1' ? (figures.olmToBob = []) : undefined;
  const uploaded = new Map<string, string>();
  const reported = new Set<string>();
  const bySession = new Map<string, MatrixEvent>();
  const aliceEvents: MatrixEvent[] = [];
  let identity: string | undefined;
  const lives = new Map<MatrixEvent, number>();
  /** What the share before each of alice's messages gave bob's device, by message. */
  const shares = new Map<MatrixEvent, string>();
  let lifeNumber = 0;

  function handleRequest(request: OutgoingRequest): string {
    if (request.type === 'keys_upload') {
      const body = JSON.parse(request.body) as { one_time_keys?: Record<string, unknown>; fallback_keys?: unknown; device_keys?: unknown };
      for (const [id, key] of Object.entries(body.one_time_keys ?? {})) {
        const text = JSON.stringify(key);
        const before = uploaded.get(id);
        if (before === undefined) uploaded.set(id, text);
        else {
          if (before === text) figures.oneTimeKeyRetries++;
          else {
            figures.oneTimeKeyConflicts++;
            figures.failures.push(`one-time key ${id} uploaded again with a different key`);
          }
          delete body.one_time_keys![id];
        }
      }
      return hs.handle(ALICE, deviceId, { ...request, body: JSON.stringify(body) });
    }
    if (trace && request.type === 'to_device') traceToDevice(trace, request);
    return hs.handle(ALICE, deviceId, request);
  }

  function traceToDevice(trace: string[], request: { eventType: string; body: string }) {
    type Content = { ciphertext?: Record<string, { type: number; body: string }> };
    const body = JSON.parse(request.body) as { messages: Record<string, Record<string, Content>> };
    for (const content of Object.values(body.messages[BOB] ?? {})) {
      for (const c of Object.values(content.ciphertext ?? {})) {
        trace.push(`life ${lifeNumber} ${request.eventType} olm type ${c.type} ${olmIndex(c.type, c.body)} body ${c.body.slice(-10)}`);
      }
    }
  }

  const homeserver = new ChildHomeserver(hs, ALICE, deviceId, () => [...bySession.values()].slice(-3), handleRequest);

  function onMessage(child: ChildProcess, m: ToParent, life: LifeState) {
    const reply = (r: ToChild) => {
      if (child.connected) child.send(r);
    };
    if (homeserver.answer(m, reply)) return;
    switch (m.type) {
      case 'opening':
        life.openingAt = Date.now();
        break;
      case 'locked':
        if (!life.waited) figures.lockWaits++;
        life.waited = true;
        life.openingAt = undefined;
        break;
      case 'ready':
        life.ready = true;
        if (identity !== undefined && identity !== m.curve25519) figures.identityChanges++;
        identity = m.curve25519;
        reply({ type: 'verify', events: [...reported].map((s) => bySession.get(s)!).filter(Boolean) });
        break;
      case 'verified':
        life.verified = true;
        figures.decryptionsChecked += m.checked;
        figures.keysLost += m.failed.length;
        figures.failures.push(...m.failed.map((f) => `lost after restart: ${f}`));
        break;
      case 'received':
        life.looping = true;
        for (const k of m.keys) if (bySession.has(k.sessionId)) reported.add(k.sessionId);
        break;
      case 'sent':
        aliceEvents.push(m.event);
        lives.set(m.event, lifeNumber);
        shares.set(m.event, m.share);
        break;
    }
  }

  /** Bob keeps sending alice messages, under a new room key every other message. */
  let stop = false;
  const bobLoop = (async () => {
    await bob.machine.updateTrackedUsers([ALICE, BOB]);
    for (let i = 0; !stop; i++) {
      if (!hs.deviceKeys.get(ALICE)?.has(deviceId)) {
        await sleep(50);
        continue;
      }
      const room = `!bob${i % 4}:example.org`;
      const event = await bob.sendMessage(room, [ALICE, BOB], { msgtype: 'm.text', body: `bob ${i}` });
      bySession.set(String(event.content.session_id), event);
      figures.bobSent++;
      if (i % 2 === 1) await bob.machine.discardRoomKey(room);
      await bob.sync();
      await sleep(20);
    }
  })();

  /**
   * One life of the child. `kill.after` ms after `kill.from` (the spawn, or its first processed
   * sync batch), SIGKILL; `null`: only once it has checked every reported key.
   */
  async function life(kill: { from: 'spawn' | 'loop'; after: number } | null): Promise<void> {
    const state: LifeState = { ready: false, verified: false, looping: false, waited: false };
    lifeNumber++;
    const child = fork(join(__dirname, 'crash-child.ts'), [JSON.stringify(store), deviceId], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: { ...process.env, RUST_BACKTRACE: '0' },
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('message', (m: ToParent) => onMessage(child, m, state));
    let exitedYet = false;
    const exited = new Promise<NodeJS.Signals | number | null>((r) =>
      child.on('exit', (code, signal) => {
        exitedYet = true;
        r(signal ?? code);
      }),
    );
    const until = async (done: () => boolean) => {
      while (!done() && !exitedYet) await sleep(10);
    };
    if (kill === null) {
      await until(() => state.verified);
    } else {
      if (kill.from === 'loop') {
        await until(() => state.looping);
        await Promise.race([sleep(kill.after), exited]);
      } else {
        // From the open attempt that gets the store: on PostgreSQL the attempts before it only
        // wait for the killed holder's lease to run out.
        await until(() => state.openingAt !== undefined && Date.now() >= state.openingAt + kill.after);
      }
      figures.kills++;
    }
    child.kill('SIGKILL');
    const how = await exited;
    if (how !== 'SIGKILL') {
      figures.openFailures += state.ready ? 0 : 1;
      figures.failures.push(`child exited by itself (${how}): ${stderr.slice(-500)}`);
    }
    if (state.verified && kill !== null) figures.verifiedRestarts++;
  }

  try {
    // The first life creates the account; each later one starts from what the kill left.
    // Most kills land in the loops; every fifth lands anywhere from start-up to the loops.
    for (let k = 0; k < kills; k++) {
      await life(k % 5 === 4 ? { from: 'spawn', after: Math.random() * 3 * maxKillDelayMs } : { from: 'loop', after: Math.random() * maxKillDelayMs });
    }
    // A last life that is not killed until it has checked every key: the final word on losses.
    await life(null);
    figures.verifiedRestarts++;
  } finally {
    stop = true;
    await bobLoop;
  }
  await bob.sync();
  for (const e of aliceEvents) {
    const err = await bob.machine.decryptRoomEvent(e, String(e.room_id)).then(() => null, (x: Error & { code?: string }) => x);
    if (err === null) figures.aliceDecryptedByBob++;
    else {
      figures.bobFailures[err.code ?? 'unknown'] = (figures.bobFailures[err.code ?? 'unknown'] ?? 0) + 1;
      const session = String(e.content.session_id);
      const history = aliceEvents.filter((o) => o.content.session_id === session).map((o) => `${o.event_id}@${lives.get(o)}: ${shares.get(o)}`);
      figures.bobFailureDetails.push(`${e.event_id} (life ${lives.get(e) ?? '?'}) session ${session}: ${err.code}: ${err.message}; the session's messages and what each share gave bob: ${history.join('; ')}`);
    }
  }
  figures.aliceSent = aliceEvents.length;
  figures.keysReported = reported.size;
  rmSync(dir, { recursive: true, force: true });
  return figures;
}
