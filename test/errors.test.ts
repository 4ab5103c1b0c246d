// The error codes are defined once, in native/src/errors.rs; the TypeScript unions must name
// exactly those, and every code must come through to `err.code` as the Rust side set it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DecryptionError, MatrixCryptoError, OlmMachine } from '../src/index';
import { codeLists } from '../src/errors';

const binding = require('../native/index.js') as { ErrorCode: Record<string, string>; DecryptionCode: Record<string, string> };

describe('error codes', () => {
  it('the TypeScript ErrorCode union is the Rust ErrorCode enum (less DecryptionError, whose code is a DecryptionErrorCode)', () => {
    const rust = Object.values(binding.ErrorCode).filter((c) => c !== 'DecryptionError');
    expect(new Set(codeLists.errorCodes)).toEqual(new Set(rust));
    expect(Object.values(binding.ErrorCode)).toContain('DecryptionError');
  });

  it('the TypeScript DecryptionErrorCode union is the Rust DecryptionCode enum', () => {
    expect(new Set(codeLists.decryptionErrorCodes)).toEqual(new Set(Object.values(binding.DecryptionCode)));
  });

  it('codes and fields set in Rust arrive as err.code and err.field', async () => {
    const err = await OlmMachine.open({ userId: 'not a user id', deviceId: 'D', store: { kind: 'memory' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err).toMatchObject({ code: 'InvalidArgument', field: 'userId' });
    expect((err as Error).message).not.toContain('mcn-error');
  });

  it('a wrong passphrase is StorePassphrase on store.passphrase', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'mcn-errors-'));
    try {
      const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'D', store: { kind: 'sqlite', path: dir, passphrase: 'right' } });
      await m.close();
      const err = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'D', store: { kind: 'sqlite', path: dir, passphrase: 'wrong' } }).catch(
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ code: 'StorePassphrase', field: 'store.passphrase' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('encrypting without a room key says so (EncryptionError on roomId), and a closed machine is MachineClosed', async () => {
    const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'D', store: { kind: 'memory' } });
    const err = await m.encryptRoomEvent('!r:example.org', 'm.room.message', { body: 'x' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EncryptionError', field: 'roomId' });
    expect((err as Error).message).toContain('no room key exists for !r:example.org');
    await m.close();
    await expect(m.outgoingRequests()).rejects.toMatchObject({ code: 'MachineClosed' });
  });

  it('a decryption failure is a DecryptionError with a DecryptionErrorCode', async () => {
    const m = await OlmMachine.open({ userId: '@a:example.org', deviceId: 'D', store: { kind: 'memory' } });
    const event = {
      type: 'm.room.encrypted',
      event_id: '$e',
      sender: '@b:example.org',
      origin_server_ts: 1,
      content: { algorithm: 'm.megolm.v1.aes-sha2', ciphertext: 'AwgA', sender_key: 'k', device_id: 'B', session_id: 'sess' },
    };
    const err = await m.decryptRoomEvent(event, '!r:example.org').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DecryptionError);
    // The ciphertext is no Megolm message at all.
    expect(err).toMatchObject({ code: 'MalformedEvent', sessionId: 'sess' });
    await m.close();
  });
});
