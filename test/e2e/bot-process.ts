/**
 * A bot in its own process, for the restart scenario: an {@link EncryptedClient} on a SQLite store
 * that syncs in a loop, joins rooms it is invited to, and obeys its parent over the IPC channel.
 * Stop it with SIGTERM: it finishes what it is doing, closes the store and exits 0.
 *
 * Started by {@link BotProcess.start} (parent side, in the same file) with
 * `node --import tsx test/e2e/bot-process.ts`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EncryptedClient, type TimelineEvent } from '../../src/client';
import { waitFor } from './js-sdk-user';

/** How the child is configured (passed as JSON in `BOT_PROCESS_CONFIG`). */
export interface BotProcessConfig {
  /** Homeserver base URL. */
  baseUrl: string;
  /** The device's access token. */
  accessToken: string;
  /** The SQLite store folder. */
  storePath: string;
  /** Where the sync token is kept between runs. */
  stateFile: string;
  /**
   * The account password: when given, the bot cross-signs its device on start-up
   * (`crossSigning: { bootstrap: 'if-missing' }`, this password for user-interactive auth).
   */
  crossSigningPassword?: string;
}

/** A timeline event as the child reports it. */
export interface ReportedEvent {
  /** Room event id. */
  eventId: string;
  /** How decryption went. */
  kind: TimelineEvent['kind'];
  /** The clear `body`, for decrypted messages. */
  body?: unknown;
  /** The sender's device id, for decrypted messages. */
  senderDevice?: string | null;
  /** The DecryptionError code, for undecryptable events. */
  code?: string;
}

/** An HTTP request the child's transport made. */
export interface ReportedRequest {
  /** HTTP method. */
  method: string;
  /** URL path. */
  path: string;
  /** For `keys/upload`: whether device keys were in the body. */
  deviceKeys?: boolean;
  /** For `keys/upload`: how many one-time keys were in the body. */
  oneTimeKeys?: number;
  /** For `keys/upload`: how many fallback keys were in the body. */
  fallbackKeys?: number;
}

type ToChild = { op: 'send'; id: number; roomId: string; body: string } | { op: 'history'; id: number; roomId: string };

type FromChild =
  | { op: 'ready'; userId: string; deviceId: string; curve25519: string; ed25519: string }
  | { op: 'timeline'; events: ReportedEvent[] }
  | { op: 'request'; request: ReportedRequest }
  | { op: 'reply'; id: number; result?: unknown; error?: string }
  | { op: 'fatal'; error: string };

function report(event: TimelineEvent): ReportedEvent {
  const r: ReportedEvent = { eventId: event.event.event_id ?? '', kind: event.kind };
  if (event.kind === 'decrypted') {
    r.body = event.decrypted.event.content.body;
    r.senderDevice = event.decrypted.senderDevice;
  }
  if (event.kind === 'undecryptable') r.code = event.error.code;
  return r;
}

async function child(): Promise<void> {
  const config = JSON.parse(process.env.BOT_PROCESS_CONFIG ?? '') as BotProcessConfig;
  const send = (m: FromChild): void => {
    process.send?.(m);
  };
  let syncToken: string | undefined;
  try {
    syncToken = (JSON.parse(readFileSync(config.stateFile, 'utf8')) as { syncToken?: string }).syncToken;
  } catch {
    // first run
  }
  const observingFetch: typeof fetch = async (input, init) => {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    const req: ReportedRequest = { method: init?.method ?? 'GET', path: url.pathname };
    if (url.pathname.endsWith('/keys/upload') && typeof init?.body === 'string') {
      const body = JSON.parse(init.body) as Record<string, Record<string, unknown> | undefined>;
      req.deviceKeys = body.device_keys !== undefined;
      req.oneTimeKeys = Object.keys(body.one_time_keys ?? {}).length;
      req.fallbackKeys = Object.keys(body.fallback_keys ?? {}).length;
    }
    send({ op: 'request', request: req });
    return fetch(input, init);
  };
  const client = await EncryptedClient.open({
    baseUrl: config.baseUrl,
    accessToken: config.accessToken,
    store: { kind: 'sqlite', path: config.storePath },
    transport: { fetch: observingFetch },
    ...(syncToken !== undefined ? { syncToken } : {}),
    ...(config.crossSigningPassword !== undefined
      ? { crossSigning: { bootstrap: 'if-missing' as const, auth: { type: 'password' as const, password: config.crossSigningPassword } } }
      : {}),
  });
  await client.processOutgoingRequests();
  send({ op: 'ready', userId: client.userId, deviceId: client.deviceId, ...client.machine.identityKeys });

  const abort = new AbortController();
  const busy = new Set<Promise<void>>();
  const track = (p: Promise<void>): void => {
    busy.add(p);
    void p.finally(() => busy.delete(p));
  };
  process.on('SIGTERM', () => abort.abort());
  // The parent died without stopping us: stop too.
  process.on('disconnect', () => abort.abort());
  process.on('message', (m: ToChild) => {
    track(
      (async () => {
        try {
          if (m.op === 'send') {
            const { eventId } = await client.sendEncrypted(m.roomId, 'm.room.message', { msgtype: 'm.text', body: m.body });
            send({ op: 'reply', id: m.id, result: eventId });
          } else {
            const page = await client.transport.roomMessages(m.roomId, undefined, 'b', 100);
            const events = await Promise.all(page.chunk.map((e) => client.decryptEvent(m.roomId, e)));
            send({ op: 'reply', id: m.id, result: events.map(report) });
          }
        } catch (err) {
          send({ op: 'reply', id: m.id, error: err instanceof Error ? err.stack : String(err) });
        }
      })(),
    );
  });

  // Events whose key had not arrived yet: tried again after every sync.
  let pending: TimelineEvent[] = [];
  while (!abort.signal.aborted) {
    let result;
    try {
      result = await client.syncOnce({ timeoutMs: 1000, signal: abort.signal });
    } catch (err) {
      if (abort.signal.aborted) break;
      throw err;
    }
    writeFileSync(config.stateFile, JSON.stringify({ syncToken: client.syncToken }));
    for (const roomId of Object.keys(result.sync.rooms?.invite ?? {})) await client.transport.joinRoom(roomId);
    const retried = await Promise.all(pending.map((e) => client.decryptEvent(e.roomId, e.event)));
    const now = [...retried.filter((e) => e.kind === 'decrypted'), ...result.timeline];
    pending = [...retried, ...result.timeline].filter((e) => e.kind === 'undecryptable');
    if (now.length > 0) send({ op: 'timeline', events: now.map(report) });
  }
  await Promise.all(busy);
  await client.close();
  process.exit(0);
}

