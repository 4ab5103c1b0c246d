// Scenario: an encrypting appservice (AppserviceCrypto behind serveAppservice) and a
// matrix-js-sdk user on a real Synapse. The appservice's puppets get devices through MSC4190,
// cross-signed by their users, their to-device events and key counts come in transactions
// (MSC4203 / MSC3202), and every request goes out masquerading as the puppet's device. The
// js-sdk users exclude insecure devices (MSC4153, OnlySignedDevicesIsolationMode), as Element does.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DecryptionFailureCode } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  AppserviceCrypto,
  serveAppservice,
  type AppserviceRegistration,
  type AppserviceServer,
  type AppserviceTimelineEvent,
  type RoomEvent,
} from '../../src/index';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { APPSERVICE_EXPERIMENTAL_FEATURES, appserviceRegistration, startSynapse, type Homeserver } from './synapse';

/** The appservice's own user (its registration's sender_localpart). */
const BOT = '@bridgebot:localhost';

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

/** The appservice process: a manager on a store root and its HTTP server on a fixed port. */
class Bridge {
  crypto!: AppserviceCrypto;
  server!: AppserviceServer;
  /** Every room event the bridge was handed, in order (decrypted where possible). */
  readonly events: AppserviceTimelineEvent[] = [];
  /** Events handed over again, decrypted, when a later transaction brought their key. */
  readonly late: AppserviceTimelineEvent[] = [];
  /** Every withheld notice a bridged device received, with the device's user. */
  readonly notices: Array<{ userId: string; code: string; sender: string }> = [];
  /** Transaction ids as the homeserver pushed them (retries included), and the answer. */
  readonly pushes: Array<{ txnId: string; ok: boolean }> = [];
  /**
   * Make the bridge's event handler fail once, for the next transaction carrying a room event
   * from this sender, so that transaction is answered 500. Keyed by sender: a transaction of an
   * earlier step that Synapse pushes late must not take the failure (Synapse would then queue
   * the next ones as catch-up transactions, which it sends without their to-device events).
   */
  failNextTransactionFrom: string | null = null;

  constructor(
    readonly hs: Homeserver,
    readonly registration: AppserviceRegistration,
    readonly port: number,
    readonly storeRoot: string,
    readonly maxOpenMachines = 100,
  ) {}

  async start(): Promise<void> {
    this.crypto = await AppserviceCrypto.open({
      homeserverUrl: this.hs.baseUrl,
      registration: this.registration,
      storeRoot: this.storeRoot,
      limits: { maxOpenMachines: this.maxOpenMachines },
    });
    this.server = await serveAppservice(this.crypto, {
      port: this.port,
      // Printed as they happen: the cause of a transaction answered 500.
      onError: (err, txnId) => console.error(`bridge: transaction ${txnId} answered 500:`, err, (err as Error)?.cause ?? ''),
      onEvents: (result) => {
        for (const d of result.devices) {
          for (const n of d.result.withheldNotices) this.notices.push({ userId: d.userId, code: n.code, sender: n.sender });
        }
        if (this.failNextTransactionFrom !== null && result.events.some((e) => e.event.sender === this.failNextTransactionFrom)) {
          this.failNextTransactionFrom = null;
          this.pushes.push({ txnId: result.txnId, ok: false });
          throw new Error('the bridge failed to handle the events (scripted)');
        }
        this.pushes.push({ txnId: result.txnId, ok: true });
        this.events.push(...result.events);
        this.late.push(...result.lateDecryptions);
      },
    });
  }

  async stop(): Promise<void> {
    await this.server.close();
    await this.crypto.close();
  }

  /** Waits for the room event to reach the bridge; returns every delivery of it. */
  async delivered(eventId: string, timeoutMs = 30_000): Promise<AppserviceTimelineEvent[]> {
    return waitFor(`the bridge to receive ${eventId}`, () => {
      const found = this.events.filter((e) => e.event.event_id === eventId);
      return found.length ? found : undefined;
    }, timeoutMs);
  }

  /** Waits until `puppet` decrypts the event (its key may come in a later transaction). */
  async decryptedBy(puppet: string, roomId: string, eventId: string, timeoutMs = 30_000) {
    const [item] = await this.delivered(eventId, timeoutMs);
    let last: AppserviceTimelineEvent | undefined;
    try {
      return await waitFor(`${puppet} to decrypt ${eventId}`, async () => {
        last = await this.crypto.decryptRoomEvent(puppet, roomId, item!.event as RoomEvent);
        return last.kind === 'decrypted' ? last : undefined;
      }, timeoutMs);
    } catch (err) {
      throw new Error(`${(err as Error).message} (last: ${last?.kind === 'undecryptable' ? last.error.code : last?.kind})`);
    }
  }
}

