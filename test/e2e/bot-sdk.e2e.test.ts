// Drop-in proof: matrix-bot-sdk (@vector-im/matrix-bot-sdk, the element fork that needs Node 22+)
// installed from the registry into a fresh project, with @matrix-org/matrix-sdk-crypto-nodejs
// replaced by matrix-crypto-node-compat through npm `overrides` (so the official binary is never
// downloaded). An encrypted bot runs through bot-sdk's own Rust crypto engine (RustEngine:
// prepare the room, share the key, encrypt, decrypt) against Synapse, with a matrix-js-sdk user
// (its own Rust crypto, WebAssembly) in strict mode (exclude insecure devices, MSC4153) on the
// other side. matrix-bot-sdk does not cross-sign its device, so another device of the bot's
// account (our EncryptedClient, with the account's cross-signing keys) signs it, as its operator
// would have to for today's clients to talk to it.
import { describe, it, expect, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { packDistribution, run, tag } from '../helpers/pack';
import { EncryptedClient } from '../../src/client';
import { useHomeserver } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';

const BOT_SDK_VERSION = '0.8.0-element.3';

// Written for matrix-bot-sdk as its README shows; nothing here knows about matrix-crypto-node.
const BOT = `
const path = require('node:path');
const { MatrixClient, SimpleFsStorageProvider, RustSdkCryptoStorageProvider, AutojoinRoomsMixin, LogService, LogLevel } = require('@vector-im/matrix-bot-sdk');
const { StoreType } = require('@matrix-org/matrix-sdk-crypto-nodejs');

const report = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
LogService.setLevel(LogLevel.WARN);
const dir = process.env.BOT_DIR;
const client = new MatrixClient(
  process.env.BASE_URL,
  process.env.ACCESS_TOKEN,
  new SimpleFsStorageProvider(path.join(dir, 'bot.json')),
  new RustSdkCryptoStorageProvider(path.join(dir, 'crypto'), StoreType.Sqlite),
);
AutojoinRoomsMixin.setupOnClient(client);
const encrypted = new Set();
client.on('room.join', (roomId) => report({ event: 'joined', roomId }));
client.on('room.encrypted_event', (roomId, event) => encrypted.add(event.event_id));
client.on('room.failed_decryption', (roomId, event, err) => report({ event: 'failed_decryption', eventId: event.event_id, error: String(err && err.message) }));
client.on('room.message', async (roomId, event) => {
  if (event.sender === process.env.BOT_USER) return;
  report({ event: 'received', eventId: event.event_id, sender: event.sender, body: event.content.body, wasEncrypted: encrypted.has(event.event_id) });
  if (event.content.body === 'ping') {
    const eventId = await client.sendText(roomId, 'pong from matrix-bot-sdk');
    report({ event: 'replied', eventId });
  }
});
client.start().then(
  () => report({ event: 'started', deviceId: client.crypto.clientDeviceId, ed25519: client.crypto.deviceEd25519 }),
  (err) => { report({ event: 'error', error: String(err && err.stack) }); process.exit(1); },
);
`;

interface Report {
  event: string;
  [key: string]: unknown;
}

describe('matrix-bot-sdk on matrix-crypto-node through an npm alias', () => {
  const { hs, logs, setup } = useHomeserver();
  let project: string;
  let bot: ChildProcess | undefined;
  const reports: Report[] = [];
  const stderr: string[] = [];

  setup(async () => {
    project = mkdtempSync(path.join(tmpdir(), 'mcn-botsdk-'));
    const tgz = packDistribution(project);
    writeFileSync(
      path.join(project, 'package.json'),
      JSON.stringify({
        name: 'bot',
        version: '1.0.0',
        private: true,
        dependencies: {
          '@vector-im/matrix-bot-sdk': BOT_SDK_VERSION,
          'matrix-crypto-node': `file:${tgz.main}`,
          [`matrix-crypto-node-${tag}`]: `file:${tgz.platform}`,
        },
        // The alias: every @matrix-org/matrix-sdk-crypto-nodejs in the tree is the compat shim.
        overrides: { '@matrix-org/matrix-sdk-crypto-nodejs': `file:${tgz.shim}` },
      }),
    );
    writeFileSync(path.join(project, 'bot.js'), BOT);
    run('npm', ['install', '--no-audit', '--no-fund'], project);
  }, 300_000);

  afterAll(() => {
    bot?.kill();
    if (project) rmSync(project, { recursive: true, force: true });
  });

  it('installs the shim in place of the official bindings, without their download step', () => {
    const official = path.join(project, 'node_modules', '@matrix-org', 'matrix-sdk-crypto-nodejs');
    expect(JSON.parse(readFileSync(path.join(official, 'package.json'), 'utf8')).name).toBe('matrix-crypto-node-compat');
    expect(existsSync(path.join(official, 'download-lib.js'))).toBe(false);
    const sdk = JSON.parse(readFileSync(path.join(project, 'node_modules', '@vector-im', 'matrix-bot-sdk', 'package.json'), 'utf8'));
    expect(sdk.dependencies['@matrix-org/matrix-sdk-crypto-nodejs']).toBeDefined();
  });

  it('runs an encrypted bot: decrypts a js-sdk user message and answers with an encrypted one', async () => {
    const botUser = await hs().registerUser('botsdk');
    const alice = await JsSdkUser.start(hs().baseUrl, await hs().registerUser('alice'));
    logs({ name: 'js-sdk alice', logTail: (n) => alice.logTail(n) });
    await alice.excludeInsecureDevices();
    logs({ name: 'matrix-bot-sdk process', logTail: (n = 40) => stderr.slice(-n).join('\n') });

    const dir = path.join(project, 'data');
    mkdirSync(dir);
    bot = spawn(process.execPath, ['bot.js'], {
      cwd: project,
      env: { ...process.env, BASE_URL: hs().baseUrl, ACCESS_TOKEN: botUser.accessToken, BOT_USER: botUser.userId, BOT_DIR: dir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: bot.stdout! }).on('line', (line) => reports.push(JSON.parse(line) as Report));
    createInterface({ input: bot.stderr! }).on('line', (line) => stderr.push(line));
    const seen = (event: string, match: (r: Report) => boolean = () => true) =>
      waitFor(`the bot to report ${event}`, () => {
        const failure = reports.find((r) => r.event === 'error');
        if (failure) throw new Error(`the bot failed: ${String(failure.error)}`);
        return reports.find((r) => r.event === event && match(r));
      }, 60_000);

    const started = await seen('started');
    expect(started.deviceId).toBe(botUser.deviceId);

    // Another device of the bot's account creates the cross-signing identity and signs the
    // bot-sdk device; a strict client would neither share keys with it nor decrypt it otherwise.
    const signer = await EncryptedClient.open({
      baseUrl: hs().baseUrl,
      accessToken: (await hs().login(botUser.userId, botUser.password)).accessToken,
      store: { kind: 'memory' },
      crossSigning: { bootstrap: 'if-missing', auth: { type: 'password', password: botUser.password }, signOwnDevices: true },
    });
    try {
      await waitFor('the bot-sdk device signed', async () => {
        await signer.syncOnce({ timeoutMs: 300 });
        return (await signer.machine.getDevice(botUser.userId, botUser.deviceId))?.isCrossSignedByOwner ? true : undefined;
      });
    } finally {
      await signer.close();
    }

    const roomId = await alice.createEncryptedRoom([botUser.userId], 'bot-sdk');
    await seen('joined', (r) => r.roomId === roomId);
    await alice.waitForMember(roomId, botUser.userId);
    await waitFor('js-sdk to see the bot-sdk device cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(botUser.userId, botUser.deviceId))?.signedByOwner ? true : undefined,
    );
    const ping = await alice.sendText(roomId, 'ping');

    const received = await seen('received', (r) => r.eventId === ping);
    expect(received).toMatchObject({ sender: alice.user.userId, body: 'ping', wasEncrypted: true });
    const replied = await seen('replied');
    const pong = await alice.waitForDecrypted(roomId, replied.eventId as string);
    expect(pong).toMatchObject({ sender: botUser.userId, type: 'm.room.message', content: { body: 'pong from matrix-bot-sdk' } });
    // Encrypted with a room key from the bot's device, the one bot-sdk opened through the compat layer.
    const event = alice.findEvent(roomId, pong.eventId)!;
    expect(event.isEncrypted()).toBe(true);
    expect(event.getClaimedEd25519Key()).toBe(started.ed25519);
    expect(reports.filter((r) => r.event === 'failed_decryption')).toEqual([]);
    await alice.stop();
  }, 120_000);
});
