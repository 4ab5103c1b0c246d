// Interactive SAS verification between a matrix-js-sdk user and our bot (EncryptedClient),
// driven from both sides, and the two ways a flow ends early: a cancellation and a mismatch.
import { VerificationPhase } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { describe, expect, it } from 'vitest';
import type { VerificationInfo } from '../../src/trust';
import { keepSyncing, useHomeserver, useParticipants } from './harness';
import { waitFor } from './js-sdk-user';
import { acceptBotSas, flow, onRequest, phase, sasShown } from './verification-flow';

const { hs, logs } = useHomeserver();
const { later, jsUser, client } = useParticipants(hs, logs);

/** A js-sdk user and a bot who know each other's devices, the bot syncing in the background and recording every flow change. */
async function meet(name: string, policy: { acceptFrom?: string[]; autoConfirmSas?: boolean } = {}) {
  const alice = await jsUser(`${name}-alice`);
  // The bot's device is left unsigned (no cross-signing identity): these tests are about verifying
  // one device by SAS, which a strict user does with a device whatever its signatures.
  const bot = await client(await hs().registerUser(`${name}-bot`), {
    verification: { ...policy, acceptFrom: (policy.acceptFrom ?? []).map((u) => (u === 'alice' ? alice.user.userId : u)) },
  });
  const seen: VerificationInfo[] = [];
  bot.on('verification', (v) => seen.push(v));
  // A shared room makes each side track the other's devices.
  const roomId = await alice.createEncryptedRoom([bot.userId]);
  await bot.transport.joinRoom(roomId);
  await alice.waitForMember(roomId, bot.userId);
  await bot.machine.updateTrackedUsers([alice.user.userId]);
  await bot.processOutgoingRequests();
  await waitFor('js-sdk to know the bot device', async () => {
    const devices = await alice.crypto.getUserDeviceInfo([bot.userId]);
    return devices.get(bot.userId)?.has(bot.deviceId) ? true : undefined;
  });
  const stop = keepSyncing(bot);
  later(stop);
  return { alice, bot, seen };
}





describe('interactive verification with a js-sdk user', () => {
  it('the user starts; the bot accepts by policy and confirms after comparing; both see the other verified', async () => {
    const { alice, bot, seen } = await meet('v1', { acceptFrom: ['alice'] });
    const request = await alice.crypto.requestDeviceVerification(bot.userId, bot.deviceId);
    const flowId = request.transactionId!;
    await phase(request, VerificationPhase.Ready);
    const verifier = await request.startVerification('m.sas.v1');
    const done = verifier.verify();
    const sas = await sasShown(request);
    const ours = await flow(seen, flowId, 'keys_exchanged');
    expect(ours.emoji?.map((e) => e.symbol)).toEqual(sas.sas.emoji?.map(([symbol]) => symbol));
    expect(ours.emoji?.map((e) => e.description)).toEqual(sas.sas.emoji?.map(([, name]) => name));
    expect(ours.decimals).toEqual(sas.sas.decimal);
    await sas.confirm();
    await bot.confirmSas(alice.user.userId, flowId);
    await done;
    await flow(seen, flowId, 'done');
    // Every phase the bot went through, in order, each once.
    expect(seen.filter((v) => v.flowId === flowId).map((v) => v.phase)).toEqual(['requested', 'ready', 'started', 'accepted', 'keys_exchanged', 'confirmed', 'done']);
    expect((await bot.machine.getDevice(alice.user.userId, alice.user.deviceId))?.isVerified).toBe(true);
    expect((await alice.crypto.getDeviceVerificationStatus(bot.userId, bot.deviceId))?.localVerified).toBe(true);
  });

  it('the bot starts; the user accepts; automatic confirmation when told to', async () => {
    const { alice, bot, seen } = await meet('v2', { acceptFrom: ['alice'], autoConfirmSas: true });
    const incoming = onRequest(alice);
    const asked = await bot.requestVerification(alice.user.userId, alice.user.deviceId);
    expect(asked).toMatchObject({ phase: 'created', weStarted: true, otherUserId: alice.user.userId });
    const request = await incoming;
    expect(request.transactionId).toBe(asked.flowId);
    const sas = await acceptBotSas(request, bot, seen, alice.user.userId, asked.flowId);
    const compared = await flow(seen, asked.flowId, 'keys_exchanged');
    expect(compared.emoji?.map((e) => e.symbol)).toEqual(sas.sas.emoji?.map(([symbol]) => symbol));
    expect(compared.decimals).toEqual(sas.sas.decimal);
    expect((await bot.machine.getDevice(alice.user.userId, alice.user.deviceId))?.isVerified).toBe(true);
    expect((await alice.crypto.getDeviceVerificationStatus(bot.userId, bot.deviceId))?.localVerified).toBe(true);
  });

  it('a mismatch and a cancellation end cleanly, with the typed reason on both sides', async () => {
    const { alice, bot, seen } = await meet('v3', { acceptFrom: ['alice'] });
    // Mismatch: the bot says the emoji differ.
    const request = await alice.crypto.requestDeviceVerification(bot.userId, bot.deviceId);
    await phase(request, VerificationPhase.Ready);
    const verifier = await request.startVerification('m.sas.v1');
    const outcome = verifier.verify().then(
      () => 'verified',
      (e: unknown) => e,
    );
    await sasShown(request);
    await flow(seen, request.transactionId!, 'keys_exchanged');
    const cancelled = await bot.cancelVerification(alice.user.userId, request.transactionId!, 'm.mismatched_sas');
    expect(cancelled).toMatchObject({ phase: 'cancelled', cancel: { code: 'm.mismatched_sas', byUs: true } });
    expect(await outcome).toBeInstanceOf(Error);
    await phase(request, VerificationPhase.Cancelled);
    expect(request.cancellationCode).toBe('m.mismatched_sas');
    expect((await bot.machine.getDevice(alice.user.userId, alice.user.deviceId))?.isVerified).toBe(false);

    // Cancellation by the user before SAS.
    const second = await alice.crypto.requestDeviceVerification(bot.userId, bot.deviceId);
    await phase(second, VerificationPhase.Ready);
    await second.cancel();
    const end = await flow(seen, second.transactionId!, 'cancelled');
    expect(end.cancel).toEqual({ code: 'm.user', reason: expect.any(String), byUs: false });
    await expect(bot.startSas(alice.user.userId, second.transactionId!)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'flowId' });
  });
});