let hs: Homeserver;
let registration: AppserviceRegistration;
let asPort: number;
const cleanup: Array<() => Promise<void>> = [];
/** Bridges of the running test, stopped after it (they share the registration's port). */
const bridges: Array<() => Promise<void>> = [];
const logs: Array<{ name: string; tail: () => string }> = [];

beforeAll(async () => {
  asPort = await freePort();
  const reg = appserviceRegistration({
    id: 'mcn-e2e-bridge',
    url: `http://127.0.0.1:${asPort}`,
    senderLocalpart: 'bridgebot',
    userRegex: '@puppet_.*:localhost',
  });
  registration = reg as unknown as AppserviceRegistration;
  hs = await startSynapse({ appservices: [reg], extraConfig: { experimental_features: APPSERVICE_EXPERIMENTAL_FEATURES } });
}, 120_000);
afterAll(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await hs?.stop();
});
afterEach(async () => {
  for (const f of bridges.splice(0).reverse()) await f();
});
beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    for (const l of logs) console.error(`--- ${l.name} ---\n${l.tail()}`);
    console.error(`--- Synapse ---\n${hs.logTail(120)}`);
  });
});

async function newBridge(maxOpenMachines?: number): Promise<Bridge> {
  const root = await mkdtemp(join(tmpdir(), 'mcn-as-e2e-'));
  const bridge = new Bridge(hs, registration, asPort, root, maxOpenMachines);
  await bridge.start();
  bridges.push(async () => {
    await bridge.stop().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  });
  return bridge;
}

/** A js-sdk user that excludes insecure devices (strict MSC4153 mode, as Element). */
async function jsUser(localpart: string): Promise<JsSdkUser> {
  const u = await JsSdkUser.start(hs.baseUrl, await hs.registerUser(localpart));
  logs.push({ name: `js-sdk ${u.user.userId}`, tail: () => u.logTail(40) });
  cleanup.push(() => u.stop());
  return u.excludeInsecureDevices();
}

/** Asserts that the js-sdk user sees each user's bridged device as signed by its owner. */
async function expectSignedByOwner(bridge: Bridge, alice: JsSdkUser, users: string[]): Promise<void> {
  await alice.crypto.getUserDeviceInfo(users, true);
  for (const u of users) {
    const status = await alice.crypto.getDeviceVerificationStatus(u, bridge.crypto.deviceIdOf(u)!);
    expect({ user: u, signedByOwner: status?.signedByOwner }).toEqual({ user: u, signedByOwner: true });
  }
}

/** Runs `task` for every item, `concurrency` at a time. */
async function eachLimited<T>(items: T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await task(item);
    }),
  );
}

/** Registers puppets (the bridge's own user exists already) and gives each a device (MSC4190). */
async function createPuppets(bridge: Bridge, puppets: string[]): Promise<void> {
  await eachLimited(puppets, 8, async (p) => {
    if (p !== BOT) await bridge.crypto.registerUser(p.slice(1, p.indexOf(':')));
    await bridge.crypto.deviceFor(p);
  });
}

/** Joins invited puppets to the room, as their devices. */
async function joinPuppets(bridge: Bridge, alice: JsSdkUser, roomId: string, puppets: string[]): Promise<void> {
  await eachLimited(puppets, 8, async (p) => {
    await (await bridge.crypto.transportFor(p)).joinRoom(roomId);
  });
  for (const p of puppets) await alice.waitForMember(roomId, p);
}

