/**
 * Crash safety: alice's device runs a bot's loops on a SQLite store in a child process
 * (crash-child.ts) and is killed with SIGKILL at random points, again and again. The parent
 * plays the homeserver and bob, who keeps sending alice messages under new room keys.
 *
 * After every restart the child must open its store, and decrypt one message of every room key
 * it reported as received in any earlier life. The homeserver behaves like Synapse: a sync batch
 * is delivered again until the client acknowledges it (the next `since`), and a one-time key
 * uploaded again with the same id is accepted only if it is the same key. A key id re-used for a
 * different key is a conflict Synapse refuses, which would leave the device unable to upload.
 *
 * Shared by the vitest suite (a few kills) and `npm run reliability` (50+).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestDevice, TestHomeserver } from '../../src/testing';
import type { MatrixEvent } from '../../src/types';
import { ALICE, BOB, type ToChild, type ToParent } from './crash-protocol';

export interface CrashFigures {
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
  /** Each message bob could not decrypt: which life sent it, its session and the error. */
  bobFailureDetails: string[];
  failures: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runCrashSafety(kills: number, { maxKillDelayMs = 1500 } = {}): Promise<CrashFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-crash-'));
  const hs = new TestHomeserver();
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const figures: CrashFigures = {
    kills: 0, verifiedRestarts: 0, keysReported: 0, decryptionsChecked: 0, keysLost: 0, openFailures: 0,
    oneTimeKeyConflicts: 0, oneTimeKeyRetries: 0, identityChanges: 0, bobSent: 0, aliceSent: 0, aliceDecryptedByBob: 0, bobFailures: {}, bobFailureDetails: [], failures: [],
  };
  const uploaded = new Map<string, string>();
  const reported = new Set<string>();
  const bySession = new Map<string, MatrixEvent>();
  const aliceEvents: MatrixEvent[] = [];
  let batch: { id: number; changes: ReturnType<TestHomeserver['syncFor']> } | undefined;
  let batchId = 0;
  let identity: string | undefined;
  const lives = new Map<MatrixEvent, number>();
  let lifeNumber = 0;

  function handleRequest(request: Extract<ToParent, { type: 'request' }>['request']): string {
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
      return hs.handle(ALICE, 'ALICE', { ...request, body: JSON.stringify(body) });
    }
    return hs.handle(ALICE, 'ALICE', request);
  }

  function onMessage(child: ChildProcess, m: ToParent, life: { ready: boolean; verified: boolean; looping: boolean }) {
    const reply = (r: ToChild) => {
      if (child.connected) child.send(r);
    };
    switch (m.type) {
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
      case 'request':
        try {
          reply({ type: 'response', id: m.id, body: handleRequest(m.request) });
        } catch (err) {
          reply({ type: 'response', id: m.id, body: '', error: (err as Error).message });
        }
        break;
      case 'sync':
        batch ??= { id: batchId++, changes: hs.syncFor(ALICE, 'ALICE') };
        reply({ type: 'batch', id: m.id, batch: batch.id, changes: batch.changes, recentEvents: [...bySession.values()].slice(-3) });
        break;
      case 'ack':
        if (batch?.id === m.id) batch = undefined;
        break;
      case 'received':
        life.looping = true;
        for (const k of m.keys) if (bySession.has(k.sessionId)) reported.add(k.sessionId);
        break;
      case 'sent':
        aliceEvents.push(m.event);
        lives.set(m.event, lifeNumber);
        break;
    }
  }

  /** Bob keeps sending alice messages, under a new room key every other message. */
  let stop = false;
  const bobLoop = (async () => {
    await bob.machine.updateTrackedUsers([ALICE, BOB]);
    for (let i = 0; !stop; i++) {
      if (!hs.deviceKeys.get(ALICE)?.has('ALICE')) {
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
    const state = { ready: false, verified: false, looping: false };
    lifeNumber++;
    const child = fork(join(__dirname, 'crash-child.ts'), [join(dir, 'alice')], {
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
      if (kill.from === 'loop') await until(() => state.looping);
      await Promise.race([sleep(kill.after), exited]);
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
      figures.bobFailureDetails.push(`${e.event_id} (life ${lives.get(e) ?? '?'}) session ${String(e.content.session_id)}: ${err.code}: ${err.message}`);
    }
  }
  figures.aliceSent = aliceEvents.length;
  figures.keysReported = reported.size;
  rmSync(dir, { recursive: true, force: true });
  return figures;
}
