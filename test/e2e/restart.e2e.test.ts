// Scenario 5: our bot's process is stopped and started again on its SQLite store in the middle of
// a conversation with a matrix-js-sdk user in strict mode (exclude insecure devices, MSC4153; the
// bot cross-signs its device); nothing is lost and no key is uploaded twice.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BotProcess, type BotProcessConfig } from './bot-process';
import { useHomeserver, useParticipants } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';

const { hs, logs } = useHomeserver();
const { later } = useParticipants(hs, logs);

describe('scenario 5: restart on the SQLite store', () => {
  it('keeps every message readable across a process restart, without uploading keys again', async () => {
    const aliceUser = await hs().registerUser('alice');
    const botUser = await hs().registerUser('bot');
    const alice = await JsSdkUser.start(hs().baseUrl, aliceUser);
    later(() => alice.stop());
    logs({ name: 'js-sdk alice', logTail: (n) => alice.logTail(n) });
    await alice.excludeInsecureDevices();

    const dir = await mkdtemp(join(tmpdir(), 'mcn-e2e-restart-'));
    later(() => rm(dir, { recursive: true, force: true }));
    const config: BotProcessConfig = {
      baseUrl: hs().baseUrl,
      accessToken: botUser.accessToken,
      storePath: join(dir, 'store'),
      stateFile: join(dir, 'state.json'),
      crossSigningPassword: botUser.password,
    };

    // First run: the bot joins on invite and the two talk.
    const first = await BotProcess.start('bot (first run)', config);
    later(() => first.stop());
    logs(first);
    // The first run published the account's cross-signing identity and signed its device.
    expect(first.requests.filter((r) => r.path.endsWith('/keys/device_signing/upload'))).toHaveLength(1);
    const roomId = await alice.createEncryptedRoom([botUser.userId]);
    await alice.waitForMember(roomId, botUser.userId);
    await waitFor('js-sdk to see the bot device cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(botUser.userId, botUser.deviceId))?.signedByOwner ? true : undefined,
    );
    const a1 = await alice.sendText(roomId, 'before the restart');
    expect((await first.waitForDecrypted(a1)).body).toBe('before the restart');
    const b1 = await first.send(roomId, 'bot: before the restart');
    expect((await alice.waitForDecrypted(roomId, b1)).content.body).toBe('bot: before the restart');

    expect(await first.stop()).toBe(0);

    // While the bot is down, alice starts a new Megolm session: its key waits on the server as a
    // to-device message for the bot.
    await alice.crypto.forceDiscardSession(roomId);
    const a2 = await alice.sendText(roomId, 'while the bot was down');

    // Second run on the same store and sync token.
    const second = await BotProcess.start('bot (second run)', config);
    later(() => second.stop());
    logs(second);
    expect(second.identity).toEqual(first.identity);
    // The second run found its cross-signing keys and its signature in place: nothing published again.
    expect(second.requests.filter((r) => r.path.includes('/keys/device_signing/') || r.path.includes('/keys/signatures/'))).toEqual([]);
    expect((await second.waitForDecrypted(a2)).body).toBe('while the bot was down');

    // Earlier messages, its own included, still decrypt from the store.
    const history = await second.history(roomId);
    const byId = new Map(history.map((e) => [e.eventId, e]));
    for (const [id, body] of [
      [a1, 'before the restart'],
      [b1, 'bot: before the restart'],
      [a2, 'while the bot was down'],
    ] as const) {
      expect(byId.get(id)).toMatchObject({ kind: 'decrypted', body });
    }

    // The conversation goes on in both directions, from the same device.
    const b2 = await second.send(roomId, 'bot: after the restart');
    expect((await alice.waitForDecrypted(roomId, b2)).content.body).toBe('bot: after the restart');
    const a3 = await alice.sendText(roomId, 'after the restart');
    expect((await second.waitForDecrypted(a3)).body).toBe('after the restart');
    // alice's client attributes both of the bot's messages to the same device keys.
    for (const id of [b1, b2]) {
      const ev = alice.findEvent(roomId, id)!;
      expect(ev.getSenderKey()).toBe(first.identity.curve25519);
      expect(ev.getClaimedEd25519Key()).toBe(first.identity.ed25519);
    }

    // Keys: the first run uploaded device keys and one-time keys once; the second run uploaded nothing.
    const uploads1 = first.requests.filter((r) => r.path.endsWith('/keys/upload'));
    expect(uploads1.filter((r) => r.deviceKeys)).toHaveLength(1);
    expect(uploads1.reduce((n, r) => n + (r.oneTimeKeys ?? 0), 0)).toBeGreaterThan(0);
    expect(second.requests.filter((r) => r.path.endsWith('/keys/upload'))).toEqual([]);
    // ... and the server still has exactly the device keys of the first run.
    const keys = await alice.client.downloadKeysForUsers([botUser.userId]);
    const device = keys.device_keys[botUser.userId]?.[botUser.deviceId];
    expect(device?.keys[`curve25519:${botUser.deviceId}`]).toBe(first.identity.curve25519);
    expect(device?.keys[`ed25519:${botUser.deviceId}`]).toBe(first.identity.ed25519);

    expect(await second.stop()).toBe(0);
  }, 120_000);
});
