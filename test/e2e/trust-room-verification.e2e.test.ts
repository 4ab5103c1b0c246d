// In-room verification (requests and SAS as room events in an encrypted DM) and QR codes
// between a matrix-js-sdk user and our bot (EncryptedClient), both cross-signed: either side
// starts, each ends seeing the other's identity verified; a cancellation ends with its code.
import { VerificationPhase, VerifierEvent, type ShowQrCodeCallbacks } from 'matrix-js-sdk/lib/crypto-api/index.js';
import { describe, expect, it } from 'vitest';
import { EncryptedClient } from '../../src/client';
import type { VerificationInfo, VerificationPolicy } from '../../src/trust';
import { keepSyncing, useHomeserver, useParticipants } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { acceptBotSas, flow, onRequest, phase, sasShown, within } from './verification-flow';

const { hs, logs } = useHomeserver();
const { later, jsUser, client } = useParticipants(hs, logs);

/**
 * A cross-signed js-sdk user and a cross-signed bot in an encrypted DM, each knowing the
 * other's identity; the bot syncs in the background and records every flow change.
 */
async function dm(name: string, policy: Omit<VerificationPolicy, 'acceptFrom'> & { acceptAlice?: boolean } = {}) {
  // Strict mode (the harness default) has cross-signed alice's account already.
  const alice = await jsUser(`${name}-alice`);
  const { acceptAlice, ...rest } = policy;
  const bot = await client(await hs().registerUser(`${name}-bot`), {
    crossSigning: { bootstrap: 'if-missing' },
    verification: { ...rest, acceptFrom: acceptAlice ? [alice.user.userId] : [] },
  });
  const seen: VerificationInfo[] = [];
  bot.on('verification', (v) => seen.push(v));
  const roomId = await alice.createEncryptedRoom([bot.userId], 'dm');
  await bot.transport.joinRoom(roomId);
  await alice.waitForMember(roomId, bot.userId);
  await bot.machine.updateTrackedUsers([alice.user.userId]);
  await bot.processOutgoingRequests();
  expect(await bot.machine.getUserIdentity(alice.user.userId)).not.toBeNull();
  await waitFor('js-sdk to know the bot identity', async () => ((await alice.crypto.userHasCrossSigningKeys(bot.userId, true)) ? true : undefined));
  const stop = keepSyncing(bot);
  later(stop);
  return { alice, bot, seen, roomId };
}






/**
 * Both sides see the other's identity verified. The bot's signature of the user's identity
 * counts once the user's keys come back with it (the homeserver lists the user as changed).
 */
async function bothVerified(alice: JsSdkUser, bot: EncryptedClient): Promise<void> {
  await waitFor('the bot to see the user verified', async () => ((await bot.machine.getUserIdentity(alice.user.userId))?.isVerified ? true : undefined));
  await waitFor('js-sdk to see the bot verified', async () =>
    (await alice.crypto.getUserVerificationStatus(bot.userId)).isCrossSigningVerified() ? true : undefined,
  );
}

