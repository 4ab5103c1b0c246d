// Where `compat` must behave as @matrix-org/matrix-sdk-crypto-nodejs 0.6.6 does, so programs
// written for it keep working (and the one place where we deliberately do not).
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DeviceId,
  EncryptionSettings,
  HistoryVisibility,
  KeysClaimRequest,
  KeysQueryRequest,
  KeysUploadRequest,
  OlmMachine,
  RequestType,
  RoomId,
  ToDeviceRequest,
  UserId,
} from '../src/compat/index';
import { MatrixCryptoError } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';
import type { OutgoingRequest } from '../src/requests';

const NAMES = ['keys_upload', 'keys_query', 'keys_claim', 'to_device', 'signature_upload', 'room_message', 'keys_backup'] as const;
const BOT = '@bot:example.org';
const ALICE = '@alice:example.org';

describe('compat as a drop-in', () => {
  it('markRequestAsSent processes the response of a keys/query and keys/claim the program built itself', async () => {
    const hs = new TestHomeserver();
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    hs.changed.set(`${BOT}|BOT`, new Set());
    const bot = await OlmMachine.initialize(new UserId(BOT), new DeviceId('BOT'));
    for (const r of await bot.outgoingRequests()) {
      const body = r.type === RequestType.SignatureUpload ? JSON.stringify(JSON.parse(r.body).signed_keys) : r.body;
      const response = hs.handle(BOT, 'BOT', { ...r, type: NAMES[r.type], body } as unknown as OutgoingRequest);
      await bot.markRequestAsSent(r instanceof ToDeviceRequest ? r.txnId : r.id, r.type, response);
    }
    await bot.updateTrackedUsers([new UserId(ALICE)]);
    // The program's own requests, with ids of its own.
    const query = hs.handle(BOT, 'BOT', { type: 'keys_query', id: 'my-query', body: JSON.stringify({ device_keys: { [ALICE]: [] } }) });
    expect(await bot.markRequestAsSent('my-query', RequestType.KeysQuery, query)).toBe(true);
    const claim = hs.handle(BOT, 'BOT', { type: 'keys_claim', id: 'my-claim', body: JSON.stringify({ one_time_keys: { [ALICE]: { ALICE: 'signed_curve25519' } } }) });
    expect(await bot.markRequestAsSent('my-claim', RequestType.KeysClaim, claim)).toBe(true);

    const shared = await bot.shareRoomKey(new RoomId('!r:example.org'), [new UserId(ALICE)], new EncryptionSettings());
    expect(shared.map((r) => r.eventType)).toEqual(['m.room.encrypted']);
    expect(JSON.parse(shared[0]!.body).messages[ALICE]).toHaveProperty('ALICE');
    expect(alice.deviceId).toBe('ALICE');
    bot.close();
  });

  it('EncryptionSettings checks each value when it is assigned', () => {
    const s = new EncryptionSettings();
    expect(() => {
      s.historyVisibility = 42 as HistoryVisibility;
    }).toThrow(MatrixCryptoError);
    try {
      s.historyVisibility = 42 as HistoryVisibility;
    } catch (e) {
      expect(e).toMatchObject({ code: 'InvalidArgument', field: 'historyVisibility' });
      expect((e as Error).message).toMatch(/^historyVisibility: 42 is not one of Invited \(0\), Joined \(1\), Shared \(2\), WorldReadable \(3\)$/);
    }
    expect(s.historyVisibility).toBe(HistoryVisibility.Shared);
    expect(() => {
      s.rotationPeriodMessages = 0n;
    }).toThrow(/rotationPeriodMessages: must be a positive bigint/);
    s.historyVisibility = HistoryVisibility.Joined;
    expect(s.historyVisibility).toBe(HistoryVisibility.Joined);
  });

  it('request classes cannot be constructed with new', () => {
    for (const make of [
      () => new (KeysUploadRequest as unknown as new (a: string, b: string) => unknown)('id', '{}'),
      () => new (KeysQueryRequest as unknown as new (a: string, b: string) => unknown)('id', '{}'),
      () => new (KeysClaimRequest as unknown as new (a: string, b: string) => unknown)('id', '{}'),
      () => new (ToDeviceRequest as unknown as new (a: string, b: string, c: string, d: string) => unknown)('id', 't', 'x', '{}'),
    ]) {
      expect(make).toThrow('Class contains no `constructor`, can not new it!');
    }
  });

  it('a machine never closed does not abort the process at exit (the official package exits with 134)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcn-compat-exit-'));
    try {
      const child = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, 'helpers', 'compat-exit-child.ts'), dir], {
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(child.stdout).toBe('opened\n');
      expect({ status: child.status, signal: child.signal, stderr: child.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
