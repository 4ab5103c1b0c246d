// matrix-bot-sdk's own Appservice with encryption (@vector-im/matrix-bot-sdk 0.8.0-element.3,
// RustSdkAppserviceCryptoStorageProvider, one device per intent) on matrix-crypto-node/compat,
// installed from the registry into a fresh project with the official bindings aliased to the
// compat shim, against Synapse with a matrix-js-sdk user. bot-sdk needs three workarounds there,
// applied in the appservice program below and never in the library (docs/compat.md):
//   1. it sends only `org.matrix.msc3202.device_id`, which Synapse >= 1.161 ignores: the program
//      adds the stable `device_id` query parameter to every request of an impersonating client;
//   2. it hands MSC3202 device lists only to intents with something else for their device in
//      the same transaction: the program hands each transaction's lists to every encrypted intent;
//   3. it reads `device_lists.removed` where Synapse sends `left`: the program copies `left` over.
// The first fault itself is checked against Synapse, so the test notices when it goes away.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { packDistribution, run, tag } from '../helpers/pack';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { APPSERVICE_EXPERIMENTAL_FEATURES, appserviceRegistration, startSynapse, type Homeserver } from './synapse';

const BOT_SDK_VERSION = '0.8.0-element.3';

// An appservice as bot-sdk's documentation writes one, plus the three workarounds (marked).
const APPSERVICE = `
const { Appservice, MatrixClient, MemoryStorageProvider, RustSdkAppserviceCryptoStorageProvider, LogService, LogLevel } = require('@vector-im/matrix-bot-sdk');
const { StoreType } = require('@matrix-org/matrix-sdk-crypto-nodejs');

const report = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
LogService.setLevel(LogLevel.WARN);
const registration = JSON.parse(process.env.REGISTRATION);

// Workaround 1: the stable MSC4326 device_id beside bot-sdk's unstable one.
const doRequest = MatrixClient.prototype.doRequest;
MatrixClient.prototype.doRequest = function (method, endpoint, qs, ...rest) {
  if (this.impersonatedDeviceId) qs = { ...(qs || {}), device_id: this.impersonatedDeviceId };
  return doRequest.call(this, method, endpoint, qs, ...rest);
};

const encryptedIntents = new Set();
class WorkedAroundAppservice extends Appservice {
  async handleTransaction(txnId, body) {
    const lists = body['org.matrix.msc3202.device_lists'];
    // Workaround 3: Synapse names the users we no longer share a room with \`left\`.
    if (lists) lists.removed = lists.left || lists.removed || [];
    await super.handleTransaction(txnId, body);
    // Workaround 2: every encrypted intent learns of every device-list change.
    if (lists && ((lists.changed || []).length || lists.removed.length)) {
      for (const intent of encryptedIntents) {
        await intent.underlyingClient.crypto.updateSyncData([], {}, ['signed_curve25519'], lists.changed || [], lists.removed);
      }
    }
  }
}

const appservice = new WorkedAroundAppservice({
  homeserverName: 'localhost',
  homeserverUrl: process.env.BASE_URL,
  port: Number(process.env.PORT),
  bindAddress: '127.0.0.1',
  registration,
  storage: new MemoryStorageProvider(),
  cryptoStorage: new RustSdkAppserviceCryptoStorageProvider(process.env.CRYPTO_DIR, StoreType.Sqlite),
  intentOptions: { encryption: true },
});
// Synapse asks whether an invited user of the namespace exists: create it.
appservice.on('query.user', (userId, createUser) => createUser({}));
appservice.on('room.invite', async (roomId, event) => {
  try {
    const intent = appservice.getIntentForUserId(event.state_key);
    await intent.enableEncryption();
    encryptedIntents.add(intent);
    await intent.joinRoom(roomId);
    report({ event: 'joined', roomId, userId: intent.userId, deviceId: intent.underlyingClient.crypto.clientDeviceId });
  } catch (err) {
    report({ event: 'error', error: String(err && err.stack) });
  }
});
appservice.on('room.failed_decryption', (roomId, event, err) => report({ event: 'failed_decryption', eventId: event.event_id, error: String(err && err.message) }));
appservice.on('room.message', async (roomId, event) => {
  const body = event.content && event.content.body;
  if (typeof body !== 'string' || !body.startsWith('ping')) return;
  report({ event: 'received', eventId: event.event_id, sender: event.sender, body });
  try {
    const intent = [...encryptedIntents][0];
    const eventId = await intent.underlyingClient.sendText(roomId, body.replace('ping', 'pong'));
    report({ event: 'replied', eventId, body: body.replace('ping', 'pong') });
  } catch (err) {
    report({ event: 'error', error: String(err && err.stack) });
  }
});
appservice.begin().then(() => report({ event: 'started' }), (err) => { report({ event: 'error', error: String(err && err.stack) }); process.exit(1); });
`;

