/**
 * Memory: machines that are closed or garbage-collected free their native memory, and long
 * runs of encryption, decryption and 1,000-device shares do not grow the process.
 *
 * These need `global.gc` (`node --expose-gc`), so the vitest suite runs them in a child process
 * (memory-child.ts); `npm run reliability` runs the full sizes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine } from '../../src/index';
import { TestDevice, TestHomeserver } from '../../src/testing';

const MiB = 2 ** 20;
const mib = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;

async function collect(rounds = 6) {
  for (let i = 0; i < rounds; i++) {
    global.gc!();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function rss() {
  await collect();
  return process.memoryUsage().rss;
}

export interface FinalizerFigures {
  opened: number;
  /** JS wrappers the garbage collector finalized after their last reference was dropped. */
  finalized: number;
  /** SQLite stores that reopened after their unclosed machines were collected: the native side ran its drop and released the store. */
  reopenedAfterCollection: number;
  sqlite: number;
  rssBeforeMiB: number;
  rssOpenMiB: number;
  rssAfterCollectionMiB: number;
}

/** Open machines, drop them without `close()`, and check the collector frees both sides. */
export async function runFinalizers(count: number): Promise<FinalizerFigures> {
  if (!global.gc) throw new Error('run with node --expose-gc');
  const dir = mkdtempSync(join(tmpdir(), 'mcn-finalize-'));
  const sqlite = Math.floor(count / 2);
  let finalized = 0;
  const registry = new FinalizationRegistry<number>(() => finalized++);
  const before = await rss();
  // Opened in a function of its own, so no stack slot of ours keeps the last machine alive.
  const openAll = async () => {
    const machines: OlmMachine[] = [];
    for (let i = 0; i < count; i++) {
      const store = i < sqlite ? { kind: 'sqlite' as const, path: join(dir, `m${i}`) } : { kind: 'memory' as const };
      machines.push(await OlmMachine.open({ userId: `@u${i}:example.org`, deviceId: 'D', store }));
      registry.register(machines[i], i);
    }
    await Promise.all(machines.map((m) => m.outgoingRequests()));
    return process.memoryUsage().rss;
  };
  const opened = await openAll();
  for (let round = 0; round < 50 && finalized < count; round++) await collect(2);
  const after = await rss();
  let reopened = 0;
  for (let i = 0; i < sqlite; i++) {
    const m = await OlmMachine.open({ userId: `@u${i}:example.org`, deviceId: 'D', store: { kind: 'sqlite', path: join(dir, `m${i}`) } }).catch(() => null);
    if (m) {
      reopened++;
      await m.close();
    }
  }
  rmSync(dir, { recursive: true, force: true });
  return {
    opened: count,
    finalized,
    reopenedAfterCollection: reopened,
    sqlite,
    rssBeforeMiB: mib(before),
    rssOpenMiB: mib(opened),
    rssAfterCollectionMiB: mib(after),
  };
}

export interface CycleFigures {
  cycles: number;
  machinesPerCycle: number;
  /** RSS after each cycle (after collection), MiB. */
  rssMiB: number[];
  /** Growth from the end of the first cycle to the end of the last, percent. */
  driftPercent: number;
  /**
   * SQLite machines whose identity key on reopening, in every later cycle, was the one their
   * store had in the first cycle (the store kept the account through every close).
   */
  sqliteAccountsKept: number;
  /** SQLite machines opened per cycle. */
  sqlitePerCycle: number;
}

