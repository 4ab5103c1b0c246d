/**
 * `npx tsx bench/appservice.ts`: AppserviceCrypto at bridge scale, in process, against the fake
 * appservice homeserver of the unit tests (test/appservice-fake.ts: the in-process
 * TestHomeserver behind a fetch), so the figures are the library's and the stores' cost, not
 * the network's.
 *
 *   npx tsx bench/appservice.ts [--users 10000] [--active 1000] [--cap 100] [--batch 50] [--out FILE]
 *
 * Phases (each timed on its own):
 * 1. create: `deviceFor` for every bridged user (MSC4190 PUT, machine and SQLite store created,
 *    keys uploaded), 8 at a time; the LRU closes machines beyond the cap.
 * 2. transactions: a remote user shares a room key with the `active` puppets; the to-device
 *    events reach them in transactions of `batch` devices (with their one-time-key counts).
 * 3. decrypt-reopen: every active puppet decrypts one event, round robin, so with a cap below
 *    `active` each decryption reopens a closed machine from its store.
 * 4. decrypt-open: one puppet decrypts 100 events (the rotation period) in a row (its machine stays open).
 * Peak RSS is the process's maximum resident set size at the end (`process.resourceUsage()`); it
 * includes the fake homeserver, which holds every device's keys in the same process.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppserviceCrypto } from '../src/index';
import { TestDevice } from '../src/testing';
import { FakeAppserviceHomeserver, registration } from '../test/appservice-fake';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

async function eachLimited<T>(items: T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await task(item);
    }),
  );
}

const rssMiB = () => Math.round(process.memoryUsage().rss / 2 ** 20);
const heapMiB = () => Math.round(process.memoryUsage().heapUsed / 2 ** 20);

async function main(): Promise<void> {
  const users = option('--users', 10_000);
  const active = Math.min(users, option('--active', 1000));
  const cap = option('--cap', 100);
  const batch = option('--batch', 50);
  const outIdx = process.argv.indexOf('--out');
  const out = outIdx >= 0 ? process.argv[outIdx + 1] : undefined;
  const root = await mkdtemp(join(tmpdir(), 'mcn-as-bench-'));
  const fake = new FakeAppserviceHomeserver();
  const crypto = await AppserviceCrypto.open({
    homeserverUrl: 'http://hs.invalid',
    registration,
    storeRoot: root,
    limits: { maxOpenMachines: cap },
    transport: { fetch: fake.fetch, maxRetries: 0 },
    // Transactions alone are measured: no inbox drain runs beside them.
    inboxDrain: false,
  });
  const puppets = Array.from({ length: users }, (_, i) => `@puppet_${i}:example.org`);
  const figures: Record<string, number | string> = { users, active, cap, batch, node: process.version };
  const ROOM = '!bench:example.org';
  try {
    let t = performance.now();
    let done = 0;
    await eachLimited(puppets, 8, async (p) => {
      await crypto.deviceFor(p);
      // The fake's logs would otherwise count in the RSS; its key store (50 one-time keys per
      // device, as JSON) still does.
      fake.hs.requestLog.length = 0;
      fake.calls.length = 0;
      if (++done % 1000 === 0) console.error(`created ${done}/${users} devices, RSS ${rssMiB()} MiB, JS heap ${heapMiB()} MiB`);
    });
    const createMs = performance.now() - t;
    figures.createPerDeviceMs = +(createMs / users).toFixed(2);
    figures.openMachinesAfterCreate = crypto.openMachineCount;
    // The JS heap holds the fake homeserver's copy of every device's keys; the rest of the RSS
    // is mostly native (machines, SQLite, allocator).
    figures.rssAfterCreateMiB = rssMiB();
    figures.heapAfterCreateMiB = heapMiB();

    const alice = await TestDevice.create(fake.hs, '@alice:example.org', 'ALICE');
    const activePuppets = puppets.slice(0, active);
    const { requests } = await alice.prepareRoom(ROOM, ['@alice:example.org', ...activePuppets]);
    for (const r of requests) await alice.send(r);
    const events = [];
    for (let i = 0; i < 100; i++) events.push(await alice.encrypt(ROOM, { msgtype: 'm.text', body: `message ${i}` }));

    const devices = activePuppets.map((userId) => ({ userId, deviceId: crypto.deviceIdOf(userId)! }));
    t = performance.now();
    let txns = 0;
    let toDevice = 0;
    for (let i = 0; i < devices.length; i += batch) {
      const body = fake.transaction(devices.slice(i, i + batch));
      toDevice += (body['de.sorunome.msc2409.to_device'] ?? []).length;
      const result = await crypto.processTransaction(`bench-${i}`, body);
      if (result.devices.some((d) => d.result.roomKeyUpdates.length !== 1)) throw new Error('a puppet did not get the room key');
      txns++;
    }
    const txnMs = performance.now() - t;
    figures.transactions = txns;
    figures.transactionsPerSecond = +((txns * 1000) / txnMs).toFixed(1);
    figures.toDeviceEventsPerSecond = +((toDevice * 1000) / txnMs).toFixed(1);

    t = performance.now();
    for (const [i, p] of activePuppets.entries()) {
      const r = await crypto.decryptRoomEvent(p, ROOM, events[i % events.length]!);
      if (r.kind !== 'decrypted') throw new Error(`${p} could not decrypt`);
    }
    const reopenMs = performance.now() - t;
    figures.decryptReopenPerSecond = +((active * 1000) / reopenMs).toFixed(1);
    figures.openMachinesAfterDecrypt = crypto.openMachineCount;

    const one = activePuppets[0]!;
    await crypto.decryptRoomEvent(one, ROOM, events[0]!);
    t = performance.now();
    for (const e of events) {
      const r = await crypto.decryptRoomEvent(one, ROOM, e);
      if (r.kind !== 'decrypted') throw new Error('decryption failed');
    }
    const openMs = performance.now() - t;
    figures.decryptOpenPerSecond = +((events.length * 1000) / openMs).toFixed(1);
    // A round-robin decryption is a reopen plus a decryption (plus the close of another machine).
    figures.reopenPerDeviceMs = +(reopenMs / active - openMs / events.length).toFixed(2);
    figures.peakRssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
    figures.heapAtEndMiB = heapMiB();
  } finally {
    await crypto.close();
    await rm(root, { recursive: true, force: true });
  }
  console.log(JSON.stringify(figures, null, 2));
  if (out) await writeFile(out, JSON.stringify(figures, null, 2) + '\n');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