interface Report {
  event: string;
  [key: string]: unknown;
}

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

let hs: Homeserver;
let registration: Record<string, unknown> & { as_token: string };
let asPort: number;
let project: string;
let child: ChildProcess | undefined;
const reports: Report[] = [];
const stderr: string[] = [];
const logs: Array<{ name: string; tail: () => string }> = [{ name: 'bot-sdk appservice', tail: () => stderr.slice(-60).join('\n') }];

beforeAll(async () => {
  asPort = await freePort();
  registration = appserviceRegistration({
    id: 'mcn-e2e-botsdk-as',
    url: `http://127.0.0.1:${asPort}`,
    senderLocalpart: 'bsas',
    userRegex: '@bsas_.*:localhost',
  }) as typeof registration;
  hs = await startSynapse({ appservices: [registration], extraConfig: { experimental_features: APPSERVICE_EXPERIMENTAL_FEATURES } });
  project = mkdtempSync(path.join(tmpdir(), 'mcn-botsdk-as-'));
  const tgz = packDistribution(project);
  writeFileSync(
    path.join(project, 'package.json'),
    JSON.stringify({
      name: 'appservice',
      version: '1.0.0',
      private: true,
      dependencies: {
        '@vector-im/matrix-bot-sdk': BOT_SDK_VERSION,
        'matrix-crypto-node': `file:${tgz.main}`,
        [`matrix-crypto-node-${tag}`]: `file:${tgz.platform}`,
      },
      overrides: { '@matrix-org/matrix-sdk-crypto-nodejs': `file:${tgz.shim}` },
    }),
  );
  writeFileSync(path.join(project, 'appservice.js'), APPSERVICE);
  run('npm', ['install', '--no-audit', '--no-fund'], project);
}, 300_000);
afterAll(async () => {
  child?.kill();
  await hs?.stop();
  if (project) rmSync(project, { recursive: true, force: true });
});
beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    for (const l of logs) console.error(`--- ${l.name} ---\n${l.tail()}`);
    console.error(`--- Synapse ---\n${hs.logTail(120)}`);
  });
});

