/**
 * Shared set-up of the end-to-end scenarios: one Synapse per test file, our bot as an
 * {@link EncryptedClient} (its device cross-signed), js-sdk users in strict mode (MSC4153), and
 * logs printed when a test fails.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { EncryptedClient, type TimelineEvent } from '../../src/client';
import type { StoreOptions } from '../../src/machine';
import type { WithheldPolicy } from '../../src/withheld';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { startSynapse, type Homeserver, type TestUser } from './synapse';

/** Something with a log worth printing when a test fails. */
export interface HasLog {
  /** Shown above the log. */
  readonly name: string;
  /** The last lines of the log. */
  logTail(lines?: number): string;
}

/** Per-file Synapse and log printing; call once at the top level of a test file. */
export function useHomeserver(): {
  hs: () => Homeserver;
  logs: (h: HasLog) => void;
  setup: (fn: () => Promise<void>, timeoutMs?: number) => void;
} {
  let hs: Homeserver | undefined;
  // Logs registered in a beforeAll hook belong to every test of the file; those registered in a
  // test, to that test only.
  const fileLogs: HasLog[] = [];
  const testLogs: HasLog[] = [];
  let inTest = false;
  beforeAll(async () => {
    hs = await startSynapse();
  });
  afterAll(async () => {
    await hs?.stop();
  });
  const print = (label: string, list: HasLog[]): void => {
    for (const h of list) console.error(`--- ${h.name} log tail (${label}) ---\n${h.logTail(40)}`);
    if (hs) console.error(`--- Synapse log tail (${label}) ---\n${hs.logTail(80)}`);
  };
  beforeEach((ctx) => {
    testLogs.length = 0;
    inTest = true;
    ctx.onTestFinished(() => {
      inTest = false;
    });
    ctx.onTestFailed(() => print(ctx.task.name, [...fileLogs, ...testLogs]));
  });
  return {
    hs: () => {
      if (!hs) throw new Error('Synapse is not running');
      return hs;
    },
    logs: (h) => (inTest ? testLogs : fileLogs).push(h),
    // A beforeAll hook that prints the logs when it fails.
    setup: (fn, timeoutMs) =>
      beforeAll(async () => {
        try {
          await fn();
        } catch (err) {
          print('setup', fileLogs);
          throw err;
        }
      }, timeoutMs),
  };
}

/** How {@link openBot} opens a bot. */
export interface BotOptions {
  /** The store; a memory store by default. */
  store?: StoreOptions;
  /** The withheld policy; the library's default when absent. */
  withheld?: WithheldPolicy;
  /**
   * Leave the device without a cross-signing signature. By default the bot bootstraps the
   * account's cross-signing identity (`bootstrap: 'if-missing'`, password auth) and signs its
   * device, as a strict (MSC4153) client requires before it shares room keys with it or
   * decrypts its messages. Only for tests that need an unsigned device, saying why.
   */
  unsigned?: boolean;
}

/**
 * Opens our side as an {@link EncryptedClient} for `user`'s device and uploads its keys; the
 * device is cross-signed unless `options.unsigned`.
 */
export async function openBot(hs: Homeserver, user: TestUser, options: BotOptions = {}): Promise<EncryptedClient> {
  const client = await EncryptedClient.open({
    baseUrl: hs.baseUrl,
    accessToken: user.accessToken,
    userId: user.userId,
    deviceId: user.deviceId,
    store: options.store ?? { kind: 'memory' },
    ...(options.withheld ? { withheld: options.withheld } : {}),
    ...(options.unsigned ? {} : { crossSigning: { bootstrap: 'if-missing' as const, auth: { type: 'password' as const, password: user.password } } }),
  });
  await client.processOutgoingRequests();
  return client;
}

/**
 * The participants of each test, each stopped after it (the last started first): js-sdk users
 * (their log printed if the test fails), our bots, temporary directories, and anything given to
 * `later`. Call once at the top level of a test file, with what {@link useHomeserver} returned.
 */
