// matrix-crypto-node/compat: the API of @matrix-org/matrix-sdk-crypto-nodejs 0.6, exercised the
// way its users (matrix-bot-sdk) drive it, against the in-process test homeserver.
import { describe, it, expect } from 'vitest';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  Attachment,
  BackupDecryptionKey,
  CollectStrategy,
  CrossSigningStatus,
  DecryptedRoomEvent,
  DeviceId,
  DeviceKeyAlgorithmName,
  DeviceKeyId,
  DeviceLists,
  Ed25519Signature,
  EncryptedAttachment,
  EncryptionAlgorithm,
  EncryptionSettings,
  HistoryVisibility,
  KeysQueryRequest,
  KeysUploadRequest,
  OlmMachine,
  RequestType,
  RoomId,
  SecretStorageItems,
  SecretStorageKey,
  ServerName,
  ShieldColor,
  ShieldStateCode,
  SignatureState,
  Signatures,
  StoreType,
  ToDeviceRequest,
  UserId,
  getVersions,
  type AnyOutgoingRequest,
} from '../src/compat/index';
import { DecryptionError, MatrixCryptoError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';
import type { OutgoingRequest } from '../src/requests';

const ROOM = '!compat:example.org';
const TYPE_NAMES = ['keys_upload', 'keys_query', 'keys_claim', 'to_device', 'signature_upload', 'room_message', 'keys_backup'] as const;

/** A bot on the official API, wired to the test homeserver the way matrix-bot-sdk wires it to a real one. */
class CompatBot {
  constructor(
    readonly hs: TestHomeserver,
    readonly machine: OlmMachine,
  ) {
    hs.syncFor(machine.userId.toString(), machine.deviceId.toString());
  }

  static async create(hs: TestHomeserver, user: string, device: string, storePath?: string) {
    const bot = new CompatBot(hs, await OlmMachine.initialize(new UserId(user), new DeviceId(device), storePath, storePath ? '' : undefined));
    await bot.run();
    return bot;
  }

  get user() {
    return this.machine.userId.toString();
  }

  async send(r: AnyOutgoingRequest) {
    const body = r.type === RequestType.SignatureUpload ? JSON.stringify(JSON.parse(r.body).signed_keys) : r.body;
    const typed = { ...r, type: TYPE_NAMES[r.type], body } as unknown as OutgoingRequest;
    const response = this.hs.handle(this.user, this.machine.deviceId.toString(), typed);
    expect(await this.machine.markRequestAsSent(r instanceof ToDeviceRequest ? r.txnId : r.id, r.type, response)).toBe(true);
  }

  async run() {
    for (const r of await this.machine.outgoingRequests()) await this.send(r);
  }

  async sync(): Promise<[unknown[], Array<Record<string, string>>]> {
    const s = this.hs.syncFor(this.user, this.machine.deviceId.toString());
    const lists = new DeviceLists(s.changedDevices.changed.map((u) => new UserId(u)), []);
    const result = JSON.parse(await this.machine.receiveSyncChanges(JSON.stringify(s.toDeviceEvents), lists, s.oneTimeKeyCounts, s.unusedFallbackKeys));
    await this.run();
    return result;
  }

  /** prepareEncrypt + encryptRoomEvent of matrix-bot-sdk's RustEngine. */
  async encrypt(members: string[], content: object) {
    const users = members.map((m) => new UserId(m));
    await this.machine.updateTrackedUsers(users);
    await this.run();
    const claim = await this.machine.getMissingSessions(users);
    if (claim) await this.send(claim);
    const settings = new EncryptionSettings();
    settings.historyVisibility = HistoryVisibility.Joined;
    for (const r of await this.machine.shareRoomKey(new RoomId(ROOM), users, settings)) await this.send(r);
    const encrypted = await this.machine.encryptRoomEvent(new RoomId(ROOM), 'm.room.message', JSON.stringify(content));
    return { type: 'm.room.encrypted', sender: this.user, event_id: `$${Math.random()}`, origin_server_ts: Date.now(), room_id: ROOM, content: JSON.parse(encrypted) };
  }
}

describe('compat: identifiers and small classes', () => {
  it('parses ids as ruma does and rejects malformed ones', () => {
    const user = new UserId('@alice:example.org:8448');
    expect(user.localpart).toBe('alice');
    expect(user.serverName.host).toBe('example.org');
    expect(user.serverName.port).toBe(8448);
    expect(user.isHistorical()).toBe(false);
    expect(new UserId('@Alice:example.org').isHistorical()).toBe(true);
    expect(() => new UserId('alice')).toThrow(MatrixCryptoError);
    expect(() => new RoomId('#alias:example.org')).toThrow(expect.objectContaining({ code: 'InvalidArgument' }));
    expect(new ServerName('[::1]:80').isIpLiteral()).toBe(true);
    const keyId = new DeviceKeyId('ed25519:BOT');
    expect([keyId.algorithm.name, keyId.algorithm.toString(), keyId.deviceId.toString()]).toEqual([DeviceKeyAlgorithmName.Ed25519, 'ed25519', 'BOT']);
    expect(new DeviceKeyId('org.example.algo:BOT').algorithm.name).toBe(DeviceKeyAlgorithmName.Unknown);
  });

  it('has the official enum numbers and EncryptionSettings defaults', () => {
    expect([RequestType.KeysUpload, RequestType.ToDevice, RequestType.KeysBackup, StoreType.Sqlite]).toEqual([0, 3, 6, 0]);
    expect([CollectStrategy.IdentityBasedStrategy, ShieldColor.None, ShieldStateCode.None, SignatureState.ValidAndTrusted]).toEqual([2, 2, 6, 3]);
    const s = new EncryptionSettings();
    expect([s.algorithm, s.rotationPeriod, s.rotationPeriodMessages, s.historyVisibility, s.sharingStrategy]).toEqual([
      EncryptionAlgorithm.MegolmV1AesSha2,
      604_800_000_000n,
      100n,
      HistoryVisibility.Shared,
      CollectStrategy.AllDevices,
    ]);
    expect(getVersions().matrixSdkCrypto).toMatch(/^0\.19\./);
    expect(new DeviceLists().isEmpty()).toBe(true);
  });

  it('cannot construct a machine with new', () => {
    expect(() => new OlmMachine()).toThrow(/initialize/);
  });

  it('collects, reads and serialises signatures', () => {
    const sig = new Ed25519Signature('A'.repeat(86));
    expect(() => new Ed25519Signature('AAAA')).toThrow(MatrixCryptoError);
    const sigs = new Signatures();
    expect(sigs.isEmpty).toBe(true);
    expect(sigs.addSignature(new UserId('@a:x.org'), new DeviceKeyId('ed25519:D'), sig)).toBeNull();
    expect(sigs.addSignature(new UserId('@a:x.org'), new DeviceKeyId('ed25519:D'), sig)?.isValid).toBe(true);
    expect(sigs.count).toBe(1n);
    expect(sigs.getSignature(new UserId('@a:x.org'), new DeviceKeyId('ed25519:D'))?.toBase64()).toBe(sig.toBase64());
    expect(JSON.parse(sigs.asJSON())).toEqual({ '@a:x.org': { 'ed25519:D': sig.toBase64() } });
    expect(sigs.get(new UserId('@b:x.org'))).toBeNull();
    sigs.clear();
    expect(sigs.count).toBe(0n);
  });
});

describe('compat: OlmMachine through a bot session', () => {
  it('uploads keys, shares, encrypts and decrypts with official-shaped results, also with a main-API device', async () => {
    const hs = new TestHomeserver();
    const bot = await CompatBot.create(hs, '@bot:example.org', 'BOT');
    const alice = await CompatBot.create(hs, '@alice:example.org', 'ALICE');
    const carol = await TestDevice.create(hs, '@carol:example.org', 'CAROL');

    expect(bot.machine.identityKeys.curve25519.toBase64()).toBe(bot.machine.inner.identityKeys.curve25519);
    expect(bot.machine.identityKeys.ed25519.length).toBe(32);

    const event = await bot.encrypt([bot.user, alice.user, carol.userId], { msgtype: 'm.text', body: 'from the compat bot' });
    const [toDevice, roomKeys] = await alice.sync();
    expect(roomKeys).toEqual([
      expect.objectContaining({ algorithm: 'm.megolm.v1.aes-sha2', room_id: ROOM, sender_key: bot.machine.identityKeys.curve25519.toBase64() }),
    ]);
    expect(toDevice).toContainEqual(expect.objectContaining({ type: 'm.room_key' }));

    const decrypted = await alice.machine.decryptRoomEvent(JSON.stringify(event), new RoomId(ROOM));
    expect(decrypted).toBeInstanceOf(DecryptedRoomEvent);
    expect(JSON.parse(decrypted.event).content).toEqual({ msgtype: 'm.text', body: 'from the compat bot' });
    expect(decrypted.sender?.toString()).toBe(bot.user);
    expect(decrypted.senderDevice?.toString()).toBe('BOT');
    expect(decrypted.senderCurve25519Key).toBe(bot.machine.identityKeys.curve25519.toBase64());
    expect(decrypted.senderClaimedEd25519Key).toBe(bot.machine.identityKeys.ed25519.toBase64());
    expect(decrypted.forwardingCurve25519KeyChain).toEqual([]);
    expect(decrypted.shieldState(false)).toMatchObject({ color: ShieldColor.Red, code: ShieldStateCode.UnsignedDevice });

    // The main API's device decrypts the compat bot's message, and the bot decrypts its reply.
    await carol.sync();
    expect((await carol.machine.decryptRoomEvent(event, ROOM)).event.content).toMatchObject({ body: 'from the compat bot' });
    const reply = await carol.sendMessage(ROOM, [bot.user, carol.userId], { msgtype: 'm.text', body: 'from the main API' });
    await bot.sync();
    expect(JSON.parse((await bot.machine.decryptRoomEvent(JSON.stringify(reply), new RoomId(ROOM))).event).content.body).toBe('from the main API');

    const missing = await bot.machine
      .decryptRoomEvent(JSON.stringify({ ...event, content: { ...event.content, session_id: 'x'.repeat(43) } }), new RoomId(ROOM))
      .catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(DecryptionError);
    expect(missing).toMatchObject({ code: 'MissingRoomKey' });
  });

  it('answers device, query and export calls', async () => {
    const hs = new TestHomeserver();
    const bot = await CompatBot.create(hs, '@bot:example.org', 'BOT');
    const alice = await CompatBot.create(hs, '@alice:example.org', 'ALICE');
    await bot.encrypt([bot.user, alice.user], { body: 'x' });

    const query = bot.machine.queryKeysForUsers([new UserId(alice.user)]);
    expect(query).toBeInstanceOf(KeysQueryRequest);
    expect(JSON.parse(query.body).device_keys).toHaveProperty([alice.user]);
    await bot.send(query);

    const device = await bot.machine.getDevice(new UserId(alice.user), new DeviceId('ALICE'));
    expect([device?.isVerified(), device?.isCrossSigningTrusted(), device?.isCrossSignedByOwner()]).toEqual([false, false, false]);
    expect(await bot.machine.getDevice(new UserId(alice.user), new DeviceId('NOPE'))).toBeNull();

    const [, keys] = await alice.sync();
    const exported = JSON.parse(await alice.machine.exportRoomKeysForSession(ROOM, keys[0].session_id));
    expect(exported).toEqual([expect.objectContaining({ room_id: ROOM, session_id: keys[0].session_id })]);

    const signatures = await bot.machine.sign('hello');
    const mine = signatures.get(new UserId(bot.user));
    expect(mine?.['ed25519:BOT'].isValid).toBe(true);
    expect(signatures.getSignature(new UserId(bot.user), new DeviceKeyId('ed25519:BOT'))?.toBase64()).toMatch(/^[A-Za-z0-9+/]{86}$/);

    // As in the official bindings, an id never handed out is processed, not refused.
    expect(await bot.machine.markRequestAsSent('never-handed-out', RequestType.KeysQuery, '{"device_keys":{},"failures":{}}')).toBe(true);
    await expect(bot.machine.markRequestAsSent(query.id, 9 as RequestType, '{}')).rejects.toMatchObject({ field: 'requestType' });
  });

  it('reopens a SQLite store with an empty passphrase, as matrix-bot-sdk opens it', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'mcn-compat-'));
    const hs = new TestHomeserver();
    const first = await CompatBot.create(hs, '@bot:example.org', 'BOT', dir);
    const key = first.machine.identityKeys.curve25519.toBase64();
    first.machine.close();
    await expect(first.machine.crossSigningStatus()).rejects.toMatchObject({ code: 'MachineClosed' });
    const again = await OlmMachine.initialize(new UserId('@bot:example.org'), new DeviceId('BOT'), dir, '', StoreType.Sqlite);
    expect(again.identityKeys.curve25519.toBase64()).toBe(key);
    expect(await again.outgoingRequests()).toEqual([]);
    again.close();
  });

  it('opens a store folder written by matrix-sdk-sqlite (what matrix-bot-sdk has on disk) without converting it', async () => {
    // The folder as the official bindings leave it: matrix-sdk-sqlite's file, empty-string passphrase.
    const dir = mkdtempSync(path.join(tmpdir(), 'mcn-compat-crate-'));
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICE');
    const bot = await TestDevice.create(hs, '@bot:example.org', 'BOT', { kind: 'sqlite-crate', path: dir, passphrase: '' });
    const keys = bot.machine.identityKeys;
    const event = await alice.sendMessage(ROOM, [alice.userId, bot.userId], { body: 'from before' });
    await bot.sync();
    await bot.machine.close();
    expect(readdirSync(dir)).toContain('matrix-sdk-crypto.sqlite3');

    const again = await OlmMachine.initialize(new UserId('@bot:example.org'), new DeviceId('BOT'), dir, '', StoreType.Sqlite);
    expect(again.identityKeys.curve25519.toBase64()).toBe(keys.curve25519);
    const decrypted = await again.decryptRoomEvent(JSON.stringify(event), new RoomId(ROOM));
    expect(JSON.parse(decrypted.event).content.body).toBe('from before');
    again.close();
    expect(readdirSync(dir)).not.toContain('matrix-crypto-node.sqlite3');
    await alice.machine.close();
  });
});

