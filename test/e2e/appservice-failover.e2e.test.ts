// Scenario: two bridge processes (test/e2e/appservice-failover-child.ts) on one PostgreSQL
// database behind one registration URL. The first serves; the second waits in
// AppserviceCrypto.open for the appservice's lease and binds the port once it holds it. While a
// js-sdk user's message and its room-key share to 50 puppets arrive, the serving process is
// killed with SIGKILL in the middle of handing the transaction to its bridge code; Synapse
// retries the transaction until the second process serves. Every puppet decrypts the message
// and the next one; the bridge saw the message once, or twice with the second marked as a
// redelivery.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPostgres, type TestPostgres } from '../helpers/postgres';
import type { FromBridge, ToBridge } from './appservice-failover-child';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { APPSERVICE_EXPERIMENTAL_FEATURES, appserviceRegistration, startSynapse, type Homeserver } from './synapse';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

type Delivery = Extract<FromBridge, { type: 'event' }>;
/** A command without its id. */
type Command = { [K in ToBridge['type']]: Omit<Extract<ToBridge, { type: K }>, 'id'> }[ToBridge['type']];

/** One bridge process and what it reported. */
class BridgeProcess {
  readonly messages: FromBridge[] = [];
  private output = '';
  private nextId = 0;
  private readonly replies = new Map<number, (m: Extract<FromBridge, { type: 'reply' }>) => void>();
  readonly exited: Promise<unknown>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.on('message', (m: FromBridge) => {
      this.messages.push(m);
      if (m.type === 'reply') this.replies.get(m.id)?.(m);
    });
    child.stdout?.setEncoding('utf8').on('data', (c: string) => (this.output += c));
    child.stderr?.setEncoding('utf8').on('data', (c: string) => (this.output += c));
    this.exited = new Promise((r) => child.on('exit', r));
  }

  tail(): string {
    return this.output.split('\n').slice(-40).join('\n');
  }

  said(type: FromBridge['type'], timeoutMs: number): Promise<true> {
    return waitFor(`${this.name} to say ${type}`, () => (this.messages.some((m) => m.type === type) ? true : undefined), timeoutMs);
  }

  deliveries(eventId: string): Delivery[] {
    return this.messages.filter((m): m is Delivery => m.type === 'event' && m.eventId === eventId && !m.late);
  }

  async call<T = unknown>(m: Command): Promise<T> {
    const id = this.nextId++;
    const reply = await new Promise<Extract<FromBridge, { type: 'reply' }>>((resolve) => {
      this.replies.set(id, resolve);
      this.child.send({ ...m, id });
    });
    if (reply.error !== undefined) throw new Error(`${this.name}: ${reply.error}`);
    return reply.value as T;
  }
}

let hs: Homeserver;
let pg: TestPostgres | undefined;
let registration: Record<string, unknown>;
let asPort: number;
const processes: BridgeProcess[] = [];
const cleanup: Array<() => Promise<void>> = [];

beforeAll(async () => {
  pg = startPostgres();
  asPort = await freePort();
  registration = appserviceRegistration({
    id: 'mcn-e2e-failover',
    url: `http://127.0.0.1:${asPort}`,
    senderLocalpart: 'failoverbot',
    userRegex: '@puppet_.*:localhost',
  });
  hs = await startSynapse({ appservices: [registration], extraConfig: { experimental_features: APPSERVICE_EXPERIMENTAL_FEATURES } });
}, 120_000);
afterAll(async () => {
  for (const p of processes) {
    p.child.kill('SIGKILL');
    await p.exited;
  }
  for (const f of cleanup.splice(0).reverse()) await f();
  await hs?.stop();
  pg?.stop();
});
beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    for (const p of processes) console.error(`--- ${p.name} ---\n${p.tail()}`);
    console.error(`--- Synapse ---\n${hs.logTail(120)}`);
  });
});

async function startBridge(name: string): Promise<BridgeProcess> {
  const root = await mkdtemp(join(tmpdir(), `mcn-failover-${name}-`));
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const child = fork(join(__dirname, 'appservice-failover-child.ts'), [], {
    execArgv: ['--import', 'tsx'],
    cwd: join(__dirname, '..', '..'),
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    env: {
      ...process.env,
      BRIDGE_HS: hs.baseUrl,
      BRIDGE_REGISTRATION: JSON.stringify(registration),
      BRIDGE_ROOT: root,
      BRIDGE_POSTGRES: pg!.url,
      BRIDGE_PORT: String(asPort),
    },
  });
  const bridge = new BridgeProcess(name, child);
  processes.push(bridge);
  return bridge;
}

describe('two bridge processes on one PostgreSQL database', () => {
  it('the standby takes over after a SIGKILL during a 50-puppet share: every puppet decrypts, the bridge sees the message once or redelivered', async (ctx) => {
    if (!pg) return ctx.skip();
    const first = await startBridge('bridge 1');
    await first.said('serving', 60_000);
    const second = await startBridge('bridge 2');
    await second.said('standby', 60_000);
    expect(second.messages.some((m) => m.type === 'serving')).toBe(false);

    const alice = await JsSdkUser.start(hs.baseUrl, await hs.registerUser('failover_alice'));
    cleanup.push(() => alice.stop());
    const puppets = Array.from({ length: 50 }, (_, i) => `@puppet_f${i}:localhost`);
    await first.call({ type: 'puppets', puppets });
    const roomId = await alice.createEncryptedRoom([], 'failover');
    await Promise.all(puppets.map((p) => alice.client.invite(roomId, p)));
    await first.call({ type: 'join', puppets, roomId });
    for (const p of puppets) await alice.waitForMember(roomId, p);

    // The first process holds its bridge handler on the user's message; it is killed there,
    // after the transaction was handed over and before it was recorded as processed.
    await first.call({ type: 'slow', sender: alice.user.userId, ms: 120_000 });
    const during = await alice.sendText(roomId, 'during the failover');
    await waitFor('bridge 1 to be handed the message', () => (first.deliveries(during).length ? true : undefined), 60_000);
    const killedAt = Date.now();
    first.child.kill('SIGKILL');
    await first.exited;

    await second.said('serving', 60_000);
    console.log(`failover: bridge 2 served ${((Date.now() - killedAt) / 1000).toFixed(1)} s after the SIGKILL`);
    await waitFor('bridge 2 to be handed the message', () => (second.deliveries(during).length ? true : undefined), 120_000);
    for (const p of puppets) {
      const got = await waitFor(`${p} to decrypt the message`, async () => {
        const r = await second.call<{ kind: string; body?: string }>({ type: 'decrypt', puppet: p, roomId, eventId: during });
        return r.kind === 'decrypted' ? r : undefined;
      }, 30_000);
      expect(got.body).toBe('during the failover');
    }

    // The conversation goes on with the second process.
    const after = await alice.sendText(roomId, 'after the failover');
    await waitFor('bridge 2 to be handed the next message', () => (second.deliveries(after).length ? true : undefined), 60_000);
    for (const p of puppets) {
      const got = await waitFor(`${p} to decrypt the next message`, async () => {
        const r = await second.call<{ kind: string; body?: string }>({ type: 'decrypt', puppet: p, roomId, eventId: after });
        return r.kind === 'decrypted' ? r : undefined;
      }, 30_000);
      expect(got.body).toBe('after the failover');
    }

    // Handed over once by the first process, once more by the second, marked as a redelivery.
    const seen = [...first.deliveries(during), ...second.deliveries(during)];
    expect(seen.map((d) => d.redelivery)).toEqual([false, true]);
    expect(second.deliveries(after).map((d) => d.redelivery)).toEqual([false]);
  }, 400_000);
});