describe('an encrypting appservice with three puppets, its own user and a strict js-sdk user', () => {
  it('messages both ways for every puppet; late joiner, blacklist, retried transaction, restart', async () => {
    const bridge = await newBridge();
    const alice = await jsUser('as_alice');
    const puppets = ['@puppet_one:localhost', '@puppet_two:localhost', '@puppet_three:localhost'];
    // The puppets and the bridge's own user: every device the appservice creates.
    const speakers = [...puppets, BOT];
    await createPuppets(bridge, speakers);
    const roomId = await alice.createEncryptedRoom(speakers, 'bridged');
    await joinPuppets(bridge, alice, roomId, speakers);

    // Devices were created with MSC4190, their keys uploaded as the device, and each is
    // cross-signed by its user, as the js-sdk sees it.
    const keys = await alice.client.downloadKeysForUsers(speakers);
    for (const p of speakers) {
      expect(Object.keys(keys.device_keys?.[p] ?? {})).toEqual([bridge.crypto.deviceIdOf(p)]);
    }
    await expectSignedByOwner(bridge, alice, speakers);

    // User -> puppets: the room key comes in transactions, to every puppet's device.
    const hello = await alice.sendText(roomId, 'hello puppets');
    for (const p of speakers) {
      const got = await bridge.decryptedBy(p, roomId, hello);
      expect(got.kind === 'decrypted' && got.decrypted.event.content).toMatchObject({ body: 'hello puppets' });
      expect(got.kind === 'decrypted' && got.decrypted).toMatchObject({ sender: alice.user.userId, senderDevice: alice.user.deviceId });
    }
    // The bridge got it decrypted, in its transaction or (key after event) in a later one.
    const [first] = await bridge.delivered(hello);
    const forBridge = first!.kind === 'decrypted' ? first : bridge.late.find((e) => e.event.event_id === hello);
    expect(forBridge).toMatchObject({ kind: 'decrypted', decrypted: { event: { content: { body: 'hello puppets' } } } });
    expect(speakers).toContain(forBridge!.decryptedBy);

    // Puppets -> user.
    for (const p of speakers) {
      const sent = await bridge.crypto.sendEncrypted(p, roomId, 'm.room.message', { msgtype: 'm.text', body: `hi from ${p}` });
      expect(sent.share.sharedWith).toContainEqual({ userId: alice.user.userId, deviceId: alice.user.deviceId });
      const seen = await alice.waitForDecrypted(roomId, sent.eventId);
      expect(seen).toMatchObject({ sender: p, content: { body: `hi from ${p}` } });
    }

    // A puppet that joins late cannot read the history: the key never reached it, nobody withheld it.
    const late = '@puppet_late:localhost';
    await createPuppets(bridge, [late]);
    await alice.client.invite(roomId, late);
    await joinPuppets(bridge, alice, roomId, [late]);
    const afterJoin = await alice.sendText(roomId, 'after the late puppet joined');
    expect((await bridge.decryptedBy(late, roomId, afterJoin)).kind).toBe('decrypted');
    const history = await bridge.crypto.decryptRoomEvent(late, roomId, (await bridge.delivered(hello))[0]!.event as RoomEvent);
    expect(history).toMatchObject({ kind: 'undecryptable', decryptedBy: late, error: { code: 'MissingRoomKey', withheld: null } });
    expect(history.kind === 'undecryptable' && history.error.sessionId).toBe(first!.event.content.session_id);

    // A puppet whose policy blacklists the user's device sends m.blacklisted, the others do not.
    const [one, two] = puppets as [string, string];
    await bridge.crypto.withMachine(two, async (m) => {
      await m.setLocalTrust(alice.user.userId, alice.user.deviceId, 'blacklisted');
      await m.discardRoomKey(roomId);
    });
    const refused = await bridge.crypto.sendEncrypted(two, roomId, 'm.room.message', { msgtype: 'm.text', body: 'not for alice' });
    expect(refused.share.withheld).toContainEqual(
      expect.objectContaining({ userId: alice.user.userId, deviceId: alice.user.deviceId, code: 'm.blacklisted' }),
    );
    await alice.waitForFailure(roomId, refused.eventId, DecryptionFailureCode.MEGOLM_KEY_WITHHELD);
    const fine = await bridge.crypto.sendEncrypted(one, roomId, 'm.room.message', { msgtype: 'm.text', body: 'for alice' });
    expect(fine.share.withheld).toEqual([]);
    expect((await alice.waitForDecrypted(roomId, fine.eventId)).content.body).toBe('for alice');
    await bridge.crypto.withMachine(two, async (m) => {
      await m.setLocalTrust(alice.user.userId, alice.user.deviceId, 'unset');
      await m.discardRoomKey(roomId);
    });

    // A transaction answered 500 once is retried by Synapse: nothing lost, nothing doubled.
    await alice.crypto.forceDiscardSession(roomId);
    bridge.failNextTransactionFrom = alice.user.userId;
    const retried = await alice.sendText(roomId, 'through a retried transaction');
    const deliveries = await bridge.delivered(retried, 60_000);
    expect(bridge.pushes.some((p) => !p.ok)).toBe(true);
    const failedTxn = bridge.pushes.find((p) => !p.ok)!.txnId;
    expect(bridge.pushes.filter((p) => p.txnId === failedTxn).map((p) => p.ok)).toEqual([false, true]);
    expect(deliveries).toHaveLength(1);
    for (const p of [...speakers, late]) {
      const got = await bridge.decryptedBy(p, roomId, retried);
      expect(got.kind === 'decrypted' && got.decrypted.event.content.body).toBe('through a retried transaction');
    }

    // Restart of the appservice mid-conversation: a message sent while it is down arrives after.
    await bridge.stop();
    const whileDown = await alice.sendText(roomId, 'while the bridge was down');
    await bridge.start();
    for (const p of speakers) {
      const got = await bridge.decryptedBy(p, roomId, whileDown, 60_000);
      expect(got.kind === 'decrypted' && got.decrypted.event.content.body).toBe('while the bridge was down');
    }
    for (const p of speakers) {
      const sent = await bridge.crypto.sendEncrypted(p, roomId, 'm.room.message', { msgtype: 'm.text', body: `back: ${p}` });
      expect((await alice.waitForDecrypted(roomId, sent.eventId)).content.body).toBe(`back: ${p}`);
    }
    // Same devices after the restart, still signed; no device was refused a key as unverified.
    const after = await alice.client.downloadKeysForUsers(speakers);
    for (const p of speakers) expect(Object.keys(after.device_keys?.[p] ?? {})).toEqual([bridge.crypto.deviceIdOf(p)]);
    await expectSignedByOwner(bridge, alice, [...speakers, late]);
    expect(bridge.notices.filter((n) => n.code === 'm.unverified')).toEqual([]);
    expect(bridge.crypto.crossSigningResets).toBe(0);
  }, 240_000);

  it('deletes a puppet device on request', async () => {
    const bridge = await newBridge();
    const p = '@puppet_deleted:localhost';
    await bridge.crypto.registerUser('puppet_deleted');
    const { deviceId } = await bridge.crypto.deviceFor(p);
    const alice = await jsUser('as_alice_del');
    expect(Object.keys((await alice.client.downloadKeysForUsers([p])).device_keys?.[p] ?? {})).toEqual([deviceId]);
    expect(await bridge.crypto.deleteDevice(p)).toBe(true);
    expect(Object.keys((await alice.client.downloadKeysForUsers([p])).device_keys?.[p] ?? {})).toEqual([]);
  }, 60_000);
});