describe('compat: cross-signing, secret storage and backup', () => {
  it('bootstraps cross-signing and moves the keys to another device through secret storage', async () => {
    const hs = new TestHomeserver();
    const first = await CompatBot.create(hs, '@bot:example.org', 'FIRST');
    const boot = await first.machine.bootstrapCrossSigning(true);
    expect(JSON.parse(boot.uploadSigningKeysReq).master_key.usage).toEqual(['master']);
    expect(JSON.parse(boot.uploadSignaturesReq.body).signed_keys[first.user]).toHaveProperty('FIRST');
    hs.handle(first.user, 'FIRST', { type: 'signing_keys_upload', id: '', body: boot.uploadSigningKeysReq });
    await first.send(boot.uploadSignaturesReq);
    const status = await first.machine.crossSigningStatus();
    expect(status).toBeInstanceOf(CrossSigningStatus);
    expect([status.hasMaster, status.hasSelfSigning, status.hasUserSigning]).toEqual([true, true, true]);

    const ssss = SecretStorageKey.createFromPassphrase('correct horse');
    const restored = SecretStorageKey.fromAccountData('correct horse', ssss.eventType(), ssss.accountDataContent());
    expect(restored.keyId()).toBe(ssss.keyId());
    expect(() => SecretStorageKey.fromAccountData('wrong horse', ssss.eventType(), ssss.accountDataContent())).toThrow(MatrixCryptoError);
    expect(restored.decrypt(ssss.encrypt('s3cret', 'org.example.secret'), 'org.example.secret')).toBe('s3cret');

    const items = await first.machine.exportSecretsForSecretStorage(ssss);
    const second = await CompatBot.create(hs, '@bot:example.org', 'SECOND');
    await second.machine.updateTrackedUsers([new UserId(second.user)]);
    await second.run();
    const upload = await second.machine.importSecretsFromSecretStorage(
      SecretStorageKey.fromAccountData(ssss.toBase58(), ssss.eventType(), ssss.accountDataContent()),
      new SecretStorageItems({ 'm.cross_signing.master': items.masterKey, 'm.cross_signing.self_signing': items.selfSigningKey, 'm.cross_signing.user_signing': items.userSigningKey }),
    );
    expect(JSON.parse(upload.body).signed_keys[second.user]).toHaveProperty('SECOND');
    await second.send(upload);
    expect((await second.machine.crossSigningStatus()).hasSelfSigning).toBe(true);
    // FIRST sees SECOND signed by the shared identity.
    await first.machine.updateTrackedUsers([new UserId(first.user)]);
    await first.send(first.machine.queryKeysForUsers([new UserId(first.user)]));
    const seen = await first.machine.getDevice(new UserId(first.user), new DeviceId('SECOND'));
    expect([seen?.isCrossSignedByOwner(), seen?.isCrossSigningTrusted()]).toEqual([true, true]);
  });

  it('backs up room keys encrypted to the backup key and counts them', async () => {
    const hs = new TestHomeserver();
    const bot = await CompatBot.create(hs, '@bot:example.org', 'BOT');
    await bot.machine.shareRoomKey(new RoomId(ROOM), [new UserId(bot.user)], new EncryptionSettings());
    expect(await bot.machine.roomKeyCounts()).toMatchObject({ total: 1, backedUp: 0 });

    const key = BackupDecryptionKey.createRandomKey();
    expect(BackupDecryptionKey.fromBase64(key.toBase64()).megolmV1PublicKey.publicKeyBase64).toBe(key.megolmV1PublicKey.publicKeyBase64);
    expect(key.megolmV1PublicKey.algorithm).toBe('m.megolm_backup.v1.curve25519-aes-sha2');
    expect(await bot.machine.isBackupEnabled()).toBe(false);
    await bot.machine.enableBackupV1(key.megolmV1PublicKey.publicKeyBase64, '1');
    expect(await bot.machine.isBackupEnabled()).toBe(true);

    const request = await bot.machine.backupRoomKeys();
    expect(request?.type).toBe(RequestType.KeysBackup);
    const sessions = JSON.parse(request!.body).rooms[ROOM].sessions;
    const data = (Object.values(sessions)[0] as { session_data: { ephemeral: string; mac: string; ciphertext: string } }).session_data;
    expect(JSON.parse(key.decryptV1(data.ephemeral, data.mac, data.ciphertext))).toMatchObject({ algorithm: 'm.megolm.v1.aes-sha2' });
    expect(() => BackupDecryptionKey.createRandomKey().decryptV1(data.ephemeral, data.mac, data.ciphertext)).toThrow(MatrixCryptoError);
    await bot.machine.markRequestAsSent(request!.id, request!.type, JSON.stringify({ etag: '1', count: 1 }));
    expect(await bot.machine.roomKeyCounts()).toMatchObject({ total: 1, backedUp: 1 });
    expect(await bot.machine.backupRoomKeys()).toBeNull();

    const verification = await bot.machine.verifyBackup(
      JSON.stringify({ algorithm: key.megolmV1PublicKey.algorithm, auth_data: { public_key: key.megolmV1PublicKey.publicKeyBase64, signatures: {} } }),
    );
    expect([verification.deviceState, verification.userState, verification.trusted()]).toEqual([SignatureState.Missing, SignatureState.Missing, false]);
    const authData = { public_key: key.megolmV1PublicKey.publicKeyBase64 };
    const signed = { algorithm: key.megolmV1PublicKey.algorithm, auth_data: { ...authData, signatures: JSON.parse((await bot.machine.sign(JSON.stringify(authData))).asJSON()) } };
    const ok = await bot.machine.verifyBackup(JSON.stringify(signed));
    expect([ok.deviceState, ok.trusted()]).toEqual([SignatureState.ValidAndTrusted, true]);

    await bot.machine.saveBackupDecryptionKey(key, '1');
    expect(await bot.machine.getBackupKeys()).toMatchObject({ decryptionKeyBase64: key.toBase64(), backupVersion: '1' });
    await bot.machine.disableBackup();
    expect(await bot.machine.isBackupEnabled()).toBe(false);
  });
});

