/**
 * The README's demo: three devices on an in-process homeserver exchange encrypted messages,
 * with every key stored in SQLite in a temporary folder. Run with `npm run demo`.
 *
 * Against a real homeserver (Synapse, with `registration_shared_secret` set):
 * `npm run demo -- --homeserver http://127.0.0.1:8008 --shared-secret SECRET`, or set
 * MATRIX_HOMESERVER and MATRIX_SHARED_SECRET. See examples/demo-homeserver.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DecryptionError, OlmMachine, terminalProgressBar } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { runHomeserverDemo, type HomeserverDemoOptions } from './demo-homeserver';

const ROOM = '!demo:example.org';
const step = (n: number, text: string) => console.log(`\n[${n}] ${text}`);

/** `--homeserver URL --shared-secret S` (or `--flag=value`, or the environment), or null for the in-process demo. */
function homeserverOptions(argv: string[]): HomeserverDemoOptions | null {
  const flag = (name: string): string | undefined => {
    const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
    if (i === -1) return undefined;
    return argv[i]!.includes('=') ? argv[i]!.slice(argv[i]!.indexOf('=') + 1) : argv[i + 1];
  };
  const homeserver = flag('homeserver') ?? process.env.MATRIX_HOMESERVER;
  const sharedSecret = flag('shared-secret') ?? process.env.MATRIX_SHARED_SECRET;
  if (homeserver === undefined && sharedSecret === undefined) return null;
  if (!homeserver || !sharedSecret) {
    throw new Error('the homeserver demo needs both --homeserver URL and --shared-secret SECRET (or MATRIX_HOMESERVER and MATRIX_SHARED_SECRET)');
  }
  return { homeserver, sharedSecret };
}

