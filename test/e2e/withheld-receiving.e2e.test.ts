// Withheld notices we receive, from independent senders on Synapse:
// scenario 2 (a js-sdk user shares only with devices it trusts: a strict one with cross-signed
// devices, a permissive one with verified devices when told to; our error says m.unverified) and
// scenario 6 (key requests between the bot user's devices: verified ones get the key, an
// unverified one gets m.unverified).
import { afterAll, describe, expect, it } from 'vitest';
import type { EncryptedClient, TimelineEvent } from '../../src/client';
import type { WithheldNotice } from '../../src/withheld';
import { keepSyncing, openBot, type BotOptions, syncUntil, syncUntilDecrypted, useHomeserver, useParticipants } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';
import type { TestUser } from './synapse';

const { hs, logs, setup } = useHomeserver();
const { jsUser, later } = useParticipants(hs, logs);

async function device(user: TestUser, options: BotOptions = {}): Promise<EncryptedClient> {
  const c = await openBot(hs(), user, options);
  later(() => c.close());
  return c;
}

/** Collects the withheld notices a client's machine receives. */
function collectNotices(c: EncryptedClient): WithheldNotice[] {
  const notices: WithheldNotice[] = [];
  const stop = c.machine.on('withheld', (n) => notices.push(n));
  later(async () => stop());
  return notices;
}

/** Syncs until the event is undecryptable with a withheld explanation, and returns the error. */
async function syncUntilWithheld(c: EncryptedClient, eventId: string) {
  let last: TimelineEvent | undefined;
  try {
    return await syncUntil(c, `withheld explanation for ${eventId}`, (items) => {
      const item = items.find((i) => i.event.event_id === eventId);
      last = item;
      return item?.kind === 'undecryptable' && item.error.withheld ? item.error : undefined;
    });
  } catch (err) {
    const state = last ? (last.kind === 'undecryptable' ? `${last.error.code}, withheld ${JSON.stringify(last.error.withheld)}` : last.kind) : 'never arrived';
    throw new Error(`${(err as Error).message} (last state: ${state})`);
  }
}

describe('scenario 2: the js-sdk user shares only with devices it trusts', () => {
  it("a strict client's notice: our unsigned device's error carries m.unverified, and once cross-signed the device gets the session", async () => {
    const alice = await jsUser('alice2');
    // Unsigned on purpose: a strict client withholds room keys from a device its owner did not
    // cross-sign, which is what this test is about.
    const botUser = await hs().registerUser('bot2');
    const bot = await device(botUser, { unsigned: true });
    const notices = collectNotices(bot);
    const roomId = await alice.createEncryptedRoom([bot.userId]);
    await bot.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, bot.userId);

    const m1 = await alice.sendText(roomId, 'only for cross-signed devices');
    const err = await syncUntilWithheld(bot, m1);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toMatchObject({ code: 'm.unverified', scope: 'session' });
    expect(err.withheldCode).toBe('m.unverified');
    const notice = notices.find((n) => n.kind === 'room' && n.sessionId === err.sessionId);
    expect(notice).toMatchObject({ kind: 'room', code: 'm.unverified', sender: alice.user.userId, roomId, encrypted: false });

    // The bot cross-signs its device: once alice's client sees the signature, the session
    // reaches us from its current index, and the earlier message stays explained by the notice.
    await bot.setUpCrossSigning({ bootstrap: 'if-missing', auth: { type: 'password', password: botUser.password } });
    await waitFor('js-sdk to see the bot device cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(bot.userId, bot.deviceId))?.signedByOwner ? true : undefined,
    );
    await expectSessionAfterTrust(bot, alice, roomId, m1, err.sessionId, 'now that you are cross-signed');
  });

  it("a permissive client that never sends to unverified devices: our error carries m.unverified, and once verified the device gets the session", async () => {
    // Permissive on purpose: "never send to unverified devices" (globalBlacklistUnverifiedDevices)
    // is a setting of js-sdk's default mode (AllDevicesIsolationMode); in strict mode js-sdk
    // ignores it and goes by cross-signing alone (the test above).
    const alice = await jsUser('alice2p', { permissive: true });
    const bot = await device(await hs().registerUser('bot2p'));
    const notices = collectNotices(bot);
    alice.crypto.globalBlacklistUnverifiedDevices = true;
    const roomId = await alice.createEncryptedRoom([bot.userId]);
    await bot.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, bot.userId);

    const m1 = await alice.sendText(roomId, 'only for verified devices');
    const err = await syncUntilWithheld(bot, m1);
    expect(err.code).toBe('MissingRoomKey');
    expect(err.withheld).toMatchObject({ code: 'm.unverified', scope: 'session' });
    expect(err.withheldCode).toBe('m.unverified');
    const notice = notices.find((n) => n.kind === 'room' && n.sessionId === err.sessionId);
    expect(notice).toMatchObject({ kind: 'room', code: 'm.unverified', sender: alice.user.userId, roomId, encrypted: false });

    // alice verifies the bot's device: the session reaches us from its current index, and the
    // earlier message stays explained by the notice.
    await alice.crypto.setDeviceVerified(bot.userId, bot.deviceId, true);
    await expectSessionAfterTrust(bot, alice, roomId, m1, err.sessionId, 'now that you are verified');
  });
});

/**
 * alice sends `body` after trusting the bot's device: the bot decrypts it in the session of the
 * withheld message `m1`, which stays undecryptable, explained by the notice from before its first index.
 */