/** Open, use and close machines in cycles; RSS must level off. */
export async function runOpenCloseCycles(cycles: number, perCycle: number): Promise<CycleFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-cycles-'));
  const rssMiB: number[] = [];
  const firstKeys = new Map<number, string>();
  const changed = new Set<number>();
  for (let c = 0; c < cycles; c++) {
    const machines: OlmMachine[] = [];
    for (let i = 0; i < perCycle; i++) {
      const sqlite = i % 2 === 0;
      const store = sqlite ? { kind: 'sqlite' as const, path: join(dir, `m${i}`) } : { kind: 'memory' as const };
      const m = await OlmMachine.open({ userId: `@u${i}:example.org`, deviceId: 'D', store });
      await m.outgoingRequests();
      if (sqlite) {
        const key = m.identityKeys.curve25519;
        if (c === 0) firstKeys.set(i, key);
        else if (firstKeys.get(i) !== key) changed.add(i);
      }
      machines.push(m);
    }
    for (const m of machines) await m.close();
    machines.length = 0;
    rssMiB.push(mib(await rss()));
  }
  rmSync(dir, { recursive: true, force: true });
  return {
    cycles,
    machinesPerCycle: perCycle,
    rssMiB,
    driftPercent: Math.round(((rssMiB.at(-1)! - rssMiB[0]) / rssMiB[0]) * 1000) / 10,
    sqliteAccountsKept: firstKeys.size - changed.size,
    sqlitePerCycle: firstKeys.size,
  };
}

export interface SoakFigures {
  operations: number;
  store: 'sqlite' | 'memory';
  warmupOperations: number;
  rssAfterWarmupMiB: number;
  rssEndMiB: number;
  driftPercent: number;
  /** RSS at every tenth of the run (after collection), MiB. */
  rssMiB: number[];
  failures: number;
  seconds: number;
}

/**
 * `operations` encryptions and decryptions (half each) between two devices (SQLite or memory
 * stores), one room, with a session that rotates every `rotateEvery` messages (a new share each
 * time).
 */
export async function runEncryptDecryptSoak(operations: number, store: 'sqlite' | 'memory' = 'sqlite', rotateEvery = 1_000): Promise<SoakFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-soak-'));
  const hs = new TestHomeserver();
  const storeFor = (name: string) => (store === 'sqlite' ? { kind: 'sqlite' as const, path: join(dir, name) } : { kind: 'memory' as const });
  const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE', storeFor('alice'));
  const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB', storeFor('bob'));
  const room = '!soak:example.org';
  const members = [alice.userId, bob.userId];
  const settings = { rotationPeriodMessages: rotateEvery };
  const messages = operations / 2;
  const warmup = Math.floor(messages / 10);
  const start = performance.now();
  let failures = 0;
  let warm = 0;
  const rssMiB: number[] = [];
  for (let i = 0; i < messages; i++) {
    if (i % rotateEvery === 0) {
      const { requests } = await alice.prepareRoom(room, members, settings);
      for (const r of requests) await alice.send(r);
      await bob.sync();
    }
    const event = await alice.encrypt(room, { msgtype: 'm.text', body: `message ${i}` });
    const out = await bob.machine.decryptRoomEvent(event, room).catch(() => null);
    if ((out?.event.content as { body?: string } | undefined)?.body !== `message ${i}`) failures++;
    if (i + 1 === warmup) warm = await rss();
    if ((i + 1) % (messages / 10) === 0) rssMiB.push(mib(await rss()));
  }
  const end = await rss();
  await alice.machine.close();
  await bob.machine.close();
  rmSync(dir, { recursive: true, force: true });
  return {
    operations,
    store,
    warmupOperations: warmup * 2,
    rssAfterWarmupMiB: mib(warm),
    rssEndMiB: mib(end),
    driftPercent: Math.round(((end - warm) / warm) * 1000) / 10,
    rssMiB,
    failures,
    seconds: Math.round((performance.now() - start) / 100) / 10,
  };
}

interface FixtureUser {
  userId: string;
  deviceKeys: string;
  oneTimeKeys: string;
}

/**
 * `devices` recipient devices, `perUser` per user: real machines (memory stores) whose first
 * keys/upload gives their signed device keys and one signed one-time key each, as keys/query and
 * keys/claim response fragments. The machines are closed again: only their keys are needed.
 */
