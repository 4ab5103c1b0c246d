/**
 * Many devices in one process, as a bridge hosts one device per puppet: `count` machines open
 * at once, each on its own SQLite store, each sharing a room key (with the next puppet) and
 * decrypting a message (from the previous one). Threads must stay bounded: every machine runs
 * on the one shared tokio runtime, none brings threads of its own.
 *
 * Shared by the vitest suite (a few dozen machines) and `npm run reliability` (1,000).
 */
import { readdirSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestDevice, TestHomeserver } from '../../src/testing';

export interface ManyFigures {
  machines: number;
  /** OS threads of the process: before the first open, with every machine open and used, after closing them all. */
  threadsBefore: number;
  threadsPeak: number;
  threadsOpen: number;
  threadsAfterClose: number;
  /** Resident memory per open machine, KiB (RSS with all open and used, minus before, over count). */
  rssPerMachineKiB: number;
  rssBeforeMiB: number;
  rssOpenMiB: number;
  rssAfterCloseMiB: number;
  /** Mean time to open a machine and upload its keys, and to close one, ms. */
  openMs: number;
  closeMs: number;
  /** Messages decrypted by their recipient (must equal machines). */
  decrypted: number;
  failures: string[];
}

const threads = () => readdirSync('/proc/self/task').length;
const mib = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;

async function settle() {
  global.gc?.();
  await new Promise((r) => setTimeout(r, 50));
}

export async function runManyMachines(count: number): Promise<ManyFigures> {
  const dir = mkdtempSync(join(tmpdir(), 'mcn-many-'));
  const hs = new TestHomeserver();
  const user = (i: number) => `@puppet${i}:example.org`;
  const room = (i: number) => `!puppet${i}:example.org`;
  const failures: string[] = [];
  await settle();
  const threadsBefore = threads();
  const rssBefore = process.memoryUsage().rss;
  let threadsPeak = threadsBefore;
  const sample = () => (threadsPeak = Math.max(threadsPeak, threads()));

  const devices: TestDevice[] = [];
  let start = performance.now();
  for (let i = 0; i < count; i++) {
    devices.push(await TestDevice.create(hs, user(i), 'PUPPET', { kind: 'sqlite', path: join(dir, `p${i}`) }));
    if (i % 50 === 0) sample();
  }
  const openMs = (performance.now() - start) / count;

  // Puppet i shares a key with puppet i+1 and sends it a message; 32 puppets at a time.
  const events = new Array(count);
  for (let at = 0; at < count; at += 32) {
    await Promise.all(
      devices.slice(at, at + 32).map(async (d, k) => {
        const i = at + k;
        const next = user((i + 1) % count);
        events[i] = await d.sendMessage(room(i), [d.userId, next], { msgtype: 'm.text', body: `from ${i}` });
      }),
    );
    sample();
  }
  let decrypted = 0;
  for (let at = 0; at < count; at += 32) {
    await Promise.all(
      devices.slice(at, at + 32).map(async (d, k) => {
        const i = at + k;
        const from = (i - 1 + count) % count;
        await d.sync();
        const out = await d.machine.decryptRoomEvent(events[from], room(from)).catch((e: Error) => {
          failures.push(`puppet ${i}: ${e.message}`);
          return null;
        });
        if ((out?.event.content as { body?: string } | undefined)?.body === `from ${from}`) decrypted++;
      }),
    );
    sample();
  }
  await settle();
  const threadsOpen = threads();
  const rssOpen = process.memoryUsage().rss;

  start = performance.now();
  for (const d of devices) await d.machine.close();
  const closeMs = (performance.now() - start) / count;
  devices.length = 0;
  await settle();
  const figures: ManyFigures = {
    machines: count,
    threadsBefore,
    threadsPeak,
    threadsOpen,
    threadsAfterClose: threads(),
    rssPerMachineKiB: Math.round((rssOpen - rssBefore) / count / 1024),
    rssBeforeMiB: mib(rssBefore),
    rssOpenMiB: mib(rssOpen),
    rssAfterCloseMiB: mib(process.memoryUsage().rss),
    openMs: Math.round(openMs * 10) / 10,
    closeMs: Math.round(closeMs * 100) / 100,
    decrypted,
    failures,
  };
  rmSync(dir, { recursive: true, force: true });
  return figures;
}