async function expectSessionAfterTrust(bot: EncryptedClient, alice: JsSdkUser, roomId: string, m1: string, sessionId: string | null, body: string): Promise<void> {
  const m2 = await alice.sendText(roomId, body);
  const got = await syncUntilDecrypted(bot, m2);
  expect(got.decrypted.event.content.body).toBe(body);
  expect(got.event.content.session_id).toBe(sessionId);
  const again = await bot.decryptEvent(roomId, (await bot.transport.roomMessages(roomId, undefined, 'b', 50)).chunk.find((e) => e.event_id === m1)!);
  expect(again.kind).toBe('undecryptable');
  if (again.kind === 'undecryptable') {
    expect(again.error.withheld).toMatchObject({ code: 'm.unverified', scope: 'before_first_index' });
  }
}

describe('scenario 6: key requests between our own devices', () => {
  // alice sends a message the bot's first device can read; then two more devices of the bot user
  // log in. Each trusts the first device (so it asks it for keys); the first device verified only
  // the second. Both fail to decrypt the message and send a key request.
  const fileCleanup: Array<() => Promise<void>> = [];
  let alice: JsSdkUser;
  let botUser: TestUser;
  let d1: EncryptedClient;
  let d2: EncryptedClient;
  let d3: EncryptedClient;
  let d3Notices: WithheldNotice[];
  let roomId: string;
  let m1: string;
  let m1SenderKey: string | null;

  setup(async () => {
    alice = await JsSdkUser.start(hs().baseUrl, await hs().registerUser('alice6'));
    fileCleanup.push(() => alice.stop());
    logs({ name: 'js-sdk alice6', logTail: (n) => alice.logTail(n) });
    // Strict mode, as the harness's users: she shares the key with the bot's first device because
    // its owner cross-signed it (openBot's default).
    await alice.excludeInsecureDevices();
    botUser = await hs().registerUser('bot6');
    d1 = await openBot(hs(), botUser);
    fileCleanup.push(() => d1.close());
    roomId = await alice.createEncryptedRoom([botUser.userId]);
    await d1.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, botUser.userId);
    m1 = await alice.sendText(roomId, 'a key worth asking for');
    const atD1 = await syncUntilDecrypted(d1, m1);
    expect(atD1.decrypted.event.content.body).toBe('a key worth asking for');
    m1SenderKey = atD1.decrypted.senderCurve25519Key;
    expect(m1SenderKey).toBeTruthy();

    // The two new devices stay unsigned: the account's cross-signing keys are on the first device
    // only, and trust between the devices is the local trust set below (the scenario's point).
    [d2, d3] = await Promise.all([
      hs().login(botUser.userId, botUser.password).then((u) => openBot(hs(), u, { unsigned: true })),
      hs().login(botUser.userId, botUser.password).then((u) => openBot(hs(), u, { unsigned: true })),
    ]);
    fileCleanup.push(() => d2.close(), () => d3.close());
    const stop = d3.machine.on('withheld', (n) => d3Notices.push(n));
    d3Notices = [];
    fileCleanup.push(async () => stop());
    for (const d of [d2, d3]) {
      await d.machine.updateTrackedUsers([botUser.userId]);
      await d.processOutgoingRequests();
      await waitFor(`${d.deviceId} to know ${d1.deviceId}`, () => d.machine.getDevice(botUser.userId, d1.deviceId).then((x) => x ?? undefined));
      await d.machine.setLocalTrust(botUser.userId, d1.deviceId, 'verified');
    }
    await waitFor(`${d1.deviceId} to know the new devices`, async () => {
      await d1.syncOnce({ timeoutMs: 200 });
      const known = await Promise.all([d2, d3].map((d) => d1.machine.getDevice(botUser.userId, d.deviceId)));
      return known.every((k) => k !== null) ? true : undefined;
    });
    await d1.machine.setLocalTrust(botUser.userId, d2.deviceId, 'verified');
    // From here on the first device syncs in the background, answering the key requests.
    const stopD1 = keepSyncing(d1);
    fileCleanup.push(stopD1);
  }, 90_000);
  afterAll(async () => {
    for (const f of fileCleanup.splice(0).reverse()) await f();
  });

  it('the verified device gets the key', async () => {
    const got = await syncUntilDecrypted(d2, m1, 30_000);
    expect(got.decrypted.event.content.body).toBe('a key worth asking for');
    expect(got.decrypted.sender).toBe(alice.user.userId);
    // The forwarded key keeps the creator's identity: alice's device, not the forwarding one.
    expect(got.decrypted.senderCurve25519Key).toBe(m1SenderKey);
  });

  it('the unverified device gets m.unverified', async () => {
    const notice = await syncUntil(d3, 'the answer to its key request', () =>
      d3Notices.find((n) => n.kind === 'room' && n.sender === botUser.userId),
    );
    const m1Session = (await d3.transport.roomMessages(roomId, undefined, 'b', 50)).chunk.find((e) => e.event_id === m1)?.content.session_id;
    expect(notice).toMatchObject({
      kind: 'room',
      code: 'm.unverified',
      roomId,
      sessionId: m1Session,
      fromDevice: d1.deviceId,
      senderKey: (await d3.machine.getDevice(botUser.userId, d1.deviceId))?.curve25519Key,
      encrypted: false,
      // Our own device refusing our request, not the session's creator withholding the key.
      verdict: 'key_request_answer',
    });
    // So the refusal does not explain the failure: alice never withheld anything, the device
    // just did not exist when she shared the key.
    const again = await syncUntil(d3, 'm1', (items) => items.find((i) => i.event.event_id === m1));
    expect(again.kind).toBe('undecryptable');
    if (again.kind === 'undecryptable') expect(again.error).toMatchObject({ code: 'MissingRoomKey', withheld: null });
  });
});