async function recipients(devices: number, perUser: number, server: string): Promise<FixtureUser[]> {
  const users: FixtureUser[] = [];
  for (let u = 0; u * perUser < devices; u++) {
    const userId = `@soak${u}:${server}`;
    const keys: string[] = [];
    const otks: string[] = [];
    for (let d = 0; d < Math.min(perUser, devices - u * perUser); d++) {
      const deviceId = `SOAKDEV${d}`;
      const m = await OlmMachine.open({ userId, deviceId, store: { kind: 'memory' } });
      const upload = (await m.outgoingRequests()).find((r) => r.type === 'keys_upload')!;
      const body = JSON.parse(upload.body) as { device_keys: object; one_time_keys: Record<string, object> };
      const [keyId, key] = Object.entries(body.one_time_keys).find(([id]) => id.startsWith('signed_curve25519:'))!;
      keys.push(`${JSON.stringify(deviceId)}:${JSON.stringify(body.device_keys)}`);
      otks.push(`${JSON.stringify(deviceId)}:{${JSON.stringify(keyId)}:${JSON.stringify(key)}}`);
      await m.close();
    }
    users.push({ userId, deviceKeys: `{${keys.join(',')}}`, oneTimeKeys: `{${otks.join(',')}}` });
  }
  return users;
}

export interface ShareSoakFigures {
  devices: number;
  shares: number;
  toDeviceMessagesPerShare: number;
  rssAfterWarmupMiB: number;
  rssEndMiB: number;
  driftPercent: number;
  rssMiB: number[];
  seconds: number;
}

/** Share a room key with `devices` devices, `repeats` times (a new session each time). */
export async function runShareSoak(devices: number, repeats: number, warmupShares = 3): Promise<ShareSoakFigures> {
  const users = await recipients(devices, 10, 'soak.example');
  const m = await OlmMachine.open({ userId: '@bot:example.org', deviceId: 'BOT', store: { kind: 'memory' } });
  const ids = users.map((u) => u.userId);
  const body = (field: string, key: 'deviceKeys' | 'oneTimeKeys') => `{"${field}":{${users.map((u) => `${JSON.stringify(u.userId)}:${u[key]}`).join(',')}},"failures":{}}`;
  for (const r of await m.outgoingRequests()) await m.markRequestAsSent(r, r.type === 'keys_upload' ? '{"one_time_key_counts":{"signed_curve25519":50}}' : '{}');
  await m.updateTrackedUsers(ids);
  for (const r of await m.outgoingRequests()) await m.markRequestAsSent(r, r.type === 'keys_query' ? body('device_keys', 'deviceKeys') : '{}');
  const claim = await m.getMissingSessions(ids);
  if (claim) await m.markRequestAsSent(claim, body('one_time_keys', 'oneTimeKeys'));
  const start = performance.now();
  const rssMiB: number[] = [];
  let warm = 0;
  let perShare = 0;
  for (let i = 0; i < repeats; i++) {
    await m.discardRoomKey('!big:example.org');
    const { requests } = await m.shareRoomKey('!big:example.org', ids);
    perShare = 0;
    for (const r of requests) {
      perShare += Object.values(JSON.parse(r.body).messages as Record<string, object>).reduce((n, d) => n + Object.keys(d).length, 0);
      await m.markRequestAsSent(r, '{}');
    }
    if (i + 1 === warmupShares) warm = await rss();
    if (i + 1 >= warmupShares) rssMiB.push(mib(await rss()));
  }
  const end = await rss();
  await m.close();
  return {
    devices,
    shares: repeats,
    toDeviceMessagesPerShare: perShare,
    rssAfterWarmupMiB: mib(warm),
    rssEndMiB: mib(end),
    driftPercent: Math.round(((end - warm) / warm) * 1000) / 10,
    rssMiB,
    seconds: Math.round((performance.now() - start) / 100) / 10,
  };
}