/** The parent's handle on a bot process. */
export class BotProcess {
  /** Every timeline event the child reported, latest report of an event last. */
  readonly timeline: ReportedEvent[] = [];
  /** Every HTTP request the child's transport made. */
  readonly requests: ReportedRequest[] = [];
  /** The child's output and errors, for failure reports. */
  private readonly log: string[] = [];
  private readonly replies = new Map<number, (m: Extract<FromChild, { op: 'reply' }>) => void>();
  private nextId = 1;
  private exit: Promise<number | null>;
  private ready: Extract<FromChild, { op: 'ready' }> | undefined;

  private constructor(private readonly child: ChildProcess, readonly name: string) {
    child.stdout?.setEncoding('utf8').on('data', (c: string) => this.log.push(c));
    child.stderr?.setEncoding('utf8').on('data', (c: string) => this.log.push(c));
    child.on('message', (m: FromChild) => {
      if (m.op === 'ready') this.ready = m;
      else if (m.op === 'timeline') this.timeline.push(...m.events);
      else if (m.op === 'request') this.requests.push(m.request);
      else if (m.op === 'reply') this.replies.get(m.id)?.(m);
      else this.log.push(`fatal: ${m.error}\n`);
    });
    this.exit = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  /** Starts a bot process and waits until it uploaded its keys. */
  static async start(name: string, config: BotProcessConfig): Promise<BotProcess> {
    const child = fork(join(__dirname, 'bot-process.ts'), [], {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, BOT_PROCESS_CONFIG: JSON.stringify(config), BOT_PROCESS_CHILD: '1' },
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const p = new BotProcess(child, name);
    let exited = false;
    void p.exit.then(() => (exited = true));
    await waitFor(`${name} ready`, () => {
      if (exited) throw new Error(`${name} exited during start-up:\n${p.logTail()}`);
      return p.ready;
    }, 30_000);
    return p;
  }

  /** The identity the child reported when it started. */
  get identity(): Extract<FromChild, { op: 'ready' }> {
    if (!this.ready) throw new Error('not ready');
    return this.ready;
  }

  private call<T>(m: ToChild extends infer M ? (M extends unknown ? Omit<M, 'id'> : never) : never): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.replies.set(id, (r) => {
        this.replies.delete(id);
        if (r.error !== undefined) reject(new Error(`${this.name}: ${r.error}`));
        else resolve(r.result as T);
      });
      this.child.send({ ...m, id });
    });
  }

  /** Has the bot send an encrypted text message; resolves with the event id. */
  send(roomId: string, body: string): Promise<string> {
    return this.call({ op: 'send', roomId, body });
  }

  /** Has the bot read the room's last 100 events with `/messages` and decrypt them. */
  history(roomId: string): Promise<ReportedEvent[]> {
    return this.call({ op: 'history', roomId });
  }

  /** Waits until the bot's sync loop reported the event decrypted. */
  async waitForDecrypted(eventId: string, timeoutMs = 20_000): Promise<ReportedEvent> {
    return waitFor(`${this.name} to decrypt ${eventId}`, () =>
      this.timeline.find((e) => e.eventId === eventId && e.kind === 'decrypted'), timeoutMs);
  }

  /** SIGTERM, then waits for the exit code. */
  async stop(): Promise<number | null> {
    this.child.kill('SIGTERM');
    return this.exit;
  }

  /** The child's output. */
  logTail(lines = 40): string {
    return this.log.join('').split('\n').slice(-lines).join('\n');
  }
}

if (process.env.BOT_PROCESS_CHILD === '1' && process.send) {
  child().catch((err: unknown) => {
    process.send?.({ op: 'fatal', error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    console.error(err);
    process.exit(1);
  });
}