export function useParticipants(hs: () => Homeserver, logs: (h: HasLog) => void) {
  const cleanup: Array<() => Promise<unknown>> = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });
  const later = (f: () => Promise<unknown>): void => void cleanup.push(f);
  return {
    later,
    /**
     * A js-sdk user with a new account `localpart`, in strict mode like today's clients: its
     * account cross-signed and "exclude insecure devices" on (OnlySignedDevicesIsolationMode,
     * MSC4153; see {@link JsSdkUser.excludeInsecureDevices}), so it neither shares room keys with
     * devices their owner did not cross-sign nor decrypts their messages. `permissive: true`
     * leaves it in js-sdk's default mode (all devices, no cross-signing of its own), for a test
     * about a permissive client, which says why.
     */
    async jsUser(localpart: string, options: { permissive?: boolean } = {}): Promise<JsSdkUser> {
      const u = await JsSdkUser.start(hs().baseUrl, await hs().registerUser(localpart));
      logs({ name: `js-sdk ${u.user.userId}`, logTail: (n) => u.logTail(n) });
      later(() => u.stop());
      return options.permissive ? u : u.excludeInsecureDevices();
    },
    /**
     * Our {@link EncryptedClient} for `user`'s device, on a memory store unless `options` say
     * otherwise; nothing is sent yet (see {@link openBot} for a bot with its keys uploaded).
     */
    async client(user: TestUser, options: Partial<Parameters<typeof EncryptedClient.open>[0]> = {}): Promise<EncryptedClient> {
      const c = await EncryptedClient.open({
        baseUrl: hs().baseUrl,
        accessToken: user.accessToken,
        userId: user.userId,
        deviceId: user.deviceId,
        store: { kind: 'memory' },
        ...options,
      });
      later(() => c.close());
      return c;
    },
    /**
     * Our bot with a new account `localpart`, its device cross-signed unless `options.unsigned`,
     * on a memory store (see {@link openBot}).
     */
    async bot(localpart: string, options: Omit<BotOptions, 'store'> = {}): Promise<EncryptedClient> {
      const c = await openBot(hs(), await hs().registerUser(localpart), options);
      later(() => c.close());
      return c;
    },
    /** A new temporary directory, removed after the test. */
    async tempDir(prefix: string): Promise<string> {
      const dir = await mkdtemp(join(tmpdir(), prefix));
      later(() => rm(dir, { recursive: true, force: true }));
      return dir;
    },
  };
}

/** Every timeline event a bot saw in {@link syncUntil}, by client. */
const seen = new WeakMap<EncryptedClient, TimelineEvent[]>();

/**
 * Syncs `client` (short polls) until `check` finds what it wants among every timeline event the
 * client has seen so far. Undecryptable events are decrypted again after each sync, since their
 * key may come later.
 */
export async function syncUntil<T>(
  client: EncryptedClient,
  what: string,
  check: (timeline: TimelineEvent[]) => T | undefined,
  timeoutMs = 20_000,
): Promise<T> {
  let all = seen.get(client);
  if (!all) seen.set(client, (all = []));
  const items = all;
  return waitFor(
    `${client.userId}/${client.deviceId}: ${what}`,
    async () => {
      const { timeline } = await client.syncOnce({ timeoutMs: 300 });
      items.push(...timeline);
      for (let i = 0; i < items.length; i++) {
        const item = items[i]!;
        if (item.kind === 'undecryptable') items[i] = await client.decryptEvent(item.roomId, item.event);
      }
      return check(items);
    },
    timeoutMs,
  );
}

/** Syncs until the event arrived, decrypted or not. */
export function syncUntilEvent(client: EncryptedClient, eventId: string, timeoutMs = 20_000): Promise<TimelineEvent> {
  return syncUntil(client, `event ${eventId}`, (items) => items.find((i) => i.event.event_id === eventId), timeoutMs);
}

/** Syncs until the event is decrypted and returns it; fails with the last decryption error otherwise. */
export async function syncUntilDecrypted(
  client: EncryptedClient,
  eventId: string,
  timeoutMs = 20_000,
): Promise<Extract<TimelineEvent, { kind: 'decrypted' }>> {
  let last: TimelineEvent | undefined;
  try {
    return await syncUntil(
      client,
      `decrypted ${eventId}`,
      (items) => {
        const item = items.find((i) => i.event.event_id === eventId);
        last = item;
        return item?.kind === 'decrypted' ? item : undefined;
      },
      timeoutMs,
    );
  } catch (err) {
    const state = last ? (last.kind === 'undecryptable' ? `${last.error.code}: ${last.error.message}` : last.kind) : 'never arrived';
    throw new Error(`${(err as Error).message} (last state: ${state})`);
  }
}

/**
 * Keeps `client` syncing in the background (answering key requests, receiving keys) until the
 * returned function is called; that function rethrows the first error of the loop. Do not call
 * `syncOnce` on the client yourself meanwhile.
 */
export function keepSyncing(client: EncryptedClient): () => Promise<void> {
  const abort = new AbortController();
  const loop = (async () => {
    while (!abort.signal.aborted) {
      try {
        await client.syncOnce({ timeoutMs: 500, signal: abort.signal });
      } catch (err) {
        if (abort.signal.aborted) return;
        throw err;
      }
    }
  })();
  // Surfaced by the stop function; keep Node from reporting it as unhandled meanwhile.
  loop.catch(() => undefined);
  return async () => {
    abort.abort();
    await loop;
  };
}
