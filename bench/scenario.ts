/**
 * The mass-recipient scenario, phase by phase, for any implementation (the Rust side runs the
 * same steps in bench/rust/src/scenario.rs). Only the calls a phase names are timed: building
 * the homeserver's responses and marking to-device requests sent happen outside the timer.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { deviceIds, responseBody, type Fixtures } from './fixtures';
import type { BenchImpl, BenchMachine, StoreKind, Trust } from './impls';
import { measure, rssMb, type Sample } from './measure';

export const PHASES = ['keys_query', 'olm_sessions', 'share_new', 'share_existing', 'encrypt_decrypt', 'share_withheld'] as const;
export type Phase = (typeof PHASES)[number];

export const SENDER = { userId: '@sender:bench.example', deviceId: 'SENDERDEVICE' };
export const RECIPIENT = { userId: '@recipient:bench.example', deviceId: 'RECIPIENTDEVICE' };
const ROOM = '!bench:bench.example';
const WITHHELD_ROOM = '!bench-withheld:bench.example';
const MESSAGE = { msgtype: 'm.text', body: 'hello, ten thousand devices' };

/** Local trust of the i-th fixture device in the withheld phase: 10% blacklisted, 10% unverified. */
export function trustOf(index: number): Trust {
  return index % 10 === 0 ? 'blacklisted' : index % 10 === 1 ? 'unset' : 'verified';
}

export interface RepResult {
  /** RSS before the machines were opened. */
  baseRssMb: number;
  samples: Partial<Record<Phase, Sample>>;
  /** Phases that could not run, and why. */
  skipped: Partial<Record<Phase, string>>;
}

async function answerKeyQueries(m: BenchMachine, deviceKeys: Map<string, string>): Promise<void> {
  const pending = await m.keyQueries();
  const responses = pending.map((p) => responseBody('device_keys', p.users, deviceKeys));
  for (const [i, p] of pending.entries()) await p.send(responses[i]!);
}

/** The recipient's to-device messages in a share's requests, as sync events. */
function recipientEvents(requests: { eventType: string; body: string }[]): object[] {
  const out: object[] = [];
  for (const r of requests) {
    if (r.eventType !== 'm.room.encrypted' || !r.body.includes(RECIPIENT.userId)) continue;
    const messages = (JSON.parse(r.body) as { messages: Record<string, Record<string, object>> }).messages;
    const content = messages[RECIPIENT.userId]?.[RECIPIENT.deviceId];
    if (content) out.push({ type: 'm.room.encrypted', sender: SENDER.userId, content });
  }
  return out;
}

const bytesOf = (requests: { body: string }[]) => requests.reduce((n, r) => n + Buffer.byteLength(r.body), 0);

/** One repetition of every phase on fresh machines. */
export async function runScenario(
  impl: BenchImpl,
  store: StoreKind,
  fixtures: Fixtures,
  workdir: string,
  onPhase: (phase: Phase) => void = () => {},
): Promise<RepResult> {
  // A new folder per repetition: never a store path that an earlier repetition used.
  const dir = mkdtempSync(join(workdir, `${impl.name}-${store}-`));
  const baseRssMb = rssMb();
  const sender = await impl.open(store, join(dir, 'sender'), SENDER.userId, SENDER.deviceId);
  const recipient = await impl.open(store, join(dir, 'recipient'), RECIPIENT.userId, RECIPIENT.deviceId);
  const samples: RepResult['samples'] = {};
  const skipped: RepResult['skipped'] = {};
  try {
    const own = await sender.uploadKeys();
    const theirs = await recipient.uploadKeys();
    const deviceKeys = new Map(fixtures.users.map((u) => [u.userId, u.deviceKeys]));
    const oneTimeKeys = new Map(fixtures.users.map((u) => [u.userId, u.oneTimeKeys]));
    deviceKeys.set(SENDER.userId, own.deviceKeys);
    deviceKeys.set(RECIPIENT.userId, theirs.deviceKeys);
    oneTimeKeys.set(RECIPIENT.userId, theirs.oneTimeKeys);
    // Settle the query of our own user before the measured one.
    await answerKeyQueries(sender, deviceKeys);
    const users = [...fixtures.users.map((u) => u.userId), RECIPIENT.userId];

    onPhase('keys_query');
    await sender.trackUsers(users);
    const queries = await sender.keyQueries();
    const queryResponses = queries.map((q) => responseBody('device_keys', q.users, deviceKeys));
    samples.keys_query = await measure(async () => {
      for (const [i, q] of queries.entries()) await q.send(queryResponses[i]!);
    });

    onPhase('olm_sessions');
    const claim = await sender.missingSessions(users);
    if (!claim) throw new Error(`${impl.name}: no Olm sessions missing after the keys query`);
    const claimResponse = responseBody('one_time_keys', claim.users, oneTimeKeys);
    samples.olm_sessions = await measure(() => claim.send(claimResponse));

    onPhase('share_new');
    let shared!: Awaited<ReturnType<BenchMachine['share']>>;
    samples.share_new = await measure(async () => {
      shared = await sender.share(ROOM, users, 'all');
    });
    samples.share_new.toDeviceBytes = bytesOf(shared.requests);
    await shared.markSent();
    const toRecipient = recipientEvents(shared.requests);

    onPhase('share_existing');
    const room = await sender.rotate(ROOM);
    samples.share_existing = await measure(async () => {
      shared = await sender.share(room, users, 'all');
    });
    samples.share_existing.toDeviceBytes = bytesOf(shared.requests);
    await shared.markSent();
    toRecipient.push(...recipientEvents(shared.requests));

    onPhase('encrypt_decrypt');
    await recipient.receiveToDevice(toRecipient);
    let decrypted = '';
    samples.encrypt_decrypt = await measure(async () => {
      const content = await sender.encrypt(room, MESSAGE);
      const event = { type: 'm.room.encrypted', sender: SENDER.userId, event_id: '$bench', origin_server_ts: 1, room_id: room, content };
      decrypted = await recipient.decrypt(event, room);
    });
    if (!decrypted.includes(MESSAGE.body)) throw new Error(`${impl.name}: the recipient decrypted something else: ${decrypted}`);

    if (impl.noTrust) {
      skipped.share_withheld = impl.noTrust;
    } else {
      onPhase('share_withheld');
      const devices = fixtures.users.flatMap((u) => deviceIds(u).map((d) => [u.userId, d] as const));
      // Trust is set outside the timer, a batch at a time.
      for (let i = 0; i < devices.length; i += 64) {
        await Promise.all(devices.slice(i, i + 64).map(([u, d], j) => sender.setTrust(u, d, trustOf(i + j))));
      }
      await sender.setTrust(RECIPIENT.userId, RECIPIENT.deviceId, 'verified');
      samples.share_withheld = await measure(async () => {
        shared = await sender.share(WITHHELD_ROOM, users, 'trusted');
      });
      samples.share_withheld.toDeviceBytes = bytesOf(shared.requests);
      await shared.markSent();
    }
  } finally {
    await sender.close();
    await recipient.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return { baseRssMb, samples, skipped };
}