describe("matrix-bot-sdk's Appservice with encryption on matrix-crypto-node/compat", () => {
  it('Synapse ignores the unstable org.matrix.msc3202.device_id bot-sdk sends and refuses its login fallback (the first fault)', async () => {
    const user = '@bsas_probe:localhost';
    const headers = { authorization: `Bearer ${registration.as_token}`, 'content-type': 'application/json' };
    const as = (p: string, q: Record<string, string>) => `${hs.baseUrl}/_matrix/client/v3/${p}?${new URLSearchParams({ user_id: user, ...q })}`;
    expect((await fetch(`${hs.baseUrl}/_matrix/client/v3/register`, { method: 'POST', headers, body: JSON.stringify({ type: 'm.login.application_service', username: 'bsas_probe', inhibit_login: true }) })).status).toBe(200);
    // MSC4190: 201 when the device is created.
    expect((await fetch(as('devices/PROBE', {}), { method: 'PUT', headers, body: '{}' })).status).toBe(201);
    const whoami = async (q: Record<string, string>) => (await (await fetch(as('account/whoami', q), { headers })).json()) as { device_id?: string };
    expect((await whoami({ 'org.matrix.msc3202.device_id': 'PROBE' })).device_id).toBeUndefined();
    expect((await whoami({ device_id: 'PROBE' })).device_id).toBe('PROBE');
    // bot-sdk's fallback then, an appservice login, is refused with MSC4190 on.
    const login = await fetch(`${hs.baseUrl}/_matrix/client/v3/login`, {
      method: 'POST',
      headers,
      body: JSON.stringify({ type: 'm.login.application_service', identifier: { type: 'm.id.user', user: 'bsas_probe' } }),
    });
    expect(login.status).toBe(400);
    expect(await login.json()).toMatchObject({ errcode: 'M_APPSERVICE_LOGIN_UNSUPPORTED' });
  });

  it('decrypts a js-sdk user and answers encrypted from the intent device; a new device of the user gets the key', async () => {
    const cryptoDir = path.join(project, 'crypto');
    mkdirSync(cryptoDir);
    child = spawn(process.execPath, ['appservice.js'], {
      cwd: project,
      env: { ...process.env, BASE_URL: hs.baseUrl, PORT: String(asPort), REGISTRATION: JSON.stringify(registration), CRYPTO_DIR: cryptoDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: child.stdout! }).on('line', (line) => reports.push(JSON.parse(line) as Report));
    createInterface({ input: child.stderr! }).on('line', (line) => stderr.push(line));
    const seen = (event: string, match: (r: Report) => boolean = () => true) =>
      waitFor(`the appservice to report ${event}`, () => {
        const failure = reports.find((r) => r.event === 'error');
        if (failure) throw new Error(`the appservice failed: ${String(failure.error)}`);
        return reports.find((r) => r.event === event && match(r));
      }, 60_000);
    await seen('started');

    // bot-sdk's intents have no cross-signing: a user who excludes insecure devices would refuse them.
    const aliceUser = await hs.registerUser('alice');
    const alice = await JsSdkUser.start(hs.baseUrl, aliceUser);
    logs.push({ name: 'js-sdk alice', tail: () => alice.logTail(40) });
    const puppet = '@bsas_puppet:localhost';
    const roomId = await alice.createEncryptedRoom([puppet], 'bot-sdk appservice');
    const joined = await seen('joined', (r) => r.roomId === roomId);
    await alice.waitForMember(roomId, puppet);
    // The device bot-sdk created with MSC4190 is the one it uses (workaround 1): no login device beside it.
    const devices = await alice.client.downloadKeysForUsers([puppet]);
    expect(Object.keys(devices.device_keys?.[puppet] ?? {})).toEqual([joined.deviceId]);

    const ping = await alice.sendText(roomId, 'ping 1');
    expect(await seen('received', (r) => r.eventId === ping)).toMatchObject({ sender: aliceUser.userId, body: 'ping 1' });
    const pong = await seen('replied', (r) => r.body === 'pong 1');
    expect(await alice.waitForDecrypted(roomId, pong.eventId as string)).toMatchObject({ sender: puppet, content: { body: 'pong 1' } });
    expect(alice.findEvent(roomId, pong.eventId as string)?.isEncrypted()).toBe(true);

    // alice logs in a second device: the change reaches the intent in a transaction's device
    // lists (workaround 2), so its next room key goes to the new device too.
    const alice2 = await JsSdkUser.start(hs.baseUrl, await hs.login(aliceUser.userId, aliceUser.password));
    logs.push({ name: 'js-sdk alice (2nd device)', tail: () => alice2.logTail(40) });
    await alice2.joinRoom(roomId).catch(() => undefined);
    const ping2 = await alice.sendText(roomId, 'ping 2');
    await seen('received', (r) => r.eventId === ping2);
    const pong2 = await seen('replied', (r) => r.body === 'pong 2');
    expect(await alice2.waitForDecrypted(roomId, pong2.eventId as string, 30_000)).toMatchObject({ sender: puppet, content: { body: 'pong 2' } });
    expect(reports.filter((r) => r.event === 'failed_decryption')).toEqual([]);
    await alice2.stop();
    await alice.stop();
  }, 180_000);
});