describe('compat: attachments', () => {
  it('encrypts, decrypts once, and refuses tampered data', () => {
    const plain = new TextEncoder().encode('a picture of a cat');
    const encrypted = Attachment.encrypt(plain);
    const info = JSON.parse(encrypted.mediaEncryptionInfo!);
    expect(info).toMatchObject({ v: 'v2', key: { alg: 'A256CTR', kty: 'oct' } });
    expect(Buffer.from(encrypted.encryptedData).equals(Buffer.from(plain))).toBe(false);

    const copy = new EncryptedAttachment(encrypted.encryptedData, encrypted.mediaEncryptionInfo!);
    expect(new TextDecoder().decode(Attachment.decrypt(encrypted))).toBe('a picture of a cat');
    expect(encrypted.hasMediaEncryptionInfoBeenConsumed).toBe(true);
    expect(encrypted.mediaEncryptionInfo).toBeNull();
    expect(() => Attachment.decrypt(encrypted)).toThrow(MatrixCryptoError);

    const tampered = new Uint8Array(copy.encryptedData);
    tampered[0] ^= 1;
    expect(() => Attachment.decrypt(new EncryptedAttachment(tampered, copy.mediaEncryptionInfo!))).toThrow(MatrixCryptoError);
  });
});

describe('compat: request classes', () => {
  it('hands out class instances with numeric types', async () => {
    const m = await OlmMachine.initialize(new UserId('@x:example.org'), new DeviceId('X'));
    const [upload, query] = await m.outgoingRequests();
    expect(upload).toBeInstanceOf(KeysUploadRequest);
    expect(upload.type).toBe(RequestType.KeysUpload);
    expect(JSON.parse(upload.body)).toHaveProperty('device_keys');
    expect(query.type).toBe(RequestType.KeysQuery);
    m.close();
  });
});
