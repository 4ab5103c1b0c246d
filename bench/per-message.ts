/**
 * Per-message encryption after a share in a big room (issue 23): the sender shares a room key
 * with N devices (untimed), then encrypts M messages one after the other, each timed on its
 * own; the recipient then decrypts every one (untimed, a check). Each (store, repetition) runs
 * in a new process, stores taking turns.
 *
 *   npx tsx bench/per-message.ts [--n 10000] [--messages 100] [--stores memory,sqlite,postgres]
 *                                [--reps 3] [--out bench/results/per-message]
 *
 * Needs the release addon (`npm run build:native:release`) and the benchmark binary for the
 * fixtures (`MCN_BENCH_RUST_BINARY`, else built with cargo). `postgres` runs on a server of its
 * own with PostgreSQL's default durability (every commit flushed), as in `npm run bench`.
 * Prints the median µs per message against the target (100 µs) as measured/target, and the
 * first message apart (the one that leaves the store's marker, see native/src/store/outbound.rs).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { generateFixtures, readFixtures, responseBody, type Fixtures } from './fixtures';
import { matrixCryptoNode, type StoreKind } from './impls';
import { summarise } from './measure';
import { RECIPIENT, SENDER } from './scenario';

const TARGET_US = 100;
const ROOM = '!per-message:bench.example';
const root = resolve(__dirname, '..');

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** One repetition on one store: µs of each message, in order. */
async function once(store: StoreKind, fixtures: Fixtures, messages: number, workdir: string): Promise<number[]> {
  const dir = mkdtempSync(join(workdir, `${store}-`));
  const sender = await matrixCryptoNode.open(store, join(dir, 'sender'), SENDER.userId, SENDER.deviceId);
  const recipient = await matrixCryptoNode.open(store, join(dir, 'recipient'), RECIPIENT.userId, RECIPIENT.deviceId);
  try {
    const own = await sender.uploadKeys();
    const theirs = await recipient.uploadKeys();
    const deviceKeys = new Map(fixtures.users.map((u) => [u.userId, u.deviceKeys]));
    const oneTimeKeys = new Map(fixtures.users.map((u) => [u.userId, u.oneTimeKeys]));
    deviceKeys.set(SENDER.userId, own.deviceKeys);
    deviceKeys.set(RECIPIENT.userId, theirs.deviceKeys);
    oneTimeKeys.set(RECIPIENT.userId, theirs.oneTimeKeys);
    const users = [...fixtures.users.map((u) => u.userId), RECIPIENT.userId, SENDER.userId];
    await sender.trackUsers(users);
    for (const q of await sender.keyQueries()) await q.send(responseBody('device_keys', q.users, deviceKeys));
    const claim = await sender.missingSessions(users);
    if (claim) await claim.send(responseBody('one_time_keys', claim.users, oneTimeKeys));
    const shared = await sender.share(ROOM, users, 'all');
    await shared.markSent();
    const toRecipient: object[] = [];
    for (const r of shared.requests) {
      if (r.eventType !== 'm.room.encrypted' || !r.body.includes(RECIPIENT.userId)) continue;
      const content = (JSON.parse(r.body) as { messages: Record<string, Record<string, object>> }).messages[RECIPIENT.userId]?.[RECIPIENT.deviceId];
      if (content) toRecipient.push({ type: 'm.room.encrypted', sender: SENDER.userId, content });
    }
    await recipient.receiveToDevice(toRecipient);

    const us: number[] = [];
    const events: object[] = [];
    for (let i = 0; i < messages; i++) {
      const start = performance.now();
      const content = await sender.encrypt(ROOM, { msgtype: 'm.text', body: `message ${i}` });
      us.push((performance.now() - start) * 1000);
      events.push({ type: 'm.room.encrypted', sender: SENDER.userId, event_id: `$m${i}`, origin_server_ts: 1, room_id: ROOM, content });
    }
    for (const [i, e] of events.entries()) {
      const text = await recipient.decrypt(e, ROOM);
      if (!text.includes(`message ${i}`)) throw new Error(`the recipient decrypted something else: ${text}`);
    }
    return us;
  } finally {
    await sender.close();
    await recipient.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  if (process.argv[2] === '--child') {
    const [, , , store, fixturesPath, messages, workdir] = process.argv;
    const us = await once(store as StoreKind, readFixtures(fixturesPath!), Number(messages), workdir!);
    process.stdout.write(`${JSON.stringify(us)}\n`);
    return;
  }
  const n = Number(option('--n') ?? 10_000);
  const messages = Number(option('--messages') ?? 100);
  const stores = (option('--stores') ?? 'memory,sqlite,postgres').split(',') as StoreKind[];
  const reps = Number(option('--reps') ?? 3);
  const out = resolve(option('--out') ?? join(root, 'bench', 'results', 'per-message'));
  const workdir = mkdtempSync(join(tmpdir(), 'mcn-per-message-'));
  const rust =
    process.env.MCN_BENCH_RUST_BINARY ??
    (execFileSync('cargo', ['build', '-p', 'matrix-crypto-node-bench', '--ignore-rust-version', '--release', '--target', 'x86_64-unknown-linux-gnu'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] }),
    join(root, 'target', 'x86_64-unknown-linux-gnu', 'release', 'matrix-crypto-node-bench'));
  const fixturesPath = join(workdir, `fixtures-${n}.json`);
  generateFixtures(rust, n, 1, fixturesPath);
  const pgDir = stores.includes('postgres') && !process.env.MCN_BENCH_POSTGRES ? mkdtempSync(join(tmpdir(), 'mcn-per-message-pg-')) : undefined;
  const script = join(root, 'scripts', 'postgres.sh');
  if (pgDir) process.env.MCN_BENCH_POSTGRES = execFileSync('bash', [script, 'start', pgDir], { encoding: 'utf8', env: { ...process.env, MCN_POSTGRES_DURABLE: '1' } }).trim();
  const runs: Record<string, number[][]> = {};
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const store of stores) {
        const child = spawnSync(process.execPath, ['--import', 'tsx', __filename, '--child', store, fixturesPath, String(messages), workdir], {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'inherit'],
          maxBuffer: 64 << 20,
        });
        if (child.status !== 0) throw new Error(`${store} repetition ${rep + 1} failed (${child.status ?? child.signal})`);
        (runs[store] ??= []).push(JSON.parse(child.stdout.trim().split('\n').pop()!) as number[]);
        process.stderr.write(`${store} repetition ${rep + 1}/${reps} done\n`);
      }
    }
  } finally {
    if (pgDir) execFileSync('bash', [script, 'stop', pgDir], { stdio: 'inherit' });
    rmSync(workdir, { recursive: true, force: true });
  }

  const lines = [
    `Per-message encryption after a share with ${n.toLocaleString('en')} devices: ${messages} messages per repetition, ${reps} repetitions, µs.`,
    '',
    '| store | median of each repetition\'s median (min–max) | measured/target (100 µs) | first message, median (min–max) | mean of messages 2.. |',
    '| --- | ---: | ---: | ---: | ---: |',
  ];
  const summary: Record<string, object> = {};
  for (const store of stores) {
    const rs = runs[store]!;
    const medians = summarise(rs.map((us) => summarise(us.slice(1)).median));
    const first = summarise(rs.map((us) => us[0]!));
    const mean = summarise(rs.map((us) => us.slice(1).reduce((a, b) => a + b, 0) / (us.length - 1)));
    summary[store] = { medianUs: medians, firstUs: first, meanUs: mean, repetitions: rs };
    const f = (x: number) => x.toFixed(1);
    lines.push(`| ${store} | ${f(medians.median)} (${f(medians.min)}–${f(medians.max)}) | ${(medians.median / TARGET_US).toFixed(2)} | ${f(first.median)} (${f(first.min)}–${f(first.max)}) | ${f(mean.median)} |`);
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'latest.json'), `${JSON.stringify({ n, messages, reps, targetUs: TARGET_US, command: `npx tsx bench/per-message.ts ${process.argv.slice(2).join(' ')}`.trim(), stores: summary }, null, 2)}\n`);
  writeFileSync(join(out, 'latest.md'), `${lines.join('\n')}\n`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