describe('200 puppets in one room', () => {
  it('every puppet decrypts the user’s message (one share to 200 devices through transactions)', async () => {
    const bridge = await newBridge(50);
    const alice = await jsUser('as_alice_200');
    const puppets = Array.from({ length: 200 }, (_, i) => `@puppet_m${i}:localhost`);
    await createPuppets(bridge, puppets);
    const roomId = await alice.createEncryptedRoom([], 'two hundred');
    for (let i = 0; i < puppets.length; i += 50) {
      await Promise.all(puppets.slice(i, i + 50).map((p) => alice.client.invite(roomId, p)));
    }
    await joinPuppets(bridge, alice, roomId, puppets);
    const message = await alice.sendText(roomId, 'hello two hundred');
    await bridge.delivered(message, 60_000);
    for (const p of puppets) {
      const got = await bridge.decryptedBy(p, roomId, message, 60_000);
      expect(got.kind === 'decrypted' && got.decrypted.event.content.body).toBe('hello two hundred');
      // The cap, plus the machines pinned by operations still running (transactions process 8 devices at once).
      expect(bridge.crypto.openMachineCount).toBeLessThanOrEqual(50 + 8);
    }
    await expectSignedByOwner(bridge, alice, puppets);
    expect(bridge.notices.filter((n) => n.code === 'm.unverified')).toEqual([]);
  }, 300_000);
});

describe('examples/echo-bridge.ts', () => {
  it('joins on invite and echoes an encrypted message, encrypted', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'mcn-echo-'));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'registration.json');
    await writeFile(
      file,
      JSON.stringify({ ...registration, url: `http://127.0.0.1:${asPort}`, homeserver_url: hs.baseUrl, server_name: 'localhost', puppets: ['puppet_echo'] }),
    );
    const root = join(__dirname, '..', '..');
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'echo-bridge.ts'), file], {
      cwd: root,
      env: { ...process.env, ECHO_BRIDGE_STORE: join(dir, 'store') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (out += c));
    const exited = new Promise((r) => child.on('exit', r));
    bridges.push(async () => {
      child.kill('SIGINT');
      await exited;
    });
    logs.push({ name: 'echo-bridge', tail: () => out.split('\n').slice(-40).join('\n') });
    await waitFor('the echo bridge to listen', () => (out.includes('echo bridge listening') ? true : undefined), 30_000);

    const alice = await jsUser('as_alice_echo');
    const puppet = '@puppet_echo:localhost';
    const roomId = await alice.createEncryptedRoom([puppet], 'echo');
    await alice.waitForMember(roomId, puppet);
    await alice.sendText(roomId, 'ping');
    const echo = await waitFor('the echo', () => {
      const events = alice.client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
      const e = events.find((ev) => ev.getSender() === puppet && ev.getType() === 'm.room.message');
      return e ? { content: e.getContent(), encrypted: e.isEncrypted() } : undefined;
    }, 30_000);
    expect(echo).toEqual({ content: { msgtype: 'm.notice', body: `${puppet} heard: ping` }, encrypted: true });
    expect(out).toContain(`${puppet} joined ${roomId}`);
  }, 90_000);
});