describe('in-room verification with a js-sdk user', () => {
  it('the user starts in the DM; the bot accepts by policy, compares and confirms; both verified', async () => {
    const { alice, bot, seen, roomId } = await dm('r1', { acceptAlice: true });
    const request = await alice.crypto.requestVerificationDM(bot.userId, roomId);
    const flowId = request.transactionId!;
    await phase(request, VerificationPhase.Ready);
    expect(seen.find((v) => v.flowId === flowId)).toMatchObject({ roomId, otherUserId: alice.user.userId, weStarted: false });
    const verifier = await request.startVerification('m.sas.v1');
    const done = verifier.verify();
    const sas = await sasShown(request);
    const ours = await flow(seen, flowId, 'keys_exchanged');
    expect(ours.emoji?.map((e) => e.symbol)).toEqual(sas.sas.emoji?.map(([symbol]) => symbol));
    expect(ours.decimals).toEqual(sas.sas.decimal);
    await within('js-sdk to send its MAC', sas.confirm());
    await within('the bot to confirm', bot.confirmSas(alice.user.userId, flowId));
    await within('js-sdk to finish', done);
    await flow(seen, flowId, 'done');
    expect(seen.filter((v) => v.flowId === flowId).map((v) => v.phase)).toEqual(['requested', 'ready', 'started', 'accepted', 'keys_exchanged', 'confirmed', 'done']);
    await bothVerified(alice, bot);
    // The flow's events went to the room encrypted.
    const events = (await bot.transport.roomMessages(roomId, undefined, 'b', 50)).chunk;
    expect(events.filter((e) => e.sender === bot.userId && e.type.startsWith('m.key.verification.'))).toEqual([]);
    // ready, accept, key, mac and done
    expect(events.filter((e) => e.sender === bot.userId && e.type === 'm.room.encrypted').length).toBeGreaterThanOrEqual(5);
  });

  it('the bot starts in the DM with automatic confirmation; a cancellation carries its code', async () => {
    const { alice, bot, seen, roomId } = await dm('r2', { acceptAlice: true, autoConfirmSas: true });
    const incoming = onRequest(alice);
    const asked = await bot.requestVerificationInRoom(roomId, alice.user.userId);
    expect(asked).toMatchObject({ phase: 'created', weStarted: true, roomId, otherUserId: alice.user.userId });
    const request = await incoming;
    expect(request.transactionId).toBe(asked.flowId);
    expect(request.roomId).toBe(roomId);
    await acceptBotSas(request, bot, seen, alice.user.userId, asked.flowId);
    await bothVerified(alice, bot);

    // The user cancels the next request the bot makes.
    const next = onRequest(alice);
    const second = await bot.requestVerificationInRoom(roomId, alice.user.userId);
    const theirs = await next;
    await theirs.cancel();
    const end = await flow(seen, second.flowId, 'cancelled');
    expect(end.cancel).toEqual({ code: 'm.user', reason: expect.any(String), byUs: false });
    await expect(bot.startSas(alice.user.userId, second.flowId)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'flowId' });
  });

  it('the bot shows a QR code the user scans; the scan is confirmed by policy; both verified', async () => {
    const { alice, bot, seen, roomId } = await dm('q1', { acceptAlice: true, methods: ['sas', 'qr_show', 'qr_scan'], autoConfirmQrScan: true });
    const request = await alice.crypto.requestVerificationDM(bot.userId, roomId);
    const flowId = request.transactionId!;
    await phase(request, VerificationPhase.Ready);
    const ready = await flow(seen, flowId, 'ready');
    expect(ready.theirMethods).toEqual(expect.arrayContaining(['m.qr_code.scan.v1', 'm.reciprocate.v1']));
    const qr = await bot.showQrCode(alice.user.userId, flowId);
    expect(qr.verification.phase).toBe('qr_shown');
    const verifier = await within('js-sdk to scan', request.scanQRCode(new Uint8ClampedArray(qr.bytes)));
    await within('js-sdk to finish', verifier.verify());
    await flow(seen, flowId, 'qr_scanned');
    await flow(seen, flowId, 'done');
    await bothVerified(alice, bot);
  });

  it('the bot scans the QR code the user shows; the user confirms the scan; both verified', async () => {
    const { alice, bot, seen, roomId } = await dm('q2', { acceptAlice: true, methods: ['sas', 'qr_scan'] });
    const request = await alice.crypto.requestVerificationDM(bot.userId, roomId);
    const flowId = request.transactionId!;
    await phase(request, VerificationPhase.Ready);
    const bytes = await request.generateQRCode();
    expect(bytes).toBeDefined();
    // Bytes that are no Matrix verification code are refused without touching the flow.
    await expect(bot.scanQrCode(alice.user.userId, flowId, Uint8Array.from([1, 2, 3]))).rejects.toMatchObject({ code: 'InvalidArgument', field: 'qrCode' });
    const scanned = await bot.scanQrCode(alice.user.userId, flowId, Uint8Array.from(bytes!));
    expect(scanned.phase).toBe('reciprocated');
    await waitFor('js-sdk verifier', () => request.verifier ?? undefined);
    const verifier = request.verifier!;
    const shown = new Promise<ShowQrCodeCallbacks>((resolve) => {
      const now = verifier.getReciprocateQrCodeCallbacks();
      if (now) resolve(now);
      else verifier.once(VerifierEvent.ShowReciprocateQr, resolve);
    });
    const done = verifier.verify();
    (await within('js-sdk to ask for the scan confirmation', shown)).confirm();
    await within('js-sdk to finish', done);
    await flow(seen, flowId, 'done');
    await bothVerified(alice, bot);
  });
});
