import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OlmMachine } from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';
const CAROL = '@carol:example.org';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'mcn-withheld-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const notices = (hs: TestHomeserver, user: string, device: string, code?: string) =>
  hs.sentTo(user, device, 'm.room_key.withheld').filter((m) => !code || m.content.code === code);

async function trio(aliceStore?: { kind: 'sqlite'; path: string }) {
  const hs = new TestHomeserver();
  const alice = await TestDevice.create(hs, ALICE, 'ALICE', aliceStore);
  const bob = await TestDevice.create(hs, BOB, 'BOB');
  const carol = await TestDevice.create(hs, CAROL, 'CAROL');
  await alice.machine.updateTrackedUsers([ALICE, BOB, CAROL]);
  await alice.flush();
  return { hs, alice, bob, carol };
}

describe('withheld sending policy', () => {
  it('sends m.blacklisted with the default reason and reports it in the summary', async () => {
    const { hs, alice } = await trio();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    const share = await alice.prepareRoom('!r:x.org', [ALICE, BOB, CAROL]);
    expect(share.sharedWith).toEqual([{ userId: CAROL, deviceId: 'CAROL' }]);
    expect(share.withheld).toEqual([{ userId: BOB, deviceId: 'BOB', code: 'm.blacklisted', sent: true }]);
    for (const r of share.requests) await alice.send(r);
    const [n] = notices(hs, BOB, 'BOB');
    expect(n.content).toMatchObject({
      code: 'm.blacklisted',
      room_id: '!r:x.org',
      sender_key: alice.machine.identityKeys.curve25519,
      algorithm: 'm.megolm.v1.aes-sha2',
    });
    expect(n.content.session_id).toBeTruthy();
    expect(n.content.reason).toMatch(/blocked/);
  });

  it("withholds m.unverified under 'identity_based' from every device of a user without a cross-signing identity", async () => {
    const { hs, alice } = await trio();
    // The strategy requires the sender's own identity; Bob and Carol have none.
    const boot = await alice.machine.bootstrapCrossSigning(false);
    await alice.machine.markRequestAsSent(boot.uploadSigningKeys, hs.handle(ALICE, 'ALICE', boot.uploadSigningKeys));
    await alice.send(boot.uploadSignatures);
    const share = await alice.prepareRoom('!r:x.org', [ALICE, BOB, CAROL], { sharingStrategy: 'identity_based' });
    expect(share.sharedWith).toEqual([]);
    expect(share.withheld).toEqual([
      { userId: BOB, deviceId: 'BOB', code: 'm.unverified', sent: true },
      { userId: CAROL, deviceId: 'CAROL', code: 'm.unverified', sent: true },
    ]);
    for (const r of share.requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB', 'm.unverified')).toHaveLength(1);
    expect(notices(hs, CAROL, 'CAROL', 'm.unverified')).toHaveLength(1);
  });

  it("sends nothing under 'none', and enabling it later does not replay old notices", async () => {
    const { hs, alice } = await trio();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    alice.machine.setWithheldPolicy({ send: 'none' });
    const first = await alice.prepareRoom('!r:x.org', [ALICE, BOB, CAROL]);
    expect(first.withheld).toEqual([{ userId: BOB, deviceId: 'BOB', code: 'm.blacklisted', sent: false }]);
    expect(first.requests.some((r) => r.eventType === 'm.room_key.withheld')).toBe(false);
    for (const r of first.requests) await alice.send(r);
    await alice.encrypt('!r:x.org');

    alice.machine.setWithheldPolicy({ send: 'all' });
    const again = await alice.prepareRoom('!r:x.org', [ALICE, BOB, CAROL]);
    expect(again.requests).toEqual([]);
    expect(notices(hs, BOB, 'BOB')).toHaveLength(0);

    // A new session is a new (session, device) pair: now the notice goes out, once.
    await alice.machine.discardRoomKey('!r:x.org');
    const rotated = await alice.sendMessage('!r:x.org', [ALICE, BOB, CAROL]);
    expect(notices(hs, BOB, 'BOB', 'm.blacklisted').map((n) => n.content.session_id)).toEqual([rotated.content.session_id]);
  });

  it('sends only the listed codes, with the configured reason, and allows per-call overrides', async () => {
    const { hs, alice } = await trio();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    alice.machine.setWithheldPolicy({ send: ['m.unverified'], reasons: { 'm.unverified': 'Verify with the admin first.' } });
    expect(alice.machine.getWithheldPolicy().send).toEqual(['m.unverified']);
    const share = await alice.prepareRoom('!r:x.org', [ALICE, BOB, CAROL], { sharingStrategy: 'only_trusted_devices' });
    expect(share.withheld).toEqual(
      expect.arrayContaining([
        { userId: BOB, deviceId: 'BOB', code: 'm.blacklisted', sent: false },
        { userId: CAROL, deviceId: 'CAROL', code: 'm.unverified', sent: true },
      ]),
    );
    for (const r of share.requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB')).toHaveLength(0);
    expect(notices(hs, CAROL, 'CAROL', 'm.unverified')[0].content.reason).toBe('Verify with the admin first.');

    const override = await alice.prepareRoom('!other:x.org', [ALICE, BOB, CAROL], {
      sharingStrategy: 'only_trusted_devices',
      withheld: { send: 'none' },
    });
    expect(override.withheld.every((w) => !w.sent)).toBe(true);
    expect(override.requests.some((r) => r.eventType === 'm.room_key.withheld')).toBe(false);
  });

  it('rejects a malformed policy naming the field', async () => {
    const { alice } = await trio();
    expect(() => alice.machine.setWithheldPolicy({ send: ['m.made_up'] })).toThrow(/policy.send/);
    await expect(
      alice.machine.shareRoomKey('!r:x.org', [BOB], { withheld: { send: 'some' as never } }),
    ).rejects.toMatchObject({ code: 'InvalidArgument', field: 'settings.withheld.send' });
    await expect(
      OlmMachine.open({ userId: '@z:x.org', deviceId: 'Z', store: { kind: 'memory' }, withheld: { reasons: { nodots: 'x' } } }),
    ).rejects.toMatchObject({ field: 'withheld.reasons["nodots"]' });
  });
});

describe('m.no_olm', () => {
  it('sends one notice per device across rooms and restarts, without room or session', async () => {
    const store = { kind: 'sqlite' as const, path: join(dir, 'alice') };
    const { hs, alice } = await trio(store);
    hs.exhaustKeys(BOB, 'BOB');

    const first = await alice.prepareRoom('!one:x.org', [ALICE, BOB]);
    expect(first.withheld).toEqual([{ userId: BOB, deviceId: 'BOB', code: 'm.no_olm', sent: true }]);
    for (const r of first.requests) await alice.send(r);
    const sent = notices(hs, BOB, 'BOB', 'm.no_olm');
    expect(sent).toHaveLength(1);
    expect(sent[0].content).not.toHaveProperty('room_id');
    expect(sent[0].content).not.toHaveProperty('session_id');
    expect(sent[0].content.sender_key).toBe(alice.machine.identityKeys.curve25519);
    expect(await alice.machine.getNoOlmState(BOB, 'BOB')).toMatchObject({ suppressed: false, rearmed: false });

    const second = await alice.prepareRoom('!two:x.org', [ALICE, BOB]);
    expect(second.withheld).toEqual([]);
    for (const r of second.requests) await alice.send(r);

    await alice.machine.close();
    alice.machine = await OlmMachine.open({ userId: ALICE, deviceId: 'ALICE', store });
    const third = await alice.prepareRoom('!three:x.org', [ALICE, BOB]);
    for (const r of third.requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB', 'm.no_olm')).toHaveLength(1);
    await alice.machine.close();
  });

  /** Bob's device is removed and comes back with new identity keys and no one-time keys. */
  async function rebirth(hs: TestHomeserver, alice: TestDevice, bob: TestDevice) {
    hs.deviceKeys.get(BOB)!.delete('BOB');
    for (const s of hs.changed.values()) s.add(BOB);
    await alice.sync();
    const reborn = await TestDevice.create(hs, BOB, 'BOB');
    expect(reborn.machine.identityKeys.curve25519).not.toBe(bob.machine.identityKeys.curve25519);
    hs.exhaustKeys(BOB, 'BOB');
    await alice.sync();
    return reborn;
  }

  it('re-arms when the device reaches us over a new Olm session (inbound): one new notice on the next failure', async () => {
    const { hs, alice, bob } = await trio();
    hs.exhaustKeys(BOB, 'BOB');
    for (const r of (await alice.prepareRoom('!one:x.org', [ALICE, BOB])).requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB', 'm.no_olm')).toHaveLength(1);

    // Bob creates an Olm session to Alice (pre-key message) by sending her a room key.
    await bob.sendMessage('!one:x.org', [ALICE, BOB]);
    expect(await alice.machine.getNoOlmState(BOB, 'BOB')).toMatchObject({ rearmed: false });
    await alice.sync();
    expect(await alice.machine.getNoOlmState(BOB, 'BOB')).toMatchObject({ rearmed: true });

    await rebirth(hs, alice, bob);
    for (const room of ['!two:x.org', '!three:x.org']) {
      for (const r of (await alice.prepareRoom(room, [ALICE, BOB])).requests) await alice.send(r);
    }
    expect(notices(hs, BOB, 'BOB', 'm.no_olm')).toHaveLength(2);
    expect((await alice.machine.getNoOlmState(BOB, 'BOB'))?.rearmed).toBe(false);
  });

  it('re-arms when our claim of a new one-time key creates the session (outbound)', async () => {
    const { hs, alice, bob } = await trio();
    hs.exhaustKeys(BOB, 'BOB');
    for (const r of (await alice.prepareRoom('!one:x.org', [ALICE, BOB])).requests) await alice.send(r);
    await bob.sync();
    expect(hs.oneTimeKeyCount(BOB, 'BOB')).toBeGreaterThan(0);

    // The crate backs off claiming for a device whose claim failed (15 s): wait until it claims.
    let claim = null;
    for (let i = 0; i < 60 && !claim; i++) {
      claim = await alice.machine.getMissingSessions([BOB]);
      if (!claim) await new Promise((r) => setTimeout(r, 500));
    }
    expect(claim).not.toBeNull();
    await alice.send(claim!);
    expect((await alice.machine.getNoOlmState(BOB, 'BOB'))?.rearmed).toBe(true);

    await rebirth(hs, alice, bob);
    for (const r of (await alice.prepareRoom('!two:x.org', [ALICE, BOB])).requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB', 'm.no_olm')).toHaveLength(2);
  });

  it('a suppressed m.no_olm is recorded, and enabling the code later does not send it', async () => {
    const { hs, alice } = await trio();
    hs.exhaustKeys(BOB, 'BOB');
    alice.machine.setWithheldPolicy({ send: ['m.blacklisted'] });
    const share = await alice.prepareRoom('!one:x.org', [ALICE, BOB]);
    expect(share.withheld).toEqual([{ userId: BOB, deviceId: 'BOB', code: 'm.no_olm', sent: false }]);
    for (const r of share.requests) await alice.send(r);
    alice.machine.setWithheldPolicy({ send: 'all' });
    for (const r of (await alice.prepareRoom('!two:x.org', [ALICE, BOB])).requests) await alice.send(r);
    expect(notices(hs, BOB, 'BOB')).toHaveLength(0);
    expect(await alice.machine.getNoOlmState(BOB, 'BOB')).toMatchObject({ suppressed: true });
  });
});