async function main() {
  const hsOptions = homeserverOptions(process.argv.slice(2));
  if (hsOptions) return runHomeserverDemo(hsOptions);
  const dir = mkdtempSync(join(tmpdir(), 'matrix-crypto-node-demo-'));
  const store = (name: string) => ({ kind: 'sqlite' as const, path: join(dir, name) });
  try {
    const hs = new TestHomeserver();

    step(1, `Opening three devices with SQLite stores under ${dir}`);
    const bot = await TestDevice.create(hs, '@bot:example.org', 'BOTDEVICE', store('bot'));
    const alice = await TestDevice.create(hs, '@alice:example.org', 'ALICEPHONE', store('alice-phone'));
    const laptop = await TestDevice.create(hs, '@alice:example.org', 'ALICELAPTOP', store('alice-laptop'));
    for (const d of [bot, alice, laptop]) {
      console.log(`    ${d.userId} ${d.deviceId}: curve25519 ${d.machine.identityKeys.curve25519}`);
      console.log(`      uploaded ${hs.oneTimeKeyCount(d.userId, d.deviceId)} one-time keys`);
    }

    const members = [bot.userId, alice.userId];
    step(2, 'The bot tracks the room members, queries their devices and claims one-time keys');
    await bot.machine.updateTrackedUsers(members);
    await bot.flush();
    const devices = await bot.machine.getUserDevices(alice.userId);
    console.log(`    the bot knows ${devices.length} devices of ${alice.userId}: ${devices.map((d) => d.deviceId).join(', ')}`);
    const claim = await bot.machine.getMissingSessions(members);
    if (claim) await bot.send(claim);

    step(3, 'The bot shares a Megolm room key and encrypts a message');
    const share = await bot.machine.shareRoomKey(ROOM, members);
    console.log(`    the key goes to ${share.sharedWith.map((d) => d.deviceId).join(', ')}; withheld from ${share.withheld.length} devices`);
    for (const r of share.requests) {
      const n = Object.values(JSON.parse(r.body).messages).reduce((a: number, m) => a + Object.keys(m as object).length, 0);
      console.log(`    to-device ${r.eventType} to ${n} devices`);
      await bot.send(r);
    }
    const event = await bot.encrypt(ROOM, { msgtype: 'm.text', body: 'Hello from the bot!' });
    console.log(`    m.room.encrypted, session ${String(event.content.session_id).slice(0, 16)}...`);

    step(4, 'Both of Alice\'s devices sync and decrypt');
    for (const d of [alice, laptop]) {
      const sync = await d.sync();
      const result = await d.machine.decryptRoomEvent(event, ROOM);
      console.log(`    ${d.deviceId}: ${sync.roomKeyUpdates.length} room key, "${result.event.content.body}" from ${result.sender}/${result.senderDevice} (${result.verificationState})`);
    }

    step(5, 'Alice replies; the bot decrypts');
    const reply = await alice.sendMessage(ROOM, members, { msgtype: 'm.text', body: 'Hi bot, loud and clear.' });
    await bot.sync();
    await laptop.sync();
    console.log(`    bot reads: "${(await bot.machine.decryptRoomEvent(reply, ROOM)).event.content.body}"`);

    step(6, 'The bot restarts on its SQLite store and still reads the conversation');
    await bot.machine.close();
    bot.machine = await OlmMachine.open({ userId: bot.userId, deviceId: bot.deviceId, store: store('bot') });
    console.log(`    same identity key: ${bot.machine.identityKeys.curve25519}`);
    console.log(`    bot re-reads: "${(await bot.machine.decryptRoomEvent(reply, ROOM)).event.content.body}"`);

    step(7, 'A device that never got the key gets a typed error, not a string');
    const late = await TestDevice.create(hs, '@carol:example.org', 'CAROL', { kind: 'memory' });
    try {
      await late.machine.decryptRoomEvent(event, ROOM);
    } catch (err) {
      if (!(err instanceof DecryptionError)) throw err;
      console.log(`    DecryptionError code=${err.code} session=${err.sessionId?.slice(0, 16)}...`);
    }

    step(8, 'Withheld notices (MSC2399): who is refused the key, why, and what they can tell');
    const dave = await TestDevice.create(hs, '@dave:example.org', 'DAVE', { kind: 'memory' });
    const erin = await TestDevice.create(hs, '@erin:example.org', 'ERIN', { kind: 'memory' });
    const mallory = await TestDevice.create(hs, '@mallory:example.org', 'MALLORY', { kind: 'memory' });
    const WITHHELD_ROOM = '!policy:example.org';
    const everyone = [bot.userId, alice.userId, late.userId, dave.userId, erin.userId];
    await bot.machine.updateTrackedUsers(everyone);
    await bot.flush();
    // The bot verifies Alice's devices and Erin's; Carol stays unverified.
    for (const d of [alice, laptop, erin]) await bot.machine.setLocalTrust(d.userId, d.deviceId, 'verified');
    // Each device knows the bot's device keys, so it can check who a notice claims to come from.
    for (const d of [late, dave, erin]) {
      await d.machine.updateTrackedUsers([bot.userId, mallory.userId]);
      await d.flush();
    }
    await bot.machine.setLocalTrust(dave.userId, dave.deviceId, 'blacklisted');
    bot.machine.setWithheldPolicy({
      reasons: { 'm.unverified': 'This bot shares keys with verified devices only.', 'm.blacklisted': 'Blocked by the bot operator.' },
    });
    hs.exhaustKeys(erin.userId, erin.deviceId);
    console.log(`    ${erin.userId} (verified) has no one-time keys left; ${dave.userId} is blacklisted; ${late.userId} is unverified`);
    const policyClaim = await bot.machine.getMissingSessions(everyone);
    if (policyClaim) await bot.send(policyClaim);
    const policyShare = await bot.machine.shareRoomKey(WITHHELD_ROOM, everyone, { sharingStrategy: 'only_trusted_devices' });
    for (const r of policyShare.requests) await bot.send(r);
    console.log(`    the key goes to ${policyShare.sharedWith.map((d) => d.deviceId).join(', ')}`);
    for (const w of policyShare.withheld) console.log(`    withheld from ${w.userId}/${w.deviceId}: ${w.code}${w.sent ? ', notice sent' : ''}`);
    const policyEvent = await bot.encrypt(WITHHELD_ROOM, { msgtype: 'm.text', body: 'for verified devices only' });
    for (const d of [late, dave]) {
      const { withheldNotices } = await d.sync();
      for (const n of withheldNotices) console.log(`    ${d.deviceId} received ${n.code} from ${n.sender}: "${n.reason}" (verdict ${n.verdict})`);
    }
    const refused = await late.machine.decryptRoomEvent(policyEvent, WITHHELD_ROOM).catch((e: unknown) => e);
    if (!(refused instanceof DecryptionError) || !refused.withheld) throw new Error('expected a withheld explanation');
    console.log(`    CAROL's DecryptionError: code=${refused.code}, withheld ${JSON.stringify(refused.withheld)}`);

    const again = await bot.machine.shareRoomKey('!second:example.org', everyone, { sharingStrategy: 'only_trusted_devices' });
    for (const r of again.requests) await bot.send(r);
    const noOlmAgain = again.withheld.filter((w) => w.code === 'm.no_olm').length;
    console.log(`    another room: ${noOlmAgain} new m.no_olm (one per device, across rooms); state ${JSON.stringify(await bot.machine.getNoOlmState(erin.userId, erin.deviceId))}`);
    const erinSync = await erin.sync(); // Erin reacts: a new Olm session with the bot and an m.dummy over it
    console.log(`    ERIN received ${erinSync.withheldNotices.map((n) => n.code).join(', ')} and answered with an m.dummy over a new Olm session`);
    await bot.sync();
    console.log(`    the bot's m.no_olm rule for ERIN re-armed: ${JSON.stringify(await bot.machine.getNoOlmState(erin.userId, erin.deviceId))}`);

    const txnId = `forged-${Date.now()}`;
    hs.handle(mallory.userId, mallory.deviceId, {
      type: 'to_device',
      id: txnId,
      txnId,
      eventType: 'm.room_key.withheld',
      body: JSON.stringify({
        messages: {
          [late.userId]: {
            [late.deviceId]: {
              algorithm: 'm.megolm.v1.aes-sha2', code: 'm.blacklisted', reason: 'forged by mallory',
              room_id: WITHHELD_ROOM, session_id: policyEvent.content.session_id, sender_key: bot.machine.identityKeys.curve25519,
            },
          },
        },
      }),
    });
    const forged = await late.sync();
    for (const n of forged.withheldNotices.filter((x) => x.sender === mallory.userId)) console.log(`    CAROL received ${n.code} from ${n.sender} claiming the bot's key: verdict ${n.verdict}`);
    const still = await late.machine.decryptRoomEvent(policyEvent, WITHHELD_ROOM).catch((e: unknown) => e);
    if (!(still instanceof DecryptionError)) throw still;
    console.log(`    not believed: the explanation is still ${still.withheld?.code}; spoofed notices counted: ${late.machine.withheldMetrics().spoofedNotices}`);
    for (const d of [dave, erin, mallory]) await d.machine.close();

    step(9, 'Room-key export and import of 2,000 rooms between two devices (progress bars on a terminal)');
    const archiver = await OlmMachine.open({ userId: bot.userId, deviceId: 'BOTARCHIVE', store: { kind: 'memory' } });
    for (let i = 0; i < 2000; i++) await archiver.shareRoomKey(`!archive${i}:example.org`, [bot.userId]);
    const archive = await archiver.exportRoomKeys({ onProgress: terminalProgressBar('    exporting room keys') });
    const restored = await OlmMachine.open({ userId: bot.userId, deviceId: 'BOTRESTORE', store: { kind: 'memory' } });
    const imported = await restored.importRoomKeys(archive, { onProgress: terminalProgressBar('    importing room keys') });
    console.log(`    ${imported.imported} of ${imported.total} keys imported`);
    for (const m of [archiver, restored]) await m.close();

    for (const d of [bot, alice, laptop, late]) await d.machine.close();
    console.log('\nDone.');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
